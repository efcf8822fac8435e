"""Variances are never negative: an optimizer's second moments and a BatchNorm's running variance (roles.is_variance).

A flipped sign bit in Adam's ``exp_avg_sq`` is a finite, modest value, and the scan was CLEAN, while the next step
from it takes the square root of a negative number and puts NaN in the weights (a trial); a negative
``running_var`` makes a BatchNorm's output NaN in eval. Their negative values are counted (exact, at known places)
and are the tensor's exploded values (its size is no finding: a second moment of large gradients is large). The
oracles: torch's own optimizers and BatchNorm, run on the values.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import nandoctor  # noqa: E402
from nandoctor import verdict  # noqa: E402
from nandoctor.checkpoint.roles import is_variance  # noqa: E402


def _adam_state(steps: int = 5, width: int = 4) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(width, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, width)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer.state_dict()


def _one_step_from(state: dict, width: int = 4) -> torch.Tensor:
    """The oracle: the weights after one Adam step resumed from ``state``."""
    torch.manual_seed(1)
    model = torch.nn.Linear(width, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(state)
    model(torch.randn(16, width)).pow(2).sum().backward()
    optimizer.step()
    return model.weight.detach()


def test_a_sign_flipped_second_moment_fails_and_one_step_from_it_is_nan(tmp_path: Path) -> None:
    _, state = _adam_state()
    flipped = state["state"][0]["exp_avg_sq"]
    flipped.view(torch.int32)[1, 2] ^= -(2**31)  # the sign bit of one fp32 element
    assert flipped[1, 2] < 0
    assert torch.isnan(_one_step_from(state)).any()  # the oracle
    torch.save(state, tmp_path / "optimizer.pt")
    report = nandoctor.scan(tmp_path / "optimizer.pt")
    assert report.exit_code == 1 and report.verdict == "EXPLODED" and report.health == "poisoned"
    (bad,) = verdict.with_finding(report, verdict.EXPLODED)
    assert bad.name == "optimizer.state.0.exp_avg_sq" and bad.exploded == 1
    assert "1 negative value in optimizer.state.0.exp_avg_sq, an optimizer's second moment, never negative: the next step " \
           "from it puts NaN in the weights" in verdict.one_line(report)
    assert "healthy" not in verdict.one_line(report)  # (a review: "7 tensors healthy", the bad one counted)


def test_minus_zero_and_a_large_second_moment_are_healthy(tmp_path: Path) -> None:
    """-0.0 is no negative value (a zero gradient's moment may be stored so), and a second moment of 1e12 (large
    gradients) is no exploded one: both step on finitely."""
    _, state = _adam_state()
    moment = state["state"][0]["exp_avg_sq"]
    moment[0, 0] = -0.0
    moment[0, 1] = 1e12
    assert torch.isfinite(_one_step_from(state)).all()
    torch.save(state, tmp_path / "optimizer.pt")
    report = nandoctor.scan(tmp_path / "optimizer.pt")
    assert report.exit_code == 0, verdict.one_line(report)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_negatives_in_a_large_moment_are_counted_exactly_where_chunks_cut_it(tmp_path: Path, dtype) -> None:
    """A moment of several chunks (the job path) in each float dtype and its planted negatives, NaN beside them
    counted apart."""
    torch.manual_seed(0)
    moment = (torch.rand(5 << 20) * 1e-4).to(dtype)
    for at in (7, 1 << 20, (5 << 20) - 1):
        moment[at] = -1e-3
    moment[123] = float("nan")
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(8), "exp_avg_sq": moment}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]}, path)
    report = nandoctor.scan(path)
    row = next(t for t in report.tensors if t.name.endswith("state.0.exp_avg_sq"))
    assert row.ref.role == "optimizer" and (row.exploded, row.nan) == (3, 1)


def test_a_negative_running_variance_fails_and_the_batchnorm_gives_nan(tmp_path: Path) -> None:
    """A small tensor (the safetensors column path, read as a job instead) and a torch file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    model.train()
    model(torch.randn(4, 3, 8, 8))
    model.eval()
    with torch.no_grad():
        model[1].running_var[5] = -model[1].running_var[5]
        assert torch.isnan(model(torch.randn(1, 3, 8, 8))).any()  # the oracle
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "model.pt")
    for path in (tmp_path / "model.safetensors", tmp_path / "model.pt"):
        report = nandoctor.scan(path)
        assert report.exit_code == 1, verdict.one_line(report)
        (bad,) = verdict.with_finding(report, verdict.EXPLODED)
        assert (bad.name, bad.exploded) == ("1.running_var", 1)
        assert "a running variance, never negative: the BatchNorm's output is NaN" in verdict.one_line(report)


