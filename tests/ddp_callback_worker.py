"""One rank of tests/test_trainer_callback_distributed.py: a gloo process group of two on this machine.

    python tests/ddp_callback_worker.py RANK RENDEZVOUS_FILE OUTPUT_DIR SOURCE RESULT_JSON

Process zero copies SOURCE into OUTPUT_DIR/checkpoint-6 only after a delay, as a Trainer's
process zero is still writing while the other ranks already run ``on_save``; then both
ranks call ``NanDoctorCallback.on_save`` and write what they decided to RESULT_JSON.
SOURCE "empty" makes an empty folder (the scan fails), "none" writes nothing.
SOURCE "dcp-clean" / "dcp-nan1" is a per-rank save instead: every rank writes its Shard(0) half of an 8×6
weight with a real ``dcp.save`` into checkpoint-6 (as a Trainer saving FSDP sharded state does), NaN in
rank 1's half with "dcp-nan1"; RESULT_JSON then also says which files this rank's report read.
"dcp-big1@fp16" saves a 4-element bias too, 7e4 in rank 1's half (above fp16's range; healthy otherwise), and
checks with ``target_dtype`` fp16 (the part after "@"); "dcp-big1" the same save without a target dtype.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist
from transformers import TrainerControl, TrainerState

from nandoctor.integrations.transformers import NanDoctorCallback
from tests.rank_exit import leave_together

rank, rendezvous, out, source, result = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)

args = SimpleNamespace(output_dir=str(out), save_total_limit=None, metric_for_best_model=None, load_best_model_at_end=False)
state = TrainerState(global_step=6, is_world_process_zero=rank == 0)
source, _, target_dtype = source.partition("@")
doctor = NanDoctorCallback(stop_on_nonfinite=True, target_dtype=target_dtype or None)
doctor.on_train_begin(args, state, TrainerControl())
if source.startswith("dcp-"):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    torch.manual_seed(0)
    weight = distribute_tensor(torch.randn(8, 6), init_device_mesh("cpu", (2,)), [Shard(0)])
    if source == "dcp-nan1" and rank == 1:
        weight.to_local()[1, 2] = float("nan")  # global [5, 2]
    saved = {"model.weight": weight}
    if source == "dcp-big1":
        saved["model.bias"] = distribute_tensor(torch.zeros(4), init_device_mesh("cpu", (2,)), [Shard(0)])
        if rank == 1:
            saved["model.bias"].to_local()[0] = 7e4  # global [2]
    dcp.save(saved, checkpoint_id=str(out / "checkpoint-6"))
elif rank == 0:
    time.sleep(1.5)
    if source == "empty":
        (out / "checkpoint-6").mkdir(parents=True)
    elif source != "none":
        shutil.copytree(source, out / "checkpoint-6")
control = doctor.on_save(args, state, TrainerControl())
Path(result).write_text(
    json.dumps(
        {
            "stop": control.should_training_stop,
            "scanned": sorted(doctor.reports),
            "last_clean": doctor.last_clean,
            "first_bad": doctor.first_bad,
            "read": {step: sorted({Path(t.ref.file).name for t in r.tensors}) for step, r in doctor.reports.items()},
            "overflow": {step: {t.ref.name: t.overflow for t in r.tensors if t.overflow} for step, r in doctor.reports.items()},
        }
    )
)
leave_together()
