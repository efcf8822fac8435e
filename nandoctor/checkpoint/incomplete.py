"""Half-written saves: why a checkpoint folder (or a single ``.ckpt`` file) looks unfinished.

Used by the run timeline (checkpoint/runs.py), by a checkpoint judged in its run
(checkpoint/runcontext.py) and for a run's final model (checkpoint/finalmodel.py).
"""

from __future__ import annotations

import stat
from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint.loaders import TRAINER_STATE
from nandoctor.checkpoint.megatron import missing_ranks
from nandoctor.checkpoint.trainlog import unresumable
from nandoctor.errors import UnreadablePathError

# Names writers use for files still being written; their presence means the save did not finish.
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".incomplete", ".lock")
_TEMP_PREFIXES = ("tmp", ".tmp")


def incomplete_reasons(folder: Path, expect_trainer_state: bool, *, files_only: bool = False,
                       expect_ranks: frozenset[str] = frozenset()) -> list[str]:
    """Why a checkpoint (a folder, or a single ``.ckpt`` file) looks half-written; empty when it does not.

    ``files_only``: only files count as temporary (a run's final model shares its folder with the run's
    own ``tmp-checkpoint-N`` folders, which are the timeline's business, not the final model's).
    ``expect_ranks``: Megatron model-parallel rank folders the run's other iterations hold (megatron.rank_folders).
    """
    try:
        is_folder = access.is_dir(folder)
    except UnreadablePathError:
        return []  # not to be looked at: its scan reports it unreadable, not as a half-written save
    if not is_folder:
        return _incomplete_file_reasons(folder)
    return _incomplete_folder_reasons(folder, expect_trainer_state, files_only, expect_ranks)


def _incomplete_folder_reasons(folder: Path, expect_trainer_state: bool, files_only: bool = False,
                               expect_ranks: frozenset[str] = frozenset()) -> list[str]:
    from nandoctor.checkpoint.layout import INDEX_NAMES, model_in_subfolder, read_index, weight_suffixes
    from nandoctor.checkpoint.loadability import state_only
    from nandoctor.errors import CorruptCheckpointError

    reasons = []
    try:
        entries = access.listing(folder)
    except UnreadablePathError:
        return []  # not a half-written save as far as anyone can tell: its scan reports it unreadable
    temp = [
        e.name for e in entries
        if (e.name.lower().endswith(_TEMP_SUFFIXES) or e.name.lower().startswith(_TEMP_PREFIXES))
        and not (files_only and access.is_dir(e, refused=False))
    ]
    if temp:
        reasons.append(f"temporary files still present: {', '.join(temp[:3])}" + (" …" if len(temp) > 3 else ""))
    suffixes = weight_suffixes()
    weights = [e for e in entries if e.suffix.lower() in suffixes and e.name not in temp]
    indexes = [folder / n for n in INDEX_NAMES if access.is_file(folder / n, refused=True)]  # (unreadable: skipped below)
    if not weights and not indexes and not model_in_subfolder(folder, entries):
        reasons.append("no weight files")
    state = state_only(entries)
    if state:  # the model file went missing: nothing of the model to resume or load from
        reasons.append(f"no model weights, only trainer state ({', '.join(state[:3])}{' …' if len(state) > 3 else ''})")
    empty = [w.name for w in weights if _empty(w)]
    if empty:
        reasons.append(f"empty weight file(s): {', '.join(empty[:3])}")
    for index_path in indexes:
        try:
            index = read_index(index_path)
        except CorruptCheckpointError:
            continue  # the scan reports a broken index as unreadable
        missing = sorted(s for s in set(index.weight_map.values()) if _missing(folder / s))  # a probe per shard, not per tensor
        if missing:
            reasons.append(f"{len(missing)} shard(s) listed in {index_path.name} are missing (e.g. {missing[0]})")
    if expect_trainer_state and _missing(folder / TRAINER_STATE):
        reasons.append(f"no {TRAINER_STATE} (the other checkpoints have one; Trainer writes it after the weights)")
    elif (resume := unresumable(folder / TRAINER_STATE)) is not None:
        # (resume_from_checkpoint reads it with TrainerState.load_from_json: an adversarial round's half-written one
        # read CLEAN, and the resume raised JSONDecodeError; one of {} and one with an extra key, TypeError)
        reasons.append(f"{TRAINER_STATE} {resume.words}; {resume.fix}")
    # (an adversarial round: mp_rank_01/ gone from iter_0000300 passed CLEAN, and Megatron's load of that rank raises
    # FileNotFoundError; a review: the newest iteration resharded to fewer ranks read INCOMPLETE by its neighbours, and
    # one iteration alone lacking its last rank, no neighbour to tell, read CLEAN: its own args say which it holds)
    lacking = missing_ranks(folder, entries, expect_ranks)
    return reasons + ([lacking.words] if lacking is not None else [])


def _incomplete_file_reasons(file: Path) -> list[str]:
    """Why a single-file checkpoint (a Lightning ``.ckpt``) looks half-written."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        return [f"cannot read: {exc.strerror or exc}"]
    return ["an empty file"] if size == 0 else []


def _empty(path: Path) -> bool:
    """Whether ``path`` is an empty file; False where the file system will not say (its scan reports that)."""
    try:
        found = access.status(path)
    except UnreadablePathError:
        return False
    return found is not None and stat.S_ISREG(found.st_mode) and found.st_size == 0


def _missing(path: Path) -> bool:
    """Whether ``path`` is not there; False where the file system will not say (its scan reports that)."""
    try:
        return not access.exists(path)
    except UnreadablePathError:
        return False
