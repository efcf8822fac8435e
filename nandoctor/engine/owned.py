"""The files one rank wrote, scanned by that rank alone (verify on save: no process reads everything).

Writers that save per rank name their files after it: DCP's ``FileSystemWriter``
writes ``__R_I.distcp``; DeepSpeed writes ``*zero_pp_rank_R_*``. A rank scans
the files named for it; files named for no rank (``.metadata``-side files,
DeepSpeed's ``mp_rank_00_model_states.pt``, a Trainer's ``config.json`` side
weights) are rank 0's, and a file named for a rank beyond the world (a save by
more ranks) goes to ``R % world``, so that every file is read by exactly one
rank and the ranks' verdicts together never call clean what nobody read.
Torch-free: torch.distributed is only the transport (integrations/saved.py).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from nandoctor.checkpoint.opener import open_checkpoint
from nandoctor.engine import assemble, scan_jobs
from nandoctor.engine.jobs import plan_jobs
from nandoctor.kernels import select_kernel
from nandoctor.kernels.census import HealthLimits
from nandoctor.kernels.targets import target
from nandoctor.model import ScanReport

_RANK_NAMES = (re.compile(r"^__(\d+)_\d+\.distcp$"), re.compile(r"zero_pp_rank_(\d+)_"))


def writer_rank(file: Path) -> int | None:
    """The rank a per-rank writer named ``file`` after; None for a file named for no rank."""
    for pattern in _RANK_NAMES:
        if found := pattern.search(file.name):
            return int(found[1])
    return None


def owner(file: Path, world: int) -> int:
    """The rank (of ``world``) that checks ``file``."""
    rank = writer_rank(file)
    return 0 if rank is None else rank % world


def scan_owned(
    path: str | os.PathLike[str], rank: int, world: int, *, device: str = "cpu", limits: HealthLimits | None = None,
    target_dtype: str | None = None,
) -> ScanReport:
    """The judged report of the files of the checkpoint at ``path`` that rank ``rank`` of ``world`` owns.

    Every rank opens the checkpoint (headers and metadata only), so problems that span files (a missing
    ``.distcp`` file, a missing ZeRO rank file) are in every rank's report. ``target_dtype`` as in
    ``nandoctor.scan``: the values of this rank's files that a cast to it would overflow are counted
    (``TensorResult.overflow``; the overflow count is per element, so the ranks' counts add up to a
    single-process scan's). ValueError for an unknown ``target_dtype``."""
    started = time.perf_counter()
    cast_to = target(target_dtype) if target_dtype is not None else None
    limits = limits or HealthLimits()
    checkpoint = open_checkpoint(path)
    mine = {f for f in checkpoint.refs_by_file if owner(f, world) == rank}
    jobs = [job for job in plan_jobs(checkpoint.refs, limits, cast_to) if Path(job.region.file) in mine]
    kernel = select_kernel(device)
    found = scan_jobs(checkpoint, jobs, kernel, limits, None, mine)
    return assemble(str(path), checkpoint, found, kernel.name, time.perf_counter() - started, cast_to, limits)


__all__ = ["owner", "scan_owned", "writer_rank"]
