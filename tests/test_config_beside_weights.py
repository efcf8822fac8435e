"""A config file's values (BAD CONFIG) are the folder's problem, not its weights': a run whose every checkpoint
saved a generation_config.json that generate refuses still has healthy checkpoints to resume from and repair
with, a diff of the weights is complete, and a training callback keeps the checkpoint (a trial: every row
"unreadable", last healthy none, every donor refused, diff INCOMPLETE, the callback stopping a healthy run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nandoctor
from nandoctor.checkpoint.runs import scan_run
from tests.conftest import DEMO_RUN, run_cli

BAD_GENERATION = {"do_sample": True, "temperature": 0.0}  # (people mean greedy; generate raises)


def _run_with_bad_generation_config(tmp_path: Path) -> Path:
    run = shutil.copytree(DEMO_RUN, tmp_path / "run")
    for checkpoint in sorted(run.glob("checkpoint-*")):
        (checkpoint / "generation_config.json").write_text(json.dumps(BAD_GENERATION))
    return run


def test_a_run_keeps_its_healthy_checkpoints_and_says_the_config_once(tmp_path):
    run = _run_with_bad_generation_config(tmp_path)
    report = scan_run(run)
    assert [c.status for c in report.checkpoints] == ["clean", "clean", "poisoned"]
    assert report.last_healthy is not None and report.last_healthy.name == "checkpoint-200"
    assert report.exit_code() == 3  # (the newest's config still fails the scan)
    result = run_cli("scan", run)
    assert result.output.count("bad config (the weights are judged above)") == 1, result.output
    assert "temperature is 0.0 with do_sample true" in result.output


def test_repair_takes_donors_whose_config_is_bad_and_refuses_a_target_whose_config_is(tmp_path):
    run = _run_with_bad_generation_config(tmp_path)
    target = run / "checkpoint-300"
    refused = run_cli("repair", target, "--from", "auto", "--out", tmp_path / "o1")
    assert refused.exit_code == 3 and "a repair restores tensors, never config files" in refused.output
    assert not (tmp_path / "o1").exists()
    (target / "generation_config.json").write_text(json.dumps({"do_sample": False}))  # the user corrects it
    repaired = run_cli("repair", target, "--from", "auto", "--out", tmp_path / "o2")
    assert repaired.exit_code == 0, repaired.output
    assert nandoctor.scan(tmp_path / "o2").exit_code == 0


def test_diff_of_the_weights_is_complete_beside_a_bad_config(tmp_path):
    run = _run_with_bad_generation_config(tmp_path)
    result = run_cli("diff", run / "checkpoint-200", DEMO_RUN / "checkpoint-200")
    assert result.exit_code == 0 and "INCOMPLETE" not in result.output, result.output
    assert "temperature is 0.0" in result.output  # (said as a note)


def test_the_training_gate_keeps_a_checkpoint_whose_weights_pass(tmp_path):
    from nandoctor.integrations.gate import CheckpointGate, passed_in

    run = _run_with_bad_generation_config(tmp_path)
    gate = CheckpointGate(fail_on=frozenset({"nonfinite"}))
    passed, report = gate.check(run / "checkpoint-200", 200)
    assert passed is True and report is not None and report.exit_code == 3
    data = gate.report_json(report)
    assert data["gate"]["passed"] is False and data["gate"]["weights_passed"] is True and passed_in(data)
    assert gate.last_clean == str(run / "checkpoint-200")
    failed, _ = gate.check(run / "checkpoint-300", 300)
    assert failed is False and "weights_passed" not in gate.report_json(gate.reports[300])["gate"]


def test_nan_weights_beside_a_bad_config_are_the_error_raised_and_the_repair_waits_for_the_config(tmp_path):
    """assert_finite on NaN weights beside a bad config raised only the config's error (the documented
    `except NonFiniteWeightsError` missed it); the scan's next steps suggested a repair the repair refuses."""
    import pytest

    run = _run_with_bad_generation_config(tmp_path)
    with pytest.raises(nandoctor.NonFiniteWeightsError):
        nandoctor.assert_finite(run / "checkpoint-300")
    with pytest.raises(nandoctor.UnreadableCheckpointError, match="does not work as it is"):
        nandoctor.assert_finite(run / "checkpoint-200")
    single = run_cli("scan", run / "checkpoint-300").output
    assert single.index("correct the config or tokenizer files") < single.index("then restore the bad tensors"), single
    whole = run_cli("scan", run).output
    assert "correct generation_config.json of checkpoint-300 first" in whole, whole