def test_healthy_optimizers_of_every_kind_pass(tmp_path: Path) -> None:
    """Adam (amsgrad's max_exp_avg_sq), Adagrad's sum, RMSprop and Adadelta's square_avg/acc_delta, Adamax's exp_inf,
    after real steps: no negative value, nothing exploded."""
    torch.manual_seed(0)
    for make in (lambda p: torch.optim.Adam(p, amsgrad=True), torch.optim.Adagrad, lambda p: torch.optim.RMSprop(
            p, centered=True), torch.optim.Adadelta, torch.optim.Adamax):
        model = torch.nn.Linear(8, 4)
        optimizer = make(model.parameters())
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 8) * 100).pow(2).sum().backward()
            optimizer.step()
        torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
        report = nandoctor.scan(tmp_path / "optimizer.pt")
        assert report.exit_code == 0, (type(optimizer).__name__, verdict.one_line(report))
        assert any(is_variance(t.name, t.ref.role) for t in report.tensors), type(optimizer).__name__


def test_live_scans_and_repair_judge_variances_too(tmp_path: Path) -> None:
    """The live scan (a training callback's check of a loaded optimizer) counts them; a repair restores the moment
    from an earlier optimizer file, and takes no donor holding a negative one."""
    _, good = _adam_state(steps=4)
    _, state = _adam_state(steps=5)
    state["state"][0]["exp_avg_sq"][0, 1] = -1.0
    live = nandoctor.scan_state_dict({"optimizer": state})
    assert live.exit_code == 1 and [t.name for t in verdict.with_finding(live, verdict.EXPLODED)] == [
        "optimizer.state.0.exp_avg_sq"]
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    torch.save(good, tmp_path / "old" / "optimizer.pt")
    torch.save(state, tmp_path / "new" / "optimizer.pt")
    result = nandoctor.repair(tmp_path / "new" / "optimizer.pt", tmp_path / "old" / "optimizer.pt", tmp_path / "fixed")
    assert result.ok
    repaired = torch.load(tmp_path / "fixed" / "optimizer.pt", weights_only=True)  # (--out is a folder)
    assert torch.equal(repaired["state"][0]["exp_avg_sq"], good["state"][0]["exp_avg_sq"])
    assert torch.isfinite(_one_step_from(repaired)).all()
    (tmp_path / "copy").mkdir()
    torch.save(state, tmp_path / "copy" / "optimizer.pt")  # a donor holding the same negative value
    with pytest.raises(nandoctor.NandoctorError, match="have no good donor: 'optimizer.state.0.exp_avg_sq'"):
        nandoctor.repair(tmp_path / "new" / "optimizer.pt", tmp_path / "copy" / "optimizer.pt", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    planned = nandoctor.repair(tmp_path / "new" / "optimizer.pt", tmp_path / "copy" / "optimizer.pt", None, dry_run=True)
    assert [u.reasons for u in planned.plan.unrestorable] == [
        (f"{tmp_path / 'copy' / 'optimizer.pt'}: holds 1 negative values (a variance, never negative) itself",)]


def test_the_trainer_callback_refuses_a_loaded_optimizer_with_a_negative_moment() -> None:
    """What the callback checks at on_train_begin of a resumed run: the optimizer Trainer loaded."""
    pytest.importorskip("transformers")
    from nandoctor.integrations.transformers import NanDoctorCallback

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert NanDoctorCallback()._loaded_state_faults(model, optimizer, None) == ([], [])
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = -2.0
    broken, weights = NanDoctorCallback()._loaded_state_faults(model, optimizer, None)
    assert weights == [] and broken and broken[0].endswith("exp_avg_sq")


def test_small_second_moments_side_by_side_are_counted_in_their_batch(tmp_path: Path) -> None:
    """A safetensors file of many small moments is read in batches (engine/small.py): one signed minimum per tensor
    finds the one holding a negative value, which alone is read whole (a review: making each variance a job of its
    own took 5x the time and 3.5x the memory on 100,000 of them)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {f"optimizer.state.{i}.exp_avg_sq": torch.rand(16) * 1e-4 for i in range(200)}
    tensors["optimizer.state.77.exp_avg_sq"][5] = -2e-5
    tensors["optimizer.state.78.exp_avg_sq"][0] = -0.0  # (no negative value)
    save_file(tensors, tmp_path / "optimizer.safetensors")
    report = nandoctor.scan(tmp_path / "optimizer.safetensors")
    assert [(t.name, t.exploded) for t in verdict.with_finding(report, verdict.EXPLODED)] == [
        ("optimizer.state.77.exp_avg_sq", 1)]
    assert {t.ref.role for t in report.tensors} == {"optimizer"}
