"""The Lightning callback under a real two-process DDP run (torchrun, gloo, CPU).

A trial: the live stop (NaN weights at a NaN loss, which a ModelCheckpoint monitoring the loss never writes) saved
that state beside the step files on one process only; under DDP it saved nothing (a save is collective), so the
run's scan and a gate after training passed a run the callback had stopped. Every rank now saves it together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_gloo

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
require_gloo()

import nandoctor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_lightning_worker.py"
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("steps", [16, 8])  # (8: the NaN loss is the last batch's, with no next batch to save at)
def test_a_live_stop_under_ddp_saves_the_broken_state_on_every_rank_together(tmp_path, steps):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         str(tmp_path), str(steps)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    step = ranks[0]["nonfinite_weights_at"]
    assert step is not None and ranks[0]["stopped_at"] == step  # rank 0 checked the live weights and stopped
    stopped = tmp_path / "checkpoints" / f"nandoctor-stopped-step={step}.ckpt"
    assert stopped.is_file() and ranks[0]["first_bad"] == str(stopped)
    # the oracle: the saved state loads with torch and holds the NaN weights the callback saw
    saved = torch.load(stopped, weights_only=True)
    assert not all(bool(torch.isfinite(t).all()) for t in saved["state_dict"].values())
    run = nandoctor.scan_run(str(tmp_path / "checkpoints"))
    assert run.exit_code() == 1 and run.first_bad is not None and run.first_bad.name == stopped.name
