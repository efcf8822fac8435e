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
    """The ``nandoctor repair`` line that fixes ``report``'s checkpoint (with the scan's ``--only``/``--exclude``)."""
    return repair_command_for(report.target, selection=selection_args(report))


def selection_args(report: ScanReport) -> str:
    """The ``--only``/``--exclude`` options ``report`` was scanned with, quoted, so that the repair it suggests
    judges the same tensors (without them it would refuse over a tensor the scan left out)."""
    excluded = report.extra.get("excluded")
    if not isinstance(excluded, dict):
        return ""
    options = [("--only", p) for p in excluded.get("only", ())] + [("--exclude", p) for p in excluded.get("exclude", ())]
    return "".join(f" {option} {shlex.quote(pattern)}" for option, pattern in options)


def repair_command_for(target: str, donor: str | None = None, selection: str = "") -> str:
    """The ``nandoctor repair`` line for the checkpoint at ``target``, quoted for a POSIX shell.

    ``donor``: a healthy checkpoint the caller knows of; else ``auto`` for a checkpoint of a run
    (a ``checkpoint-N`` folder, a Lightning ``…step=N….ckpt`` file beside others), else a placeholder.
    ``selection``: options to add (:func:`selection_args`). ``--out`` is always a name that is still
    free: repair refuses an existing one.
    """
    target = target.rstrip("/") or target
    if donor is None:
        in_run = runs.place_in_run(Path(target)) is not None
        donor = "auto" if in_run else "<earlier clean checkpoint>"  # placeholders: for the user to fill in
        donor_arg = donor
    else:
        donor_arg = shlex.quote(donor)
    if hubcache.is_snapshot(target):  # never suggest writing into the cache: a folder here, named after the model
        out = shlex.quote(_free(Path(Path(os.path.abspath(target)).parent.parent.name.split("--")[-1] + "-repaired")))
    elif Path(target).is_dir():
        out = shlex.quote(_free(Path(f"{target}-repaired")))
    elif Path(target).is_file():  # a single file (a Lightning .ckpt): a new folder beside it, named after it
        out = shlex.quote(_free(Path(target).with_name(Path(target).stem + "-repaired")))
    else:
        out = "<new folder>"
    return f"nandoctor repair {shlex.quote(target)} --from {donor_arg}{selection} --out {out}"


def _free(path: Path) -> str:
    """``path``, or ``path-2``, ``path-3``… when it exists already (repair never writes into an existing --out)."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return str(candidate)
