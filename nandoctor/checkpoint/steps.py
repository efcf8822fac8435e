"""A run's checkpoint folders by name: ``checkpoint-N`` (Trainer), ``checkpoint_N`` (accelerate's
``automatic_checkpoint_naming``: N counts saves, not steps, in the same order), ``step-N`` (torchtitan's DCP
saves), ``iter_NNNNNNN`` (Megatron's ``--save`` folder) or ``global_stepN`` in a DeepSpeed ``save_checkpoint``
folder (not one inside a Trainer's ``checkpoint-N``, where it is that checkpoint's ZeRO state), the step N each
names, and those a run folder holds. The run timeline (runs.py) and the
loadability checks (loadability.py) list a run's checkpoints the same way through here."""

from __future__ import annotations

import re
from pathlib import Path

from nandoctor import access
from nandoctor.errors import NandoctorError

_CHECKPOINT = re.compile(r"^(?:checkpoint[-_]|step-|iter_)(\d+)$")

# DeepSpeed's engine.save_checkpoint(save_dir) writes each save into save_dir/global_stepN/ (its tag) and names the
# newest in save_dir/latest; a Trainer under DeepSpeed saves the same into each checkpoint-N/ (one global_stepN/).
DEEPSPEED_STATES = re.compile(r"^global_step(\d+)$")
DEEPSPEED_LATEST = "latest"
_TRAINER_STATE = "trainer_state.json"  # (loaders.TRAINER_STATE; loaders reads the hub cache, which reads steps)


def step_of(path: Path) -> int | None:
    """The global step N of a folder named ``checkpoint-N`` (torchtitan's ``step-N``, Megatron's ``iter_N``, a
    DeepSpeed save folder's ``global_stepN``), else None."""
    path = Path(path)
    match = _CHECKPOINT.match(path.name)
    if match:
        return int(match.group(1))
    match = DEEPSPEED_STATES.match(path.name)
    return int(match.group(1)) if match and is_deepspeed_save_folder(path.parent) else None


def is_deepspeed_save_folder(folder: Path) -> bool:
    """Whether ``folder`` is the ``save_dir`` of DeepSpeed's own ``save_checkpoint``: ``global_stepN/`` saves named
    by ``latest`` (or two of them at least), and not a Trainer checkpoint (a ``checkpoint-N`` folder, one holding
    ``trainer_state.json``), whose single ``global_stepN/`` is part of it."""
    folder = Path(folder)
    if _CHECKPOINT.match(folder.name):
        return False
    try:
        names = {entry.name for entry in access.listing(folder)}
    except NandoctorError:
        return False
    if _TRAINER_STATE in names:
        return False
    saves = sum(1 for name in names if DEEPSPEED_STATES.match(name))
    return saves >= 2 or (saves == 1 and DEEPSPEED_LATEST in names)


_ACCELERATE = re.compile(r"^checkpoint_\d+$")


def is_accelerate_save(path: Path) -> bool:
    """A folder of accelerate's ``automatic_checkpoint_naming`` (``project/checkpoints/checkpoint_N``), whose
    ``load_state()`` resumes the folder in ``checkpoints/`` whose name's first number is the largest."""
    return Path(path).parent.name == "checkpoints" and _ACCELERATE.match(Path(path).name) is not None


def checkpoints_in(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` folder directly inside ``folder``, steps ascending."""
    found = []
    entries = access.listing(folder)
    deepspeed = any(DEEPSPEED_STATES.match(e.name) for e in entries) and is_deepspeed_save_folder(folder)
    for entry in entries:
        match = DEEPSPEED_STATES.match(entry.name) if deepspeed else None
        step = int(match.group(1)) if match else _step_of_name(entry.name)
        if step is not None and access.is_dir(entry, refused=True):  # (a link it may not follow: its row says so)
            found.append((step, entry))
    return sorted(found)


MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
_MAX_POINTER_BYTES = 256


def resume_pointer(folder: Path) -> tuple[str, str] | None:
    """(the file, the save it names) where a run folder names the save its framework resumes: DeepSpeed's ``latest``
    (a tag, ``global_step200``) in a DeepSpeed save folder, Megatron's ``latest_checkpointed_iteration.txt`` (an
    iteration, ``200``: ``iter_0000200``, or ``release``); None for any other folder, or a file that names none."""
    folder = Path(folder)
    for name in (DEEPSPEED_LATEST, MEGATRON_TRACKER):
        path = folder / name
        try:
            if not path.is_file() or path.stat().st_size > _MAX_POINTER_BYTES:  # (a FIFO is no file: never waited on)
                continue
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name == DEEPSPEED_LATEST and DEEPSPEED_STATES.match(text) and is_deepspeed_save_folder(folder):
            return name, text
        if name == MEGATRON_TRACKER and (text.isdigit() or text == "release"):
            return name, text if text == "release" else f"iter_{int(text):07d}"
    return None


def _step_of_name(name: str) -> int | None:
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


__all__ = [
    "DEEPSPEED_LATEST",
    "DEEPSPEED_STATES",
    "MEGATRON_TRACKER",
    "checkpoints_in",
    "is_accelerate_save",
    "is_deepspeed_save_folder",
    "resume_pointer",
    "step_of",
]
