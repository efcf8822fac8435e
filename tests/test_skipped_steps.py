"""fp16 loss scaling's skipped steps are no break in the trainer log.

With fp16 AMP, the GradScaler skips the steps whose gradients overflowed while it calibrates, and Trainer logs
their ``grad_norm`` as NaN/Inf; the weights are untouched and the log is finite again after. A trial: a healthy
run's ``--quiet`` line said "trainer log broke at step 1". Only the gradient norm, and finite again after:
said as what it is (TrainLog.skipped_steps); a loss that goes NaN, or a grad norm that stays NaN, still broke.
A real ``transformers.Trainer`` writes the run (CPU has no fp16 AMP: its log entries are then written as such a
run writes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from nandoctor.report.run_report import one_line  # noqa: E402
from tests.trainer_checkpoints import trainer_run  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trainer_run(tmp_path_factory.mktemp("fp16") / "run", steps=6, save_steps=2)


def _rewrite(run: Path, out: Path, change) -> Path:
    import shutil

    shutil.copytree(run, out)
    for state in out.glob("checkpoint-*/trainer_state.json"):
        data = json.loads(state.read_text())
        for entry in data["log_history"]:
            change(entry)
        state.write_text(json.dumps(data))
    return out


def test_skipped_steps_are_said_as_such_and_a_real_break_still_is_one(run: Path, tmp_path: Path) -> None:
    def skipped(entry):
        if entry.get("step") in (1, 2) and "grad_norm" in entry:
            entry["grad_norm"] = float("nan")

    scanned = nandoctor.scan_run(str(_rewrite(run, tmp_path / "skipped", skipped)), device="cpu")
    log = scanned.log
    assert log is not None and log.first_nonfinite_step == 1 and log.skipped_steps and log.suspicious_step is None
    line = one_line(scanned)
    assert scanned.exit_code() == 0 and "broke" not in line
    # (a trial: "as fp16 loss scaling logs the steps it skips" in an fp32 run whose step was applied and put +Inf in the
    # Adam moments: the scan's verdict on them is what says it)
    assert line.endswith("trainer log: grad_norm NaN/Inf at step 1, finite again after (fp16 loss scaling skips such "
                         "steps; without it the update was applied: the scan of the weights and optimizer state says "
                         "whether it left NaN/Inf); finite to 6")
    assert nandoctor.to_json(scanned)["run"]["train_log"]["first_nonfinite"]["skipped_steps"] is True

    def stays(entry):  # the grad norm never comes back: no skipped step
        if entry.get("step", 0) >= 3 and "grad_norm" in entry:
            entry["grad_norm"] = float("nan")

    def loss(entry):  # the loss itself went NaN, once: a break
        if entry.get("step") == 3 and "loss" in entry:
            entry["loss"] = float("nan")

    for name, change, step in (("stays", stays, 3), ("loss", loss, 3)):
        broken = nandoctor.scan_run(str(_rewrite(run, tmp_path / name, change)), device="cpu")
        assert broken.log is not None and not broken.log.skipped_steps and broken.log.suspicious_step == step
        assert f"trainer log broke at step {step}" in one_line(broken)


def test_a_break_after_skipped_steps_is_still_a_break(run: Path, tmp_path: Path) -> None:
    """A review: once an early grad_norm NaN came back finite, a later NaN loss went unsaid (fp16 runs nearly always
    skip early steps). Skipped steps first, then a NaN loss: the log broke there."""
    def both(entry):
        if entry.get("step") == 1 and "grad_norm" in entry:
            entry["grad_norm"] = float("inf")
        if entry.get("step") == 4 and "loss" in entry:
            entry["loss"] = float("nan")

    scanned = nandoctor.scan_run(str(_rewrite(run, tmp_path / "both", both)), device="cpu")
    log = scanned.log
    assert log is not None and not log.skipped_steps and log.first_nonfinite_step == 1 and log.suspicious_step == 4
    assert "trainer log broke at step 4" in one_line(scanned)
