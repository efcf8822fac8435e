"""A run's kept baseline (checkpoint/baseline.py) and the callbacks' nandoctor.json against what a run folder may hold.

An adversarial trial planted a link and a FIFO at ``nandoctor-baseline.json`` (the callbacks wrote through the link
into a file outside the run, and blocked forever on the FIFO: training hung), wrote 400-digit integers into the
baseline and into trainer_state.json's first loss (OverflowError: ``nandoctor scan`` exit 3, the callback raised
at on_train_begin and missed a NaN checkpoint at on_save), and found that ``repair`` rescanned the baseline's
checkpoint instead of using its kept scales: once rotation had deleted it (what the baseline is kept for) every
repair failed with "no such file or folder", and a ``checkpoint`` naming a folder outside the run was scanned.
Every run here is real safetensors bytes; safetensors' own reader is the oracle on what a repair wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor import verdict  # noqa: E402
from nandoctor.checkpoint.baseline import BASELINE_NAME, load_baseline, read_baseline  # noqa: E402
from nandoctor.checkpoint.jsonfiles import finite_number, number, read_json  # noqa: E402
from nandoctor.errors import RepairRefusedError  # noqa: E402
from nandoctor.integrations.gate import CheckpointGate, write_json  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

BIG = int("9" * 400)  # JSON's integers have no limit; float() of this one raises OverflowError
POISONED = "model.layers.1.weight"


def _weights(scale: float = 1.0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    found = {f"model.layers.{i}.weight": torch.randn(8, 8) * 0.05 * scale for i in range(3)}
    found["lm_head.weight"] = torch.randn(16, 8) * 0.05 * scale
    return found


def _checkpoint(run: Path, step: int, *, nan: bool = False, scale: float = 1.0, first_loss: object = 2.0) -> Path:
    """``run/checkpoint-<step>`` as Trainer writes one: weights, config.json, trainer_state.json."""
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    weights = _weights(scale)
    if nan:
        weights[POISONED][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "float32",
                                                    "architectures": ["LlamaForCausalLM"]}))
    history = [{"step": 5, "loss": "FIRST"}, *({"step": k, "loss": 2.0 - k * 0.01} for k in range(10, step + 1, 5))]
    text = json.dumps({"global_step": step, "log_history": history})
    (folder / "trainer_state.json").write_text(text.replace('"FIRST"', str(first_loss)))
    return folder


def _gate_keeps_baseline(run: Path, step: int = 5) -> CheckpointGate:
    """What a callback does at a fresh training's first save: start, check the save, keep the baseline."""
    gate = CheckpointGate()
    gate.start(run, fresh=True)
    passed, report = gate.check(run / f"checkpoint-{step}", step)
    assert passed is True and report is not None
    gate.keep_baseline(run / f"checkpoint-{step}", report)
    return gate


def _rotated_run(root: Path, *, scale: float = 1.0) -> Path:
    """The baseline written by the gate at checkpoint-5, later saves 10/20/30 (30 holds one NaN, every later one
    ``scale`` times the first's weights), checkpoint-5 deleted by rotation."""
    run = root / "run"
    _checkpoint(run, 5)
    _gate_keeps_baseline(run)
    for step in (10, 20, 30):
        _checkpoint(run, step, nan=step == 30, scale=scale)
    shutil.rmtree(run / "checkpoint-5")
    assert json.loads((run / BASELINE_NAME).read_text())["checkpoint"] == "checkpoint-5"
    return run


# -- 1. the files nandoctor owns: written in place of what is at the name, read without following a link --------


def test_the_gate_replaces_a_link_planted_at_the_baseline_and_never_writes_its_target(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 5)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    os.symlink(victim, run / BASELINE_NAME)
    _gate_keeps_baseline(run)
    assert victim.read_text() == "the user's own file\n"
    assert not (run / BASELINE_NAME).is_symlink() and (run / BASELINE_NAME).is_file()
    kept = read_baseline(run)
    assert kept is not None and (kept.step, kept.checkpoint) == (5, "checkpoint-5")
    assert set(kept.scales) == set(load_file(str(run / "checkpoint-5" / "model.safetensors")))  # every weight
    assert kept.scales == verdict.tensor_scales(nandoctor.scan(run / "checkpoint-5"))


