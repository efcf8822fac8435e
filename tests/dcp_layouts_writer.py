"""Two gloo ranks save DCP layouts whose chunks tile their tensors in ways a coverage check must accept.

``python -m torch.distributed.run --nproc_per_node 2 -m tests.dcp_layouts_writer OUT`` writes ``OUT/shared``
(one ``.metadata``): ``one`` is one element split over two ranks (rank 1's chunk holds nothing, at offset 1),
``cols`` is split along columns, ``rows`` unevenly along rows (3 + 2), ``rep`` is replicated (one chunk,
deduplicated), ``step`` a pickled object; and ``OUT/local``: the same state saved with
``use_collectives=False`` (per-rank ``__0.metadata`` and ``__1.metadata``, merged by the reader: each rank's own
copy of ``rep`` a tensor of its own).
:func:`write` runs it.
"""

from __future__ import annotations

import os
import sys

from tests.rank_exit import leave_together


def _save(out: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    state = {
        "one": distribute_tensor(torch.ones(1), mesh, [Shard(0)]),
        "cols": distribute_tensor(torch.randn(4, 8), mesh, [Shard(1)]),
        "rows": distribute_tensor(torch.randn(5, 3), mesh, [Shard(0)]),
        "rep": distribute_tensor(torch.randn(3), mesh, [Replicate()]),
        "step": 7,
    }
    dcp.save(state, checkpoint_id=os.path.join(out, "shared"))
    # (each rank's own copy of the replicated tensor, in its own file: rank 1's is read as rep@rank1)
    dcp.save(state, checkpoint_id=os.path.join(out, "local"), use_collectives=False)
    dist.barrier()


def main() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        _save(sys.argv[1])
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_together()


def write(out: str) -> None:
    """Save under torchrun with 2 gloo ranks (a few seconds); raise if the save failed."""
    from tests.dcp_writer import under_torchrun

    under_torchrun("tests.dcp_layouts_writer", out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
