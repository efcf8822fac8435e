"""One rank of a real two-process DDP ``lightning.Trainer`` run (gloo, CPU), started by torchrun from
tests/test_lightning_distributed.py:

    torchrun --standalone --nproc_per_node 2 tests/ddp_lightning_worker.py OUTPUT_DIR [STEPS]

The live-stop run of tests/test_lightning.py (NaN planted after step 7, a ModelCheckpoint monitoring the loss, which
never writes the NaN state) with the doctor set to stop; each rank writes what its callback saw to
OUTPUT_DIR/rankN.json. STEPS (16): max_steps; 8 makes the batch whose NaN loss is checked the run's last.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nandoctor.integrations.lightning import NanDoctorCallback
from tests.rank_exit import leave_together
from tests.realruns import lightning_run

out = Path(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 16
doctor = NanDoctorCallback(stop_on_nonfinite=True)
lightning_run(out, poison_at=7, callbacks=(doctor,), steps=steps, every_n_train_steps=2, keep_last=False,
              monitor="train_loss", save_top_k=2, devices=2)
(out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({
    "stopped_at": doctor.stopped_at, "nonfinite_weights_at": doctor.nonfinite_weights_at,
    "first_bad": doctor.first_bad, "last_clean": doctor.last_clean,
}))
leave_together()
