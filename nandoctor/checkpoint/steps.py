"""A run's checkpoint folders by name: ``checkpoint-N`` (Trainer), ``checkpoint_N`` (accelerate's
``automatic_checkpoint_naming``: N counts saves, not steps, in the same order), ``step-N`` (torchtitan's DCP
saves), ``step_N`` (accelerate's no_trainer examples: ``save_state(f"step_{completed_steps}")``, where it holds a
save), ``iter_NNNNNNN`` (Megatron's ``--save`` folder) or ``global_stepN`` in a DeepSpeed ``save_checkpoint``
folder (not one inside a Trainer's ``checkpoint-N``, where it is that checkpoint's ZeRO state), the step N each
names, and those a run folder holds. The run timeline (runs.py) and the
loadability checks (loadability.py) list a run's checkpoints the same way through here."""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path

from nandoctor import access
from nandoctor.errors import NandoctorError

_CHECKPOINT = re.compile(r"^(?:checkpoint[-_]|step[-_]|iter_)(\d+)$")  # (step_N: accelerate's no_trainer examples)

# DeepSpeed's engine.save_checkpoint(save_dir) writes each save into save_dir/global_stepN/ (its tag) and names the
# newest in save_dir/latest; a Trainer under DeepSpeed saves the same into each checkpoint-N/ (one global_stepN/), and
# its save_model() under ZeRO-3 into the run folder's top, beside the checkpoint-N/ folders.
DEEPSPEED_STATES = re.compile(r"^global_step(\d+)$")
DEEPSPEED_LATEST = "latest"
_TRAINER_FILES = ("trainer_state.json", "config.json")  # (loaders' names; loaders reads the hub cache, which reads steps)
_MAX_TAG_BYTES = 256

# Megatron's --save folder: iter_NNNNNNN/ per save (its step folder above), the newest named by the tracker file, and in
# each a model-parallel rank's model, optimizer and RNG states in mp_rank_TT[_PPP]/ (tensor and pipeline rank), which
# Megatron reads with torch.load(weights_only=False)
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
MEGATRON_RANK = re.compile(r"^mp_rank_\d+(?:_\d+){0,2}$")  # (tensor, pipeline and, with experts, expert rank)
MEGATRON_FILES = ("model_optim_rng.pt", "distrib_optim.pt")
# A tracker holding "release" names the save folder's release/ (a converted or published checkpoint), which Megatron
# loads as iteration 0: a save of the run before every iter_N/ (a --save folder holding only release/ was no run)
MEGATRON_RELEASE = "release"


def step_of(path: Path) -> int | None:
    """The global step N of a folder named ``checkpoint-N`` (torchtitan's ``step-N``, Megatron's ``iter_N``, a
    DeepSpeed save folder's ``global_stepN``: this one lists the folder holding it, once per version of that folder;
    0 for a Megatron save folder's ``release``, which Megatron loads as iteration 0), else None."""
    path = Path(path)
    step = step_of_name(path.name)
    if step is None and DEEPSPEED_STATES.match(path.name) and is_deepspeed_save_folder(path.parent):
        step = step_of_name(path.name, global_steps=True)
    if step is None and path.name == MEGATRON_RELEASE and is_megatron_save_folder(path.parent):
        step = 0
    return step


def step_of_name(name: str, global_steps: bool = False) -> int | None:
    """The step a ``checkpoint-N``/``step-N``/``iter_N`` name gives, from the name alone; a ``global_stepN`` only with
    ``global_steps`` (a step only in a DeepSpeed save folder: :func:`step_of` asks the folder)."""
    match = _CHECKPOINT.match(name) or (DEEPSPEED_STATES.match(name) if global_steps else None)
    return int(match.group(1)) if match else None


def is_deepspeed_save_folder(folder: Path) -> bool:
    """Whether ``folder`` is the ``save_dir`` of DeepSpeed's own ``save_checkpoint``: ``global_stepN/`` saves named
    by ``latest`` (or two of them at least), and not a Trainer's folder: a ``checkpoint-N`` (one holding
    ``trainer_state.json``), whose single ``global_stepN/`` is part of it, or a run folder (checkpoint folders or
    ``config.json`` beside it: ``save_model()`` under ZeRO-3 writes its partitions there). Lists the folder once per
    version of it (its modification time)."""
    folder = Path(folder)
    if _CHECKPOINT.match(folder.name):
        return False
    try:
        found = access.status(folder)
    except NandoctorError:
        return False
    return found is not None and _deepspeed_save_folder(str(folder), found.st_mtime_ns, found.st_ino)


