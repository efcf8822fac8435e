"""NaN/Inf Python floats of an optimizer's param_groups (its learning rate, betas, eps): not tensors, but a resume
restores them, and one NaN learning rate makes every weight NaN at the next step.

A GGUF/DCP trial: a NaN ``lr`` in ``optimizer.pt`` (and in a DCP checkpoint's ``optim.param_groups.0.lr``) passed
CLEAN, while ``torch.load``/``dcp.load`` gave it back and one AdamW step from it made all 64 weights NaN. The
oracles here are the loaders and that step; a scheduler's legitimate ``best = inf`` stays clean.
"""

from __future__ import annotations

import math
import shutil

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from tests.conftest import DEMO_RUN, run_cli  # noqa: E402


def _optimizer_state(lr: float = 1e-3, beta2: float = 0.999) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    state["param_groups"][0]["lr"] = lr
    state["param_groups"][0]["betas"] = (0.9, beta2)
    return state


def _resumed_weights_finite(state: dict) -> bool:
    """The oracle: load the state into a fresh AdamW over a model and take one step."""
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(state)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_nan_learning_rate_in_optimizer_pt_fails_and_says_resume_not_repair(tmp_path, legacy):
    run = tmp_path / "run"
    for step, lr, beta2 in ((100, 1e-3, 0.999), (200, math.nan, math.inf)):
        folder = run / f"checkpoint-{step}"
        shutil.copytree(DEMO_RUN / "checkpoint-100", folder)
        torch.save(_optimizer_state(lr, beta2), folder / "optimizer.pt", _use_new_zipfile_serialization=not legacy)
    loaded = torch.load(run / "checkpoint-200" / "optimizer.pt", weights_only=True)
    assert math.isnan(loaded["param_groups"][0]["lr"]) and not _resumed_weights_finite(loaded)
    assert _resumed_weights_finite(torch.load(run / "checkpoint-100" / "optimizer.pt", weights_only=True))

    healthy = nandoctor.scan(str(run / "checkpoint-100"), device="cpu")
    assert healthy.exit_code == 0 and not [n for n in healthy.tensors.refs.names if "param_groups" in n]
    report = nandoctor.scan(str(run / "checkpoint-200"), device="cpu")
    assert report.exit_code == 1 and report.health == "poisoned"
    bad = {t.name: (t.nan, t.posinf, t.neginf, t.ref.role) for t in report.tensors if t.findings}
    assert bad == {"optimizer.param_groups.0.lr": (1, 0, 0, "optimizer"),
                   "optimizer.param_groups.0.betas.1": (0, 1, 0, "optimizer")}

    from nandoctor.report.summary import tensor_rows

    assert {r.name: r.first_at_words for r in tensor_rows(report)[0]} == {  # (was "[]")
        "optimizer.param_groups.0.lr": "scalar", "optimizer.param_groups.0.betas.1": "scalar"}
    done = run_cli("scan", str(run / "checkpoint-200"))
    text = " ".join(done.output.split())
    assert done.exit_code == 1 and "only learning-rate or loss-scale settings" in text
    assert "resume from an earlier checkpoint instead" in text and "nandoctor repair" not in text
    whole = " ".join(run_cli("scan", str(run)).output.split())
    assert f"next: resume from {run / 'checkpoint-100'}: only the learning-rate or loss-scale settings" in whole

    out = tmp_path / "fixed"
    refused = run_cli("repair", str(run / "checkpoint-200"), "--from", "auto", "--out", str(out))
    assert refused.exit_code == 3 and not out.exists()
    assert "only learning-rate or loss-scale settings" in " ".join(refused.output.split())