def test_the_gate_replaces_a_fifo_planted_at_the_baseline_and_never_writes_into_it(tmp_path):
    """Written into, a FIFO blocks its writer until someone reads: here a reader is open, so the old code wrote its
    JSON into the pipe (and without a reader, training hung at its first save)."""
    run = tmp_path / "run"
    _checkpoint(run, 5)
    os.mkfifo(run / BASELINE_NAME)
    reader = os.open(run / BASELINE_NAME, os.O_RDONLY | os.O_NONBLOCK)  # (so that the old code does not hang)
    try:
        _gate_keeps_baseline(run)
        assert os.read(reader, 1 << 16) == b""  # nothing was written into the FIFO
    finally:
        os.close(reader)
    assert stat.S_ISREG(os.lstat(run / BASELINE_NAME).st_mode)
    kept = read_baseline(run)
    assert kept is not None and kept.checkpoint == "checkpoint-5"


def test_a_callbacks_nandoctor_json_replaces_a_planted_link(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text('{"mine": true}\n')
    os.symlink(victim, tmp_path / "nandoctor.json")
    write_json(tmp_path / "nandoctor.json", {"gate": {"passed": False}})
    assert victim.read_text() == '{"mine": true}\n'
    assert not (tmp_path / "nandoctor.json").is_symlink()
    assert json.loads((tmp_path / "nandoctor.json").read_text()) == {"gate": {"passed": False}}


def test_a_verdict_linked_in_from_outside_the_run_is_not_trusted_on_resume(tmp_path):
    """A resumed Trainer run takes the checkpoints whose nandoctor.json says they passed as clean (and rotation keeps
    them): one that is a link is not the callback's file, and is not read."""
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from nandoctor.integrations.transformers import NanDoctorCallback

    run = tmp_path / "run"
    folder = _checkpoint(run, 10, nan=True)
    passed = tmp_path / "elsewhere.json"
    passed.write_text(json.dumps({"gate": {"passed": True}}))
    os.symlink(passed, folder / "nandoctor.json")
    args = TrainingArguments(output_dir=str(run), report_to=[])
    assert NanDoctorCallback()._previous_clean(args) is None
    os.unlink(folder / "nandoctor.json")
    shutil.copy(passed, folder / "nandoctor.json")  # the control: the callback's own regular file is read
    assert NanDoctorCallback()._previous_clean(args) == str(folder)


def test_the_baseline_is_read_without_blocking_or_following_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"format": "nandoctor-baseline/1", "step": 5, "checkpoint": "checkpoint-5",
                                "max_abs": 0.2, "scales": {"lm_head.weight": 0.05}, "first_loss": None}))
    os.symlink(good, run / BASELINE_NAME)
    assert read_json(good)["step"] == 5  # (a user's file: links followed)
    with pytest.raises(OSError):
        read_json(run / BASELINE_NAME, follow_links=False)
    kept, why = load_baseline(run)
    assert kept is None and why is not None and why.startswith(f"{BASELINE_NAME}: a link")
    os.unlink(run / BASELINE_NAME)
    os.mkfifo(run / BASELINE_NAME)  # no writer ever comes: a blocking open would wait forever
    kept, why = load_baseline(run)
    assert kept is None and why is not None and "not a regular file" in why


# -- 2. numbers: a 400-digit integer is a number too large, never a crash -------------------------------------------


def test_the_one_number_converter():
    assert number(BIG) == float("inf") and number(-BIG) == float("-inf") and number(3) == 3.0
    assert number(True) is None and number("1") is None and number(None) is None
    assert finite_number(BIG) is None and finite_number(0.5) == 0.5 and finite_number(float("nan")) is None


