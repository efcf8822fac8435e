"""A run's checkpoint folders by name: ``checkpoint-N`` (Trainer), ``checkpoint_N`` (accelerate's
``automatic_checkpoint_naming``: N counts saves, not steps, in the same order) or ``step-N`` (torchtitan's DCP
saves), the step N each names, and those a run folder holds. The run timeline (runs.py) and the
loadability checks (loadability.py) list a run's checkpoints the same way through here."""

from __future__ import annotations

import re
from pathlib import Path

from nandoctor import access

_CHECKPOINT = re.compile(r"^(?:checkpoint[-_]|step-)(\d+)$")


def step_of(path: Path) -> int | None:
    """The global step N of a folder named ``checkpoint-N`` (or torchtitan's ``step-N``), else None."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


_ACCELERATE = re.compile(r"^checkpoint_\d+$")


def is_accelerate_save(path: Path) -> bool:
    """A folder of accelerate's ``automatic_checkpoint_naming`` (``project/checkpoints/checkpoint_N``), whose
    ``load_state()`` resumes the folder in ``checkpoints/`` whose name's first number is the largest."""
    return Path(path).parent.name == "checkpoints" and _ACCELERATE.match(Path(path).name) is not None


def checkpoints_in(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` folder directly inside ``folder``, steps ascending."""
    found = []
    for entry in access.listing(folder):
        step = step_of(entry)
        if step is not None and access.is_dir(entry, refused=True):  # (a link it may not follow: its row says so)
            found.append((step, entry))
    return sorted(found)


__all__ = ["checkpoints_in", "is_accelerate_save", "step_of"]