def test_non_finite_floats_outside_param_groups_stay_clean(tmp_path):
    """A ReduceLROnPlateau's best (inf before its first metric) is what the scheduler saves by design."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert math.isinf(scheduler.state_dict()["best"])
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(), "model": model.state_dict()},
               tmp_path / "state.pt")
    assert len(nandoctor.scan(str(tmp_path / "scheduler.pt"), device="cpu").tensors) == 0  # (its infs are no tensors)
    report = nandoctor.scan(str(tmp_path / "state.pt"), device="cpu")
    assert report.exit_code == 0 and sorted(report.tensors.refs.names) == ["model.bias", "model.weight"]


def test_a_nan_learning_rate_in_a_dcp_checkpoint_is_found_under_its_item(tmp_path):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    weights, state = get_state_dict(model, optimizer)
    state["param_groups"][0]["lr"] = math.nan
    dcp.save({"model": weights, "optim": state}, checkpoint_id=str(tmp_path / "step-2"))
    keys = [k for k in dcp.FileSystemReader(str(tmp_path / "step-2")).read_metadata().state_dict_metadata
            if k.startswith("optim.param_groups.") and k.endswith(".lr")]
    assert len(keys) == 1
    loaded = {"model": model.state_dict(), "optim": get_state_dict(model, optimizer)[1]}
    dcp.load(loaded, checkpoint_id=str(tmp_path / "step-2"))
    assert math.isnan(loaded["optim"]["param_groups"][0]["lr"])
    report = nandoctor.scan(str(tmp_path / "step-2"), device="cpu")
    assert report.exit_code == 1
    assert {t.name: (t.nan, t.ref.role) for t in report.tensors if t.findings} == {keys[0]: (1, "optimizer")}


def test_settings_infinite_by_design_stay_clean_and_a_schedulers_rates_are_judged(tmp_path):
    """A review: Prodigy and D-Adaptation keep growth_rate = inf in every param group by default: such a healthy
    checkpoint was called NON-FINITE. Only the rates a step multiplies by are judged; a scheduler's base_lrs is
    one of them (a NaN there is the optimizer's lr at its next step: the trial's oracle, two steps after resuming)."""
    state = _optimizer_state()
    state["param_groups"][0]["growth_rate"] = math.inf  # (Prodigy's default)
    folder = tmp_path / "checkpoint-10"
    shutil.copytree(DEMO_RUN / "checkpoint-100", folder)
    torch.save(state, folder / "optimizer.pt")
    assert nandoctor.scan(str(folder), device="cpu").exit_code == 0

    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # (transformers' schedules are LambdaLR)
    saved = scheduler.state_dict()
    saved["base_lrs"] = [math.nan]
    torch.save(saved, folder / "scheduler.pt")
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))  # the oracle: a resume
    optimizer.step()
    scheduler.step()
    assert math.isnan(optimizer.param_groups[0]["lr"])
    report = nandoctor.scan(str(folder), device="cpu")
    assert report.exit_code == 1
    assert {t.name: (t.nan, t.ref.role) for t in report.tensors if t.findings} == {"scheduler.base_lrs.0": (1, "optimizer")}


def test_a_nan_weight_beside_a_nan_learning_rate_is_not_called_settings_only(tmp_path):
    """A review: with a NaN weight and a NaN lr, the repair said "only the optimizer's settings are bad"."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    for step, lr in ((100, 1e-3), (200, math.nan)):
        folder = run / f"checkpoint-{step}"
        shutil.copytree(DEMO_RUN / "checkpoint-100", folder)
        torch.save(_optimizer_state(lr), folder / "optimizer.pt")
    shard = next((run / "checkpoint-200").glob("model-*.safetensors"))
    tensors = load_file(str(shard))
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.ndim == 2)
    tensors[name][0, 0] = math.nan
    save_file(tensors, str(shard), metadata={"format": "pt"})
    refused = run_cli("repair", str(run / "checkpoint-200"), "--from", "auto", "--out", str(tmp_path / "fixed"))
    text = " ".join(refused.output.split())
    assert refused.exit_code == 3 and not (tmp_path / "fixed").exists()
    assert "only learning-rate or loss-scale settings" not in text and "optimizer.param_groups.0.lr" in text, text
    assert "1 of them learning-rate or loss-scale settings" in text


def test_assert_finite_gives_the_resume_advice_not_a_repair(tmp_path):
    """A review: the CLI said to resume, while assert_finite's hint was a repair command that refuses."""
    folder = tmp_path / "checkpoint-10"
    shutil.copytree(DEMO_RUN / "checkpoint-100", folder)
    torch.save(_optimizer_state(math.nan), folder / "optimizer.pt")
    with pytest.raises(nandoctor.NonFiniteWeightsError) as caught:
        nandoctor.assert_finite(str(folder), device="cpu")
    assert "learning-rate or loss-scale settings" in caught.value.message and "optimizer.param_groups.0.lr" in caught.value.message
    assert caught.value.hint.startswith("resume training from an earlier checkpoint") and "nandoctor repair" not in caught.value.hint


_SETTINGS = {  # a setting a trial set NaN in each real optimizer/scheduler state: the scan passed, the resume went NaN
    "Rprop etas": (lambda p: torch.optim.Rprop(p, lr=0.01), None, ("optimizer", "etas", 0)),
    "NAdam momentum_decay": (lambda p: torch.optim.NAdam(p, lr=0.01), None, ("optimizer", "momentum_decay", None)),
    "ASGD lambd": (lambda p: torch.optim.ASGD(p, lr=0.01), None, ("optimizer", "lambd", None)),
    "StepLR gamma": (lambda p: torch.optim.SGD(p, lr=0.1),
                     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), ("scheduler", "gamma", None)),
    "CosineAnnealingLR eta_min": (lambda p: torch.optim.SGD(p, lr=0.1),
                                  lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
                                  ("scheduler", "eta_min", None)),
    "LinearLR end_factor": (lambda p: torch.optim.SGD(p, lr=0.1),
                            lambda o: torch.optim.lr_scheduler.LinearLR(o, total_iters=4), ("scheduler", "end_factor", None)),
}