@pytest.mark.parametrize("field", ["max_abs", "scale", "step", "first_loss"])
def test_a_baseline_with_a_400_digit_integer_is_ignored_with_a_note(tmp_path, field):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        _checkpoint(run, step)
    data = {"format": "nandoctor-baseline/1", "step": 5, "checkpoint": "checkpoint-5", "max_abs": 0.2,
            "scales": {"lm_head.weight": 0.05}, "first_loss": [5, 2.0]}
    text = json.dumps(data)
    text = {"max_abs": text.replace('"max_abs": 0.2', f'"max_abs": {BIG}'),
            "scale": text.replace('"lm_head.weight": 0.05', f'"lm_head.weight": {BIG}'),
            "step": text.replace('"step": 5', f'"step": {BIG}'),
            "first_loss": text.replace('[5, 2.0]', f'[5, {BIG}]')}[field]
    (run / BASELINE_NAME).write_text(text)
    result = run_cli("scan", run)
    assert result.exit_code == 0, result.output
    found = nandoctor.scan_run(str(run))
    assert [c.status for c in found.checkpoints] == ["clean"] * 3
    if field == "first_loss":  # (a first loss it cannot use: the baseline is still this run's, used as kept)
        assert any("kept in nandoctor-baseline.json" in n for n in found.notes)
    else:
        assert any(n.startswith(f"{BASELINE_NAME}: ") and "ignored" in n for n in found.notes), found.notes


def test_a_400_digit_first_loss_in_trainer_state_is_no_crash(tmp_path):
    run = tmp_path / "run"
    for step in (10, 20, 30):
        _checkpoint(run, step, nan=step == 30, first_loss=BIG)
    (run / BASELINE_NAME).write_text(json.dumps({
        "format": "nandoctor-baseline/1", "step": 5, "checkpoint": "checkpoint-5", "max_abs": 0.2,
        "scales": {"lm_head.weight": 0.05}, "first_loss": [5, 1.95]}))
    result = run_cli("scan", run)
    assert result.exit_code == 1 and "internal error" not in result.output, result.output
    assert run_cli("scan", run / "checkpoint-30").exit_code == 1  # judged in its run: the baseline is read too


def test_the_trainer_callback_still_stops_on_a_nan_checkpoint_beside_a_hostile_baseline(tmp_path, caplog):
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from nandoctor.integrations.transformers import NanDoctorCallback

    run = tmp_path / "run"
    for step in (10, 20, 30):
        _checkpoint(run, step, nan=step == 30)
    (run / BASELINE_NAME).write_text(json.dumps({
        "format": "nandoctor-baseline/1", "step": 5, "checkpoint": "checkpoint-5", "max_abs": 0.2,
        "scales": {"lm_head.weight": 1.0}, "first_loss": None}).replace('"max_abs": 0.2', f'"max_abs": {BIG}'))
    doctor = NanDoctorCallback(stop_on_nonfinite=True)
    args = TrainingArguments(output_dir=str(run), save_total_limit=None, report_to=[])
    state, control = TrainerState(), TrainerControl()
    doctor.on_train_begin(args, state, control)  # (raised OverflowError)
    state.global_step = 30
    doctor.on_save(args, state, control)
    assert control.should_training_stop is True and doctor.first_bad == str(run / "checkpoint-30")
    assert doctor.gate.reports[30].nonfinite == 1
    assert not any("could not scan" in r.getMessage() for r in caplog.records)


def test_a_lightning_verdict_file_with_a_step_that_is_no_integer_is_no_crash(tmp_path):
    """The Lightning callback reads its nandoctor.json back at every save; a step there that is not an integer
    was compared with one (TypeError, out of the callback into training) once a file had failed after a jump."""
    pytest.importorskip("lightning")
    from nandoctor.integrations.lightning import NanDoctorCallback

    (tmp_path / "epoch=0-step=1.ckpt").write_bytes(b"")
    (tmp_path / "nandoctor.json").write_text(json.dumps(
        {"checkpoints": {"epoch=0-step=1.ckpt": {"step": "1", "gate": {"passed": True}}}}))
    doctor = NanDoctorCallback()
    doctor._losses = {step: {"loss": 1.0} for step in range(1, 7)} | {7: {"loss": 100.0}}  # a jump at step 7
    doctor.gate.first_bad = str(tmp_path / "epoch=0-step=8.ckpt")
    assert doctor._broken_from() is not None
    doctor._update(tmp_path, lambda entries: None)
    data = json.loads((tmp_path / "nandoctor.json").read_text())  # (read, changed and written back)
    assert list(data["checkpoints"]) == ["epoch=0-step=1.ckpt"] and data["first_bad"] is None


