"""Two gloo ranks, a model whose parameters are DTensors sharded over them (as FSDP2 leaves them); rank 0 alone scans
it live, as the training callbacks do on process zero, while rank 1 waits at a barrier. An op on a DTensor is a
collective, and the scan's first (aminmax) raised outright before it read each shard on its own. Writes rank 0's
verdict to OUT.

``python -m torch.distributed.run --nproc_per_node 2 -m tests.dtensor_live_worker OUT``
"""

from __future__ import annotations

import sys

from tests.rank_exit import as_rank


def main() -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    with torch.no_grad():
        model.weight[3, 1] = float("nan")  # in rank 1's rows: rank 0's own shard is healthy
    for name, param in list(model.named_parameters()):
        model.register_parameter(name, torch.nn.Parameter(distribute_tensor(param.detach(), mesh, [Shard(0)])))
    if dist.get_rank() == 0:
        import nandoctor

        report = nandoctor.scan_module(model)
        with open(sys.argv[1], "w") as out:
            out.write(f"{report.exit_code} {sorted(t.ref.shape for t in report.tensors)}\n")
    dist.barrier()


if __name__ == "__main__":
    as_rank(main)