@functools.lru_cache(maxsize=256)
def _deepspeed_save_folder(folder: str, _mtime_ns: int, _inode: int) -> bool:
    try:
        names = {entry.name for entry in access.listing(Path(folder))}
    except NandoctorError:
        return False
    if any(name in names for name in _TRAINER_FILES) or any(_CHECKPOINT.match(name) for name in names):
        return False
    saves = sum(1 for name in names if DEEPSPEED_STATES.match(name))
    return saves >= 2 or (saves == 1 and DEEPSPEED_LATEST in names)


def is_megatron_save_folder(folder: Path) -> bool:
    """Whether ``folder`` is a Megatron ``--save`` folder: it holds the tracker file Megatron's load reads first."""
    return access.is_file(Path(folder) / MEGATRON_TRACKER, refused=True)


def is_megatron_save(path: Path) -> bool:
    """A Megatron save by its name: an ``iter_NNNNNNN`` folder, or ``release`` (of a save folder: :func:`step_of`)."""
    name = Path(path).name
    return (name.startswith("iter_") and step_of_name(name) is not None) or name == MEGATRON_RELEASE


def megatron_tracker_text(save: Path) -> str:
    """What Megatron's tracker holds to name the save folder ``save`` (``iter_0000200``: 200; ``release``: release)."""
    step = step_of_name(Path(save).name)
    return str(step) if step is not None else Path(save).name


def deepspeed_tag(root: Path) -> str | None:
    """The tag DeepSpeed's ``latest`` file in ``root`` names (a folder beside it), or None when there is none."""
    text = _small_text(Path(root) / DEEPSPEED_LATEST)
    tag = text.strip() if text is not None else ""
    return tag if 0 < len(tag) <= _MAX_TAG_BYTES and "/" not in tag and tag not in (".", "..") else None


def _small_text(path: Path) -> str | None:
    """The text of a regular file of at most _MAX_TAG_BYTES (a FIFO named latest would block a read), else None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_TAG_BYTES + 1)
        return raw.decode("utf-8") if len(raw) <= _MAX_TAG_BYTES else None
    except (OSError, UnicodeDecodeError):
        return None


_ACCELERATE = re.compile(r"^checkpoint_\d+$")
ACCELERATE_SAVES = "checkpoints"  # (ProjectConfiguration(automatic_checkpoint_naming=True): project_dir/checkpoints/)


def is_accelerate_save(path: Path) -> bool:
    """A folder of accelerate's ``automatic_checkpoint_naming`` (``project/checkpoints/checkpoint_N``), whose
    ``load_state()`` resumes the folder in ``checkpoints/`` whose name's first number is the largest."""
    return Path(path).parent.name == ACCELERATE_SAVES and _ACCELERATE.match(Path(path).name) is not None


