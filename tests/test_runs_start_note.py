"""The note that growth is measured from the run's start names the checkpoints it holds for (runs.scan_run).

A new user's trial: a healthy Qwen3 run whose loss fell from 4.85 to 1.54 read "the trainer log's loss has not come
down yet …, so no checkpoint stands for trained weights" beside its PASS: true of its first save only (its loss had
not fallen by a third yet), it read as about the whole run.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import nandoctor  # noqa: E402
from tests.test_runs_worse_than_untrained import _eval_loss, _train  # noqa: E402

pytestmark = pytest.mark.integration


def test_a_healthy_run_says_which_save_is_measured_from_the_start(tmp_path):
    run_dir = _train(tmp_path / "ok", 3e-3, 40, save_steps=10)
    assert _eval_loss(run_dir / "checkpoint-40") < 0.8 * _eval_loss(None)  # the oracle: it trained
    run = nandoctor.scan_run(run_dir)
    assert run.exit_code() == 0 and run.last_healthy.name == "checkpoint-40"
    said = [note for note in run.notes if "weights the run started from" in note]
    # (the saves whose own log had not fallen by a third yet, and only those)
    early = [c.name for c in run.checkpoints if c.log is not None and not c.log.came_down(run.untrained_loss)]
    assert early and "checkpoint-40" not in early
    assert len(said) == 1 and f"for {', '.join(early)}:" in said[0], (said, early)
    assert "no earlier checkpoint stands for trained weights" in said[0]
