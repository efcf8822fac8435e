"""Writes a real two-rank DCP checkpoint of one tensor whose two chunks have different scales (tests/test_dcp.py).

``python -m tests.dcp_scales_writer OUT`` under torchrun (two gloo ranks): ``w`` (40x100) saved as a ``Shard(0)``
DTensor, cut between the ranks at row 20. Rows 0-19: N(0, 0.01) with 3 values of 5e4; rows 20-39: N(0, 1e-3) with 8
values of 8.0. Over the whole tensor the 9th largest magnitude is 8, so the three 5e4 (6000x it) are its outliers
and the eight 8.0 are its bulk; rank 1's chunk alone calls its 8.0 outliers. Also writes OUT.safetensors: the same
tensor whole, in one file.
"""

from __future__ import annotations

import sys

from tests.rank_exit import as_rank

BIG = (5, 500, 1500)  # flat indices in rows 0-19 of the 5e4 values
MID = (7, 100, 300, 700, 900, 1200, 1500, 1900)  # flat indices in rows 20-39 of the 8.0 values


def full():
    import torch

    g = torch.Generator().manual_seed(0)
    w = torch.empty(40, 100)
    w[:20] = torch.randn(20, 100, generator=g) * 0.01
    w[:20].view(-1)[list(BIG)] = 5e4
    w[20:] = torch.randn(20, 100, generator=g) * 1e-3
    w[20:].view(-1)[list(MID)] = 8.0
    return w


def main() -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    out = sys.argv[1]
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    w = full()
    dcp.save({"model.layers.0.mlp.down_proj.weight": distribute_tensor(w, mesh, [Shard(0)])}, checkpoint_id=out)
    if dist.get_rank() == 0:
        save_file({"model.layers.0.mlp.down_proj.weight": w}, out + ".safetensors")
    dist.barrier()


if __name__ == "__main__":
    as_rank(main)