def _two_steps(model, optimizer, scheduler) -> None:
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("name", sorted(_SETTINGS))
def test_a_nan_in_any_setting_of_param_groups_or_a_scheduler_fails(tmp_path, name):
    """The rule: a NaN anywhere in an optimizer's param_groups or a scheduler's state (every setting feeds the update
    or the next rate); ±Inf only at the rates (Prodigy's growth_rate, ReduceLROnPlateau's best are infinite by
    design). Oracle: the saved states loaded with torch.load(weights_only=True) into fresh objects, two steps."""
    make_optimizer, make_scheduler, (where, key, item) = _SETTINGS[name]
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = make_optimizer(model.parameters())
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    _two_steps(model, optimizer, scheduler)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler else None}
    holder = saved["optimizer"]["param_groups"][0] if where == "optimizer" else saved["scheduler"]
    if item is None:
        holder[key] = math.nan
    else:
        holder[key] = tuple(math.nan if i == item else v for i, v in enumerate(holder[key]))
    torch.save(saved, tmp_path / "state.pt")

    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    model2 = torch.nn.Linear(8, 8)
    model2.load_state_dict(loaded["model"])
    optimizer2 = make_optimizer(model2.parameters())
    optimizer2.load_state_dict(loaded["optimizer"])
    scheduler2 = make_scheduler(optimizer2) if make_scheduler else None
    if scheduler2 is not None:
        scheduler2.load_state_dict(loaded["scheduler"])
    _two_steps(model2, optimizer2, scheduler2)
    assert not all(bool(torch.isfinite(p).all()) for p in model2.parameters())  # the oracle: the resume breaks

    expected = (f"optimizer.param_groups.0.{key}" if where == "optimizer" else f"scheduler.{key}") + (
        f".{item}" if item is not None else "")
    fresh = torch.load(tmp_path / "state.pt", weights_only=True)  # (the oracle's steps wrote into loaded's moments)
    for report in (nandoctor.scan(str(tmp_path / "state.pt"), device="cpu"), nandoctor.scan_state_dict(fresh)):
        assert report.exit_code == 1
        assert {t.name: (t.nan, t.ref.role) for t in report.tensors if t.findings} == {expected: (1, "optimizer")}


def test_a_scheduler_file_scanned_alone_says_what_it_is(tmp_path):
    """A trial: scheduler.pt alone was "a model loaded from it gets none of its weights"."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    torch.save(torch.optim.lr_scheduler.StepLR(optimizer, 1).state_dict(), tmp_path / "scheduler.pt")
    report = nandoctor.scan(str(tmp_path / "scheduler.pt"), device="cpu")
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["empty"]
    assert "scheduler.pt is training state" in report.errors[0].message
    assert "scan the checkpoint folder it belongs to" in report.errors[0].hint


def _scaler_state(scale: float) -> dict:
    """A real GradScaler's state after a step, its loss scale set to ``scale`` (as a long fp16 NaN streak leaves it)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(model(torch.randn(2, 8)).sum()).backward()
    scaler.step(optimizer)
    scaler.update(new_scale=scale)
    return scaler.state_dict()


def _resumed_scaler_learns(state: dict) -> bool:
    """The oracle: a fresh scaler loaded from ``state`` takes five steps; do the weights change, and stay finite?"""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(state)
    for _ in range(5):
        optimizer.zero_grad()
        scaler.scale(model(torch.randn(2, 8)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    after = list(model.parameters())
    return all(bool(torch.isfinite(p).all()) for p in after) and any(not torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("scale", [math.nan, math.inf, 0.0, 2.0**-130, 65536.0])
def test_a_gradient_scalers_broken_loss_scale_fails_the_checkpoint(tmp_path, scale):
    """An adversarial round: a Trainer checkpoint whose scaler.pt holds a loss scale of NaN, Inf or 0 scanned CLEAN
    ("holds no tensors; nothing to scan"), and Lightning's MixedPrecision state the same; a run resumed from it skips
    every step. NaN/Inf are the scaler's non-finite settings (as a NaN learning rate is); 0 is BAD CONFIG."""
    folder = tmp_path / "checkpoint-200"
    shutil.copytree(DEMO_RUN / "checkpoint-100", folder)
    torch.save(_scaler_state(scale), folder / "scaler.pt")
    loaded = torch.load(folder / "scaler.pt", weights_only=True)
    assert _resumed_scaler_learns(loaded) == (scale == 65536.0)
    report = nandoctor.scan(str(folder), device="cpu")
    lightning = tmp_path / "epoch=0-step=200.ckpt"
    torch.save({"state_dict": torch.nn.Linear(8, 8).state_dict(), "global_step": 200, "MixedPrecision": loaded,
                "optimizer_states": [], "lr_schedulers": []}, lightning)
    in_lightning = nandoctor.scan(str(lightning), device="cpu")
    for found in (report, in_lightning):
        if scale == 65536.0:
            assert found.exit_code == 0, found.errors
        elif scale < 1:  # (0, or too small for float32: an adversarial round's 2^-130 passed)
            assert found.exit_code == 3 and "loss scale is 0, below 0 or too small for float32" in found.errors[0].message
        else:
            bad = [t.name for t in found.tensors if t.findings]
            assert found.exit_code == 1 and len(bad) == 1 and bad[0].endswith("scale"), bad
            assert "loss-scale settings" in " ".join(run_cli("scan", str(folder)).output.split()) or found is in_lightning
