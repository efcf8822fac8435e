"""One rank of a real 2-rank ``dcp.save`` followed by ``verify_saved`` (run under torchrun by tests/test_saved.py).

``python -m tests.saved_worker OUT PLANT``: each rank holds a ``Shard(0)`` half of
an 8×6 weight and a 4-element bias (DTensors) and saves them with ``dcp.save``;
PLANT ``nan1`` puts NaN at local [1, 2] of rank 1's half (global [5, 2]); ``big1`` puts 7e4 (finite,
above fp16's largest 65504, below the exploded ceiling, in a tensor too small to have outliers) at local
[0] of rank 1's half of the bias (global [2]). Each rank verifies twice, as saved and with
``target_dtype="fp16"``, and writes what it found to ``OUT/verdict-R.json`` (the fp16 pass under "fp16").
"""

from __future__ import annotations

import json
import os
import sys

from tests.rank_exit import leave_together


def tensor_row(t) -> dict:
    """What a test compares of one tensor result: counts, census and findings."""
    return {"nan": t.nan, "posinf": t.posinf, "neginf": t.neginf, "overflow": t.overflow, "exploded": t.exploded,
            "zeros": t.zeros, "max_abs": t.max_abs, "findings": list(t.findings)}


def main() -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from nandoctor.integrations.saved import verify_saved

    out, plant = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        torch.manual_seed(0)
        state = {"model.weight": distribute_tensor(torch.randn(8, 6), mesh, [Shard(0)]),
                 "model.bias": distribute_tensor(torch.randn(4), mesh, [Shard(0)])}
        if plant == "nan1" and rank == 1:
            state["model.weight"].to_local()[1, 2] = float("nan")
        if plant == "big1" and rank == 1:
            state["model.bias"].to_local()[0] = 7e4
        dcp.save(state, checkpoint_id=os.path.join(out, "ckpt"))
        found = {}
        for target in (None, "fp16"):
            result = verify_saved(os.path.join(out, "ckpt"), target_dtype=target)
            report = result.report
            assert report is not None, result.error
            found[target] = {
                "exit_code": result.exit_code, "rank_codes": result.rank_codes, "own_code": report.exit_code,
                "target_dtype": report.extra.get("target_dtype"),
                "read": sorted({os.path.basename(t.ref.file) for t in report.tensors}),
                "bad": {t.ref.name: [t.nan, t.first_bad] for t in report.tensors if t.nan},
                "tensors": {t.ref.name: tensor_row(t) for t in report.tensors}}
        with open(os.path.join(out, f"verdict-{rank}.json"), "w") as fh:
            json.dump({**found[None], "fp16": found["fp16"]}, fh)
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_together()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
