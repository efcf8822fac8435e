"""Writes real torch.distributed.checkpoint folders for the DCP tests, with NaN/Inf planted at known places.

``python -m tests.dcp_writer OUT FORMAT [clean]`` is run by ``torch.multiprocessing``-free
``torchrun``-style spawning from the tests: two gloo ranks, each holding a
``Shard(0)`` half of every parameter and of its Adam moments (DTensors), save
with ``FileSystemWriter(serialization_format=FORMAT)``; every tensor is saved as
two chunks. Planted: NaN in rank 1's half of ``model.0.weight`` and of the
optimizer's ``exp_avg`` of ``model.2.bias``; -Inf in rank 0's half of
``model.2.weight``; nothing with ``clean`` (the same values otherwise: a repair's donor).
"""

from __future__ import annotations

import os
import sys

from tests.rank_exit import as_rank


def build_and_save(out: str, fmt: str, rank: int, world: int, plant: bool = True) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    for module in (model[0], model[2]):
        for name, param in list(module.named_parameters()):
            module.register_parameter(name, torch.nn.Parameter(distribute_tensor(param.detach(), mesh, [Shard(0)])))
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    for param in model.parameters():
        param.grad = torch.ones_like(param)  # a DTensor sharded as its parameter
    optim.step()
    with torch.no_grad():
        if plant and rank == 1:
            model[0].weight.to_local()[1, 2] = float("nan")  # global (4 + 1, 2) = flat 32
            optim.state[model[2].bias]["exp_avg"].to_local()[0] = float("nan")  # global 2
        if plant and rank == 0:
            model[2].weight.to_local()[1, 3] = float("-inf")  # global (1, 3) = flat 11
    state = {"model": model.state_dict(), "optim": {"state": {
        f"{mod}.{name}": {k: v for k, v in optim.state[p].items() if k != "step"}
        for mod in ("0", "2") for name, p in model[int(mod)].named_parameters(recurse=False)}}}
    writer = FileSystemWriter(out, serialization_format=getattr(SerializationFormat, fmt))
    dcp.save(state, storage_writer=writer)
    dist.barrier()


def main() -> None:
    import torch.distributed as dist

    out, fmt, plant = sys.argv[1], sys.argv[2], sys.argv[3:] != ["clean"]
    build_and_save(out, fmt, dist.get_rank(), dist.get_world_size(), plant)


if __name__ == "__main__":
    as_rank(main)


def write_two_rank(out: str, fmt: str, plant: bool = True, ranks: int = 2) -> None:
    """Run this module under torchrun with 2 gloo ranks (a few seconds); raise if the save failed.
    ``ranks=1``: the same values saved by one rank (every tensor one chunk)."""
    under_torchrun("tests.dcp_writer", out, fmt, *([] if plant else ["clean"]), ranks=ranks)


def under_torchrun(module: str, *args: str, ranks: int = 2) -> None:
    """Run the test module ``module`` with ``args`` under torchrun, ``ranks`` gloo ranks, from the repository's
    root; raise with its stderr if it failed (every DCP writer of the tests saves this way)."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           "-m", module, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise RuntimeError(f"dcp.save under torchrun failed:\n{done.stderr[-3000:]}")


def torch_reference(folder: str) -> dict:
    """Every tensor of the DCP checkpoint as torch loads it (full, global shape): the tests' oracle.

    TORCH_SAVE: ``dcp.load`` itself. SAFETENSORS: torch 2.13's FileSystemReader cannot load that
    serialisation (it calls torch.load on the item), so the oracle is safetensors' own loader on each
    file's trailing stream, placed by the writer's DCP_SHARDING_INFO offsets.
    """
    import json
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp

    with open(os.path.join(folder, ".metadata"), "rb") as fh:
        metadata = pickle.load(fh)  # our own test output: trusted
    tensors = {fqn: torch.zeros(tuple(m.size), dtype=m.properties.dtype)
               for fqn, m in metadata.state_dict_metadata.items() if hasattr(m, "chunks")}
    items = list(metadata.storage_data.values())
    starts = {(i.relative_path, i.offset) for i in items}
    raw_streams = [s for s in starts if _is_safetensors(folder, *s)]
    if not raw_streams:
        nested: dict = {}
        for fqn, t in tensors.items():
            nested[fqn] = t
        dcp.load(nested, checkpoint_id=folder)
        return nested
    from safetensors.torch import load

    for name, offset in raw_streams:
        with open(os.path.join(folder, name), "rb") as fh:
            fh.seek(offset)
            blob = fh.read()
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        info = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
        for fqn, chunk in load(blob).items():
            where = tuple(slice(o, o + s) for o, s in zip(info[fqn]["saved_offsets"], chunk.shape))
            tensors[fqn][where] = chunk
    return tensors


def _is_safetensors(folder: str, name: str, offset: int) -> bool:
    with open(os.path.join(folder, name), "rb") as fh:
        fh.seek(offset)
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"
