"""One rank of a real two-process DDP Trainer run (gloo, CPU), started by torchrun from
tests/test_trainer_callback_distributed.py:

    torchrun --standalone --nproc_per_node 2 tests/ddp_trainer_worker.py OUTPUT_DIR

The run of tests/test_trainer_callback.py (a NaN planted after step 5, a save every 2 steps,
max_steps 20) with the doctor set to stop; each rank writes where it stopped to OUTPUT_DIR/rankN.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nandoctor.integrations.transformers import NanDoctorCallback
from tests.rank_exit import leave_together
from tests.test_trainer_callback import make_trainer

out = Path(sys.argv[1])
doctor = NanDoctorCallback(stop_on_nonfinite=True)
trainer = make_trainer(out, doctor, max_steps=20, ddp_backend="gloo", save_total_limit=None)
trainer.train()
(out / f"rank{os.environ['RANK']}.json").write_text(
    json.dumps({"step": trainer.state.global_step, "stopped_at": doctor.stopped_at, "scanned": sorted(doctor.reports)})
)
leave_together()
