"""The next command to run, as text: what a report suggests once it has found something.

Quoted for a POSIX shell so that it pastes as one line; placeholders in angle
brackets where only the user knows the answer.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from nandoctor.checkpoint import hubcache, runs
from nandoctor.model import ScanReport


def repair_command(report: ScanReport) -> str:
    """The ``nandoctor repair`` line that fixes ``report``'s checkpoint."""
    return repair_command_for(report.target)


def repair_command_for(target: str) -> str:
    """The ``nandoctor repair`` line for the checkpoint at ``target``, quoted for a POSIX shell."""
    target = target.rstrip("/") or target
    in_run = runs.step_of(Path(target)) is not None
    donor = "auto" if in_run else "<earlier clean checkpoint>"  # placeholders: for the user to fill in
    if hubcache.is_snapshot(target):  # never suggest writing into the cache: a folder here, named after the model
        out = shlex.quote(Path(os.path.abspath(target)).parent.parent.name.split("--")[-1] + "-repaired")
    else:
        out = shlex.quote(f"{target}-repaired") if Path(target).is_dir() else "<new folder>"
    return f"nandoctor repair {shlex.quote(target)} --from {donor} --out {out}"
