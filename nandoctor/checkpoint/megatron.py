"""The model-parallel rank folders a Megatron iteration should hold, and those it lacks.

Every rank of a Megatron save pickles the training's ``args`` (an ``argparse.Namespace``) into its
``model_optim_rng.pt``, and Megatron's ``get_checkpoint_name`` names each rank's folder from the same sizes:
``mp_rank_TT`` for ``tensor_model_parallel_size`` ranks, ``_PPP`` added where ``pipeline_model_parallel_size`` is over
1, ``_EEE`` where ``expert_model_parallel_size`` is. Those folders are what the iteration must hold, whatever its
neighbours hold (a run resharded to fewer ranks from one save on) and where it has none (a save folder of one
iteration). Read through the restricted unpickler (inert stand-ins only), once per version of the file. Where the args
say nothing, a hole in the tensor x pipeline grid its folders span, or a folder the run's other iterations hold.
Used by a run's timeline (checkpoint/incomplete.py: INCOMPLETE) and by a scan of the iteration alone
(checkpoint/layout.py: a problem, exit 3).
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.steps import MEGATRON_FILES, MEGATRON_RANK

_MAX_RANKS = 1 << 16  # (a grid past this is no training's: the args are not trusted to size a set)


@dataclass(frozen=True)
class RankGrid:
    """The model-parallel sizes a Megatron save was written with (its ``args``)."""

    tensor: int
    pipeline: int = 1
    expert: int = 1

    @property
    def folders(self) -> frozenset[str]:
        """The rank folders Megatron's save writes for these sizes (``get_checkpoint_name``'s names)."""
        names = set()
        for t, p, e in itertools.product(range(self.tensor), range(self.pipeline), range(self.expert)):
            name = f"mp_rank_{t:02d}" + (f"_{p:03d}" if self.pipeline > 1 else "")
            names.add(name + (f"_{e:03d}" if self.expert > 1 else ""))
        return frozenset(names)

    @property
    def words(self) -> str:
        """The sizes as a message says them: ``tensor-parallel size 2``, with pipeline and expert sizes over 1."""
        sizes = [("tensor", self.tensor), ("pipeline", self.pipeline), ("expert", self.expert)]
        return ", ".join(f"{kind}-parallel size {size}" for kind, size in sizes if kind == "tensor" or size > 1)


@dataclass(frozen=True)
class MissingRanks:
    """The rank folders an iteration lacks, and the grid its args gave (None: judged by the folders alone)."""

    folders: tuple[str, ...]
    grid: RankGrid | None = None

    @property
    def words(self) -> str:
        """``model-parallel rank folder(s) missing: mp_rank_01/ (its args say tensor-parallel size 2; …)``."""
        said = f"its args say {self.grid.words}; " if self.grid is not None else ""
        shown = ", ".join(m + "/" for m in self.folders[:4]) + (" …" if len(self.folders) > 4 else "")
        return (f"model-parallel rank folder(s) missing or without {MEGATRON_FILES[0]}: {shown} ({said}Megatron's load "
                "of this iteration fails on them)")


def missing_ranks(iteration: Path, entries: list[Path], expected: frozenset[str] = frozenset()) -> MissingRanks | None:
    """The rank folders Megatron iteration ``iteration`` (whose listing is ``entries``) lacks: those its own args say
    it was saved with (:func:`saved_grid`); where they say nothing, a hole in the grid its folders span or one of
    ``expected`` (the run's other iterations'). None where it lacks none, or holds no rank folder."""
    named = frozenset(e.name for e in entries if MEGATRON_RANK.match(e.name))
    if not named:
        return None
    # (a rank folder without its model file is missing all the same: a rank that died mid-save left mp_rank_01/ empty,
    # and the iteration read ✓ healthy while Megatron's load of rank 1 failed, an adversarial round found)
    from nandoctor import access

    held = frozenset(n for n in named if access.is_file(Path(iteration) / n / MEGATRON_FILES[0], refused=True))
    grid = saved_grid(iteration, held) if held else None
    missing = grid.folders - held if grid is not None else _grid_holes(named) | (expected - named) | (named - held)
    return MissingRanks(tuple(sorted(missing)), grid) if missing else None


def rank_folders(folder: Path) -> frozenset[str]:
    """The Megatron model-parallel rank folders (``mp_rank_TT[_PPP]``) of an iteration folder; empty for any other."""
    from nandoctor import access
    from nandoctor.errors import UnreadablePathError

    try:
        return frozenset(e.name for e in access.listing(folder) if MEGATRON_RANK.match(e.name))
    except UnreadablePathError:
        return frozenset()


def _grid_holes(held: frozenset[str]) -> set[str]:
    """The rank folders a tensor x pipeline (x expert) grid lacks where ``held`` spans it with a hole
    (``mp_rank_01_001/`` beside ``mp_rank_00_001/`` and ``mp_rank_01_000/``)."""
    grid = {tuple(int(n) for n in name.split("_")[2:]) for name in held}
    if len({len(cell) for cell in grid}) != 1:
        return set()
    shape = [max(cell[i] for cell in grid) + 1 for i in range(len(next(iter(grid))))]
    return {"mp_rank_" + "_".join(f"{n:02d}" if i == 0 else f"{n:03d}" for i, n in enumerate(cell))
            for cell in itertools.product(*(range(size) for size in shape))} - held


def saved_grid(iteration: Path, held: frozenset[str]) -> RankGrid | None:
    """The rank grid iteration folder ``iteration`` was saved with, by the ``args`` in the first of its rank folders
    (``held``) whose ``model_optim_rng.pt`` can be read; None where that file records none, or where a folder it holds
    is not one of the grid's (a naming the args do not give: the folders are judged by their neighbours, as before)."""
    for rank in sorted(held)[:1]:  # (every rank saves the same args: one file read, the first rank's)
        file = Path(iteration) / rank / MEGATRON_FILES[0]
        try:
            found = os.stat(file)
        except OSError:
            return None
        grid = _grid_of(os.fspath(file), found.st_size, found.st_mtime_ns, found.st_ino)
        return grid if grid is not None and held <= grid.folders else None
    return None


@functools.lru_cache(maxsize=1024)
def _grid_of(file: str, size: int, mtime_ns: int, inode: int) -> RankGrid | None:  # (the stat's fields: the cache's key)
    from nandoctor.errors import NandoctorError
    from nandoctor.readers.torch.file import read_object
    from nandoctor.readers.torch.stubs import Placeholder

    try:
        state = read_object(Path(file))
    except (NandoctorError, OSError, ValueError):
        return None  # (its scan says why it cannot be read)
    args = state.get("args") if isinstance(state, dict) else None
    fields = args.state if isinstance(args, Placeholder) else None  # (a Namespace's fields: its pickled __dict__)
    if not isinstance(fields, dict):
        return None
    sizes = [_size(fields.get(name)) for name in
             ("tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size")]
    tensor, pipeline, expert = sizes
    if tensor is None:
        return None
    grid = RankGrid(tensor, pipeline or 1, expert or 1)
    return grid if grid.tensor * grid.pipeline * grid.expert <= _MAX_RANKS else None


def _size(value: Any) -> int | None:
    """A model-parallel size from the args: a positive int, else None (absent, or not a size)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


__all__ = ["MissingRanks", "RankGrid", "missing_ranks", "rank_folders", "saved_grid"]
