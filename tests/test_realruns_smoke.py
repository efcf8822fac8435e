"""Smoke tests for tests/realruns.py: the real runs leave the artifacts they promise.

They train for real (transformers.Trainer, lightning.Trainer) on CPU, so they are
marked ``integration``:

    python -m pytest -q -p no:cacheprovider tests/test_realruns_smoke.py -m integration

No nandoctor code is involved: these pin the ground truth that nandoctor's own
tests can then be checked against.
"""

from __future__ import annotations

import hashlib
import math

import pytest

torch = pytest.importorskip("torch")

from tests.realruns import (
    EXPLODED_FROM,
    HEALTHY_BELOW,
    POISONED_PARAMETER,
    diverging_trainer_run,
    generate_ok,
    lightning_run,
)

pytestmark = pytest.mark.integration

FLOAT32_MAX = torch.finfo(torch.float32).max


# --------------------------------------------------------------------------- transformers.Trainer


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory) -> dict:
    pytest.importorskip("transformers")
    return diverging_trainer_run(tmp_path_factory.mktemp("qwen2-sgd"))


def _by_step(run: dict) -> dict[int, dict]:
    return {c["step"]: c for c in run["checkpoints"]}


def _trajectory(run: dict) -> str:
    """One line per run for assertion messages: step:max|w| (! when NaN/Inf)."""
    return " ".join(f"{c['step']}:{c['max_abs']:.1e}{'!' if c['nonfinite'] else ''}" for c in run["checkpoints"])


def test_trainer_run_goes_healthy_then_exploded_then_nan(trainer_run):
    run, why = trainer_run, _trajectory(trainer_run)
    steps = [c["step"] for c in run["checkpoints"]]
    assert steps == list(range(1, 29)), why  # save_steps=1 over 28 steps: checkpoint-1 … checkpoint-28
    healthy, exploded, nonfinite = run["last_healthy"], run["first_exploded"], run["first_nonfinite"]
    assert None not in (healthy, exploded, nonfinite), why
    # seed 0 gives 11 < 18 < 26 here; seeds 0-7 stay within these bounds
    assert healthy >= 8 and healthy < exploded < nonfinite <= 27, why

    checkpoints = _by_step(run)
    assert all(checkpoints[s]["max_abs"] < HEALTHY_BELOW for s in range(1, healthy + 1)), why
    # exploded but finite: at least 1e10, below float32's max, and no NaN/Inf anywhere yet
    finite_exploded = [checkpoints[s] for s in range(exploded, nonfinite)]
    assert len(finite_exploded) >= 5, why
    assert all(EXPLODED_FROM <= c["max_abs"] < FLOAT32_MAX and not c["nonfinite"] for c in finite_exploded), why
    # the weights only ever grow on the way up: a genuine blow-up, not a plant
    growth = [checkpoints[s]["max_abs"] for s in range(healthy, nonfinite)]
    assert growth == sorted(growth), why

    # from the first NaN on, every checkpoint holds NaN in exactly the trained head
    for step in range(nonfinite, steps[-1] + 1):
        c = checkpoints[step]
        assert c["bad_tensors"] == ["lm_head.weight", "model.norm.weight"], why
        assert c["nan"] == 128 * 32 + 32 and c["posinf"] == c["neginf"] == 0, why


def test_trainer_run_losses_tell_the_same_story(trainer_run):
    checkpoints = _by_step(trainer_run)
    last_finite = trainer_run["first_nonfinite"] - 1
    # the last finite weights overflow the float32 forward pass: the next step's loss is NaN
    assert not math.isfinite(checkpoints[last_finite]["next_loss"])
    assert math.isfinite(checkpoints[last_finite - 1]["next_loss"])
    assert checkpoints[last_finite - 1]["next_loss"] > 1e30
    assert checkpoints[trainer_run["last_healthy"]]["next_loss"] < 1e3


def test_trainer_run_is_deterministic(trainer_run, tmp_path):
    again = diverging_trainer_run(tmp_path / "again")

    def digests(run):
        files = {c["step"]: c["path"] / "model.safetensors" for c in run["checkpoints"]}
        return {step: hashlib.sha256(f.read_bytes()).hexdigest() for step, f in files.items()}

    assert digests(again) == digests(trainer_run)
    assert _trajectory(again) == _trajectory(trainer_run)


