"""A two-rank torch.distributed.checkpoint save whose tensors are DTensors sharded along different dims, for the
repair's counting tests: ``w`` is ``Shard(0)`` (rows), ``v`` is ``Shard(1)`` (columns), so each tensor is two chunks
in two ``.distcp`` files. With ``plant``: NaN in rank 0's half of ``w`` only, and in both ranks' halves of ``v`` (a
tensor with two bad chunks). ``a``, ``b``, ``c``, ``d`` stay clean (the save is poisoned, not diverged).

``python -m torch.distributed.run --nproc_per_node 2 -m tests.dcp_shard_dims_writer OUT SHIFT [plant]``;
:func:`write` runs it. Every value is the seeded value + SHIFT, so a target and its donor differ everywhere.
"""

from __future__ import annotations

import os
import sys

from tests.rank_exit import leave_together

# Where the planted NaNs sit, in global coordinates: w (1, 2) in rank 0's rows 0-3; v (0, 1) and (2, 5), one in
# each rank's columns (0-3 and 4-7)
PLANTED = {"w": [(1, 2)], "v": [(0, 1), (2, 5)]}


def _save(out: str, shift: float, plant: bool) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    shapes = {"w": (8, 6), "v": (4, 8), "a": (8, 6), "b": (8,), "c": (6, 4), "d": (4, 4)}
    full = {name: torch.randn(shape) + shift for name, shape in shapes.items()}
    if plant:
        for name, places in PLANTED.items():
            for place in places:
                full[name][place] = float("nan")
    state = {name: distribute_tensor(t, mesh, [Shard(1) if name == "v" else Shard(0)]) for name, t in full.items()}
    dcp.save(state, checkpoint_id=out)
    dist.barrier()


def main() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        _save(sys.argv[1], float(sys.argv[2]), sys.argv[3:] == ["plant"])
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_together()


def write(out: str, shift: float, plant: bool) -> None:
    """Save under torchrun with 2 gloo ranks (a few seconds); raise if the save failed."""
    from tests.dcp_writer import under_torchrun

    under_torchrun("tests.dcp_shard_dims_writer", out, str(shift), *(["plant"] if plant else []))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