def checkpoints_in(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` folder directly inside ``folder``, steps ascending; for accelerate's
    project folder (none of its own, and a ``checkpoints/`` of ``checkpoint_N`` folders), those in ``checkpoints/``:
    the project is the run, and a model saved beside them (``final_model/``) a row of it (a review: the project folder
    exited 3, pointing at checkpoints/)."""
    entries = access.listing(folder)
    found = _checkpoints_among(folder, entries)
    saves = next((e for e in entries if e.name == ACCELERATE_SAVES), None)
    if found or saves is None or not access.is_dir(saves, refused=False):
        return found
    try:
        inner = access.listing(saves)
    except NandoctorError:
        return []  # (a checkpoints/ no one may list: not taken for a run; the scan of the project says why)
    return [(step, path) for step, path in _checkpoints_among(saves, inner) if is_accelerate_save(path)]


def _checkpoints_among(folder: Path, entries: list[Path]) -> list[tuple[int, Path]]:
    """:func:`checkpoints_in` of ``folder`` itself, whose listing is ``entries``."""
    found = []
    deepspeed = any(DEEPSPEED_STATES.match(e.name) for e in entries) and is_deepspeed_save_folder(folder)
    megatron = any(e.name == MEGATRON_TRACKER for e in entries)
    for entry in entries:
        step = 0 if megatron and entry.name == MEGATRON_RELEASE else step_of_name(entry.name, deepspeed)
        if step is not None and access.is_dir(entry, refused=True):  # (a link it may not follow: its row says so)
            if entry.name.startswith("step_") and not _holds_a_save(entry):
                continue  # (a loop's per-step samples or eval outputs, step_200/generations.json: no save, no row)
            found.append((step, entry))
    return sorted(found)


_SAVE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".distcp")


def _holds_a_save(folder: Path) -> bool:
    """Whether a ``step_N`` folder holds what accelerate's save_state writes (weights, optimizer or random states, a
    DCP checkpoint): the name alone is also what a training loop gives its per-step samples (a review's Trainer run
    with step_200/generations.json beside its checkpoints exited 3, INCOMPLETE)."""
    try:
        return any(e.name.endswith(_SAVE_SUFFIXES) or e.name == ".metadata" for e in access.listing(folder))
    except NandoctorError:
        return True  # (one it may not list: its row says why)


def pointer_problem(folder: Path, saves: set[str]) -> str | None:
    """Why the run folder's resume pointer (DeepSpeed's ``latest`` in a DeepSpeed save folder, Megatron's tracker)
    names no save of the run (``saves``: their folder names), or None: a name that is not there, or no name at all
    (an adversarial round: latest naming a missing global_step400 passed, and DeepSpeed's load_checkpoint then loads
    nothing, silently, and training starts from scratch; Megatron's load exits on it)."""
    folder = Path(folder)
    if (folder / DEEPSPEED_LATEST).exists() and is_deepspeed_save_folder(folder):
        tag = deepspeed_tag(folder)
        if tag is None or (tag not in saves and not (folder / tag).is_dir()):  # (a custom tag: save_checkpoint(tag=…))
            said = f"names {tag}, which is not here" if tag is not None else "names no save (empty, or not text)"
            return (f"{DEEPSPEED_LATEST} {said}: DeepSpeed's load_checkpoint finds nothing to load, says so in a log "
                    "line and training starts from scratch")
    if (folder / MEGATRON_TRACKER).exists() and any(name.startswith("iter_") or name == MEGATRON_RELEASE
                                                           for name in saves):
        text = _small_text(folder / MEGATRON_TRACKER)
        iteration = text.strip() if text is not None else ""
        if not (iteration.isdigit() or iteration == MEGATRON_RELEASE):
            return (f"{MEGATRON_TRACKER} holds {iteration[:20]!r}, not an iteration: Megatron's load of this folder "
                    "exits on it")
        named = iteration if iteration == MEGATRON_RELEASE else f"iter_{int(iteration):07d}"
        if named not in saves and not (folder / named).is_dir():
            return f"{MEGATRON_TRACKER} names {named}, which is not here: Megatron's load of this folder fails"
    return None


POINTER_HINT = "write the save to resume from into that file (the newest healthy one: see the timeline)"


def resume_pointer(folder: Path) -> tuple[str, str] | None:
    """(the file, the save it names) where a run folder names the save its framework resumes: DeepSpeed's ``latest``
    (a tag, ``global_step200``) in a DeepSpeed save folder, Megatron's ``latest_checkpointed_iteration.txt`` (an
    iteration, ``200``: ``iter_0000200``, or ``release``); None for any other folder, or a file that names none."""
    folder = Path(folder)
    tag = deepspeed_tag(folder)
    if tag is not None and DEEPSPEED_STATES.match(tag) and is_deepspeed_save_folder(folder):
        return DEEPSPEED_LATEST, tag
    text = _small_text(folder / MEGATRON_TRACKER)
    iteration = text.strip() if text is not None else ""
    if iteration.isdigit() or iteration == MEGATRON_RELEASE:
        return MEGATRON_TRACKER, iteration if iteration == MEGATRON_RELEASE else f"iter_{int(iteration):07d}"
    return None


__all__ = [
    "ACCELERATE_SAVES",
    "DEEPSPEED_LATEST",
    "DEEPSPEED_STATES",
    "MEGATRON_FILES",
    "MEGATRON_RANK",
    "MEGATRON_RELEASE",
    "MEGATRON_TRACKER",
    "POINTER_HINT",
    "checkpoints_in",
    "deepspeed_tag",
    "is_accelerate_save",
    "is_deepspeed_save_folder",
    "is_megatron_save",
    "is_megatron_save_folder",
    "megatron_tracker_text",
    "pointer_problem",
    "resume_pointer",
    "step_of",
    "step_of_name",
]