def test_trainer_checkpoint_folders_are_complete(trainer_run):
    path = _by_step(trainer_run)[trainer_run["first_nonfinite"]]["path"]
    names = {p.name for p in path.iterdir()}
    expected = {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "trainer_state.json"}
    assert expected <= names, names


def test_generate_ok_on_the_trainer_checkpoints(trainer_run):
    checkpoints = _by_step(trainer_run)
    healthy = checkpoints[trainer_run["last_healthy"]]["path"]
    exploded = checkpoints[trainer_run["first_exploded"]]["path"]
    nonfinite = checkpoints[trainer_run["first_nonfinite"]]["path"]

    assert generate_ok(healthy)
    assert not generate_ok(nonfinite)
    # |w| ~2e10 in float32: logits ~1e20, still finite, softmax is one-hot and sampling works
    assert generate_ok(exploded)
    # served in float16 the same weights are inf on load and sampling dies; healthy ones still run
    assert not generate_ok(exploded, dtype=torch.float16)
    assert generate_ok(healthy, dtype=torch.float16)


# --------------------------------------------------------------------------- lightning.Trainer


def _load(path):
    # Lightning 2.6 .ckpt files (tensors, dicts, strings) pass the weights_only unpickler
    return torch.load(path, map_location="cpu", weights_only=True)


def _model_checkpoint_states(ckpt: dict) -> dict[str | None, dict]:
    """The ModelCheckpoint callback states in a .ckpt, keyed by their monitor."""
    states = {}
    for key, state in ckpt["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            states[state["monitor"]] = state
    return states


def _nan_counts(ckpt: dict) -> dict[str, int]:
    return {k: int(torch.isnan(v).sum()) for k, v in ckpt["state_dict"].items() if torch.isnan(v).any()}


@pytest.fixture(scope="module")
def lightning_clean(tmp_path_factory):
    pytest.importorskip("lightning")
    out = tmp_path_factory.mktemp("lightning-clean")
    return out, lightning_run(out)


@pytest.fixture(scope="module")
def lightning_poisoned(tmp_path_factory):
    pytest.importorskip("lightning")
    out = tmp_path_factory.mktemp("lightning-poisoned")
    return out, lightning_run(out, poison_at=6)


def test_lightning_clean_run(lightning_clean):
    out, paths = lightning_clean
    assert [p.name for p in paths] == [f"epoch=0-step={s}.ckpt" for s in (2, 4, 6, 8, 10, 12)]
    assert (out / "logs" / "version_0" / "metrics.csv").is_file()
    for path in paths:
        ckpt = _load(path)
        assert not _nan_counts(ckpt) and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
        states = _model_checkpoint_states(ckpt)
        # the monitored callback (save_top_k=-1) keeps the worst loss so far: finite in a clean run
        assert torch.isfinite(states["train_loss"]["kth_value"])
        assert torch.isfinite(states["train_loss"]["best_model_score"])
        # the unmonitored one never compares a score: its kth_value is tensor(inf) in every clean file
        assert states[None]["kth_value"].item() == math.inf


def test_lightning_poisoned_run(lightning_clean, lightning_poisoned):
    _, clean = lightning_clean
    out, paths = lightning_poisoned
    assert [p.name for p in paths] == [p.name for p in clean]
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text()
    assert "nan" in metrics

    by_step = {int(p.stem.split("step=")[1]): _load(p) for p in paths}
    clean_by_step = {int(p.stem.split("step=")[1]): _load(p) for p in clean}
    # before the plant: clean, and bit-for-bit the clean run's weights (the runs are deterministic)
    for step in (2, 4):
        assert not _nan_counts(by_step[step])
        for name, value in by_step[step]["state_dict"].items():
            assert torch.equal(value, clean_by_step[step]["state_dict"][name]), name
    # at the plant step: exactly the one planted value
    assert _nan_counts(by_step[6]) == {POISONED_PARAMETER: 1}
    assert math.isnan(by_step[6]["state_dict"][POISONED_PARAMETER][0, 0].item())
    # afterwards the NaN loss's gradients have spread it through every parameter
    for step in (8, 10, 12):
        state_dict = by_step[step]["state_dict"]
        assert all(torch.isnan(v).all() for v in state_dict.values()), step
        monitored = _model_checkpoint_states(by_step[step])["train_loss"]
        # Lightning stores a NaN monitored loss as +inf: kth_value and current_score become tensor(inf)
        assert monitored["kth_value"].item() == math.inf
        assert monitored["current_score"].item() == math.inf
        assert math.isfinite(monitored["best_model_score"].item())