# -- 3. repair uses the kept scales, as the scan does --------------------------------------------------------------


def test_repair_from_auto_works_once_the_baselines_checkpoint_was_rotated_away(tmp_path):
    run = _rotated_run(tmp_path)
    scanned = run_cli("scan", run)
    assert scanned.exit_code == 1
    command = f"nandoctor repair {run}/checkpoint-30 --from auto --out {run}/repaired-checkpoint-30"
    assert command in " ".join(scanned.output.split())  # what the scan tells the user to run
    result = run_cli("repair", run / "checkpoint-30", "--from", "auto", "--out", tmp_path / "fixed")
    assert result.exit_code == 0, result.output
    fixed, donor = load_file(str(tmp_path / "fixed" / "model.safetensors")), load_file(
        str(run / "checkpoint-20" / "model.safetensors"))
    assert torch.equal(fixed[POISONED], donor[POISONED])
    target = load_file(str(run / "checkpoint-30" / "model.safetensors"))
    assert all(torch.equal(fixed[n], target[n]) for n in target if n != POISONED)
    assert int((~torch.isfinite(target[POISONED])).sum()) == 1
    assert run_cli("repair", run / "checkpoint-30", "--from", run / "checkpoint-10", "--dry-run").exit_code == 0
    planned = nandoctor.repair(run / "checkpoint-30", run / "checkpoint-10", dry_run=True)
    assert [r.name for r in planned.plan.restorations] == [POISONED]


def test_repair_weighs_growth_by_the_kept_scales_as_the_scan_does(tmp_path):
    """Every save after the first grew 1000 times: the scan calls them diverged against the kept scales of the
    rotated-away checkpoint-5, and repair refuses for the same reason (it failed on the missing folder)."""
    run = _rotated_run(tmp_path, scale=1000.0)
    found = nandoctor.scan_run(str(run))
    assert [c.status for c in found.checkpoints] == ["diverged"] * 3
    with pytest.raises(RepairRefusedError) as refused:
        nandoctor.repair(run / "checkpoint-30", run / "checkpoint-20", tmp_path / "fixed", allow_diverged=True)
    assert f"since the run's first healthy checkpoint {run / 'checkpoint-5'}" in refused.value.message
    assert not (tmp_path / "fixed").exists()


def test_a_baseline_naming_a_checkpoint_outside_the_run_is_ignored_and_never_opened(tmp_path):
    """Its checkpoint is only a label in the run: one naming a path outside (here a healthy checkpoint whose weights
    are 1000 times smaller, which the old repair scanned and then called every donor diverged by) is no baseline
    nandoctor wrote."""
    run = _rotated_run(tmp_path)
    elsewhere = _checkpoint(tmp_path / "other", 5, scale=0.001)
    data = json.loads((run / BASELINE_NAME).read_text())
    (run / BASELINE_NAME).write_text(json.dumps({**data, "checkpoint": str(elsewhere)}))
    kept, why = load_baseline(run)
    assert kept is None and why is not None and "not a name in the run folder" in why
    assert any(n == why for n in nandoctor.scan_run(str(run)).notes)
    result = nandoctor.repair(run / "checkpoint-30", "auto", tmp_path / "fixed")
    assert result.ok and [r.name for r in result.plan.restorations] == [POISONED]
    assert torch.equal(load_file(str(tmp_path / "fixed" / "model.safetensors"))[POISONED],
                       load_file(str(run / "checkpoint-20" / "model.safetensors"))[POISONED])
