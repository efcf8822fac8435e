"""Whether Trainer can resume from a ``trainer_state.json``: its keys and the values a resume uses, checked statically.

``Trainer.train(resume_from_checkpoint=...)`` reads the file first, as ``TrainerState(**json.load(f))``
(``TrainerState.load_from_json``): a key that is no field of the dataclass raises ``TypeError: unexpected keyword
argument``. It then divides ``train_batch_size`` by the GPU count (``compare_trainer_and_checkpoint_args``: missing
or null, ``TypeError``), counts the epochs and steps already done from ``global_step`` (missing: the resume restarts
the schedule at step 0), restores ``stateful_callbacks`` and appends to ``log_history``. An adversarial round: a
checkpoint whose trainer_state.json was ``{}``, and one with an extra key, were named the run's last healthy
checkpoint and its resume point, and both resumes raised.

The fields are a static list (nandoctor does not import transformers to scan): tests/test_trainer_state_resume.py
checks it against the installed ``TrainerState`` and a real Trainer run's files. A key the list lacks is asked of the
installed transformers before it is called unknown: a newer version's new field is no fault of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nandoctor.wording import first_few

# TrainerState's dataclass fields (transformers 4.x to 5.x: fields were added, none removed)
FIELDS = frozenset({
    "epoch", "global_step", "max_steps", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
    "num_train_epochs", "num_input_tokens_seen", "total_flos", "log_history", "best_metric", "best_global_step",
    "best_model_checkpoint", "is_local_process_zero", "is_world_process_zero", "is_hyper_param_search", "trial_name",
    "trial_params", "stateful_callbacks",
})
_INT, _NUMBER, _LIST, _OBJECT, _TEXT, _NULL = "an integer", "a number", "a list", "an object", "a string", "null"
_TYPES: dict[str, type | tuple[type, ...]] = {_INT: int, _NUMBER: (int, float), _LIST: list, _OBJECT: dict, _TEXT: str}
# What a resume does with each value it uses (the others it overwrites, or uses only for hyperparameter search):
# the JSON values that work there
_USED: dict[str, tuple[str, ...]] = {
    "global_step": (_INT,),  # the epochs and steps already done (global_step // steps per epoch)
    "train_batch_size": (_INT,),  # compare_trainer_and_checkpoint_args: train_batch_size // n_gpu
    "log_history": (_LIST, _NULL),  # appended to at the next log
    "stateful_callbacks": (_OBJECT, _NULL),  # .items() of it restores the callbacks (a list raises in __post_init__)
    "best_model_checkpoint": (_TEXT, _NULL),  # os.path.isdir of it
    "best_metric": (_NUMBER, _NULL),  # compared with the next eval's metric
    "total_flos": (_NUMBER,),  # added to at every log
    "num_input_tokens_seen": (_NUMBER,),  # added to with include_num_input_tokens_seen
}
# Values a resume needs, which the dataclass's defaults do not give (train_batch_size None breaks the resume,
# global_step 0 restarts its schedule), each with the key that says the file's writer wrote it: every Trainer writes
# global_step; train_batch_size came after the first Trainers (transformers 4.2x), before stateful_callbacks (4.4x).
# A file without stateful_callbacks may be an old Trainer's, which had no train_batch_size: not told from one edited
_REQUIRED: dict[str, str | None] = {"train_batch_size": "stateful_callbacks", "global_step": None}


_FAILS = "Trainer's resume_from_checkpoint fails on it"


@dataclass(frozen=True)
class ResumeProblem:
    """Why Trainer cannot resume from a trainer_state.json (``TrainerState.load_from_json``, or the resume after it)."""

    key: str  # the key at fault ("" for the file as a whole)
    words: str  # what is wrong and what a resume does with it, for "trainer_state.json <words>"
    fix: str  # what to do about it


def resume_problem(state: Mapping[str, Any]) -> ResumeProblem | None:
    """The first reason Trainer cannot resume from the parsed trainer_state.json ``state``: a key TrainerState has no
    field for, a value the resume needs that is missing or null, or one of a type the resume cannot use; None when it
    resumes."""
    unknown = sorted(k for k in state if k not in FIELDS)
    if unknown and (installed := _installed_fields()) is not None:
        unknown = [k for k in unknown if k not in installed]  # (a field of a newer transformers than the list knows)
    if unknown:
        keys = first_few(unknown, 3, quoted=True)
        return ResumeProblem(
            unknown[0], f"has {'keys' if len(unknown) > 1 else 'a key'} TrainerState has no field for ({keys}): {_FAILS} "
            "(TrainerState.load_from_json raises \"unexpected keyword argument\")",
            f"delete {keys} from it (a key of a newer transformers: resume with that version), or resume from an "
            "earlier checkpoint")
    for key, written_with in _REQUIRED.items():
        if state.get(key) is None and (key in state or written_with is None or written_with in state):
            how = "missing" if key not in state else "null"
            if key == "train_batch_size":
                return ResumeProblem(key, f"has no {key!r} ({how}): {_FAILS} (it divides the batch size the run was "
                                          "saved with by the GPU count: TypeError)",
                                     f"set {key!r} to the run's per-device batch size times its GPU count, or resume "
                                     "from an earlier checkpoint")
            return ResumeProblem(key, f"has no {key!r} ({how}): Trainer's resume_from_checkpoint counts the steps done "
                                      "from it, and would start the run's schedule and data over at step 0",
                                 f"set {key!r} to the checkpoint's step, or resume from an earlier checkpoint")
    for key, kinds in _USED.items():
        if key in state and not any(_fits(state[key], kind) for kind in kinds):
            return ResumeProblem(
                key, f"holds {_kind(state[key])} for {key!r}, where Trainer's resume_from_checkpoint needs "
                f"{' or '.join(kinds)}",
                f"set {key!r} to {' or '.join(kinds)}, or resume from an earlier checkpoint")
    return None


@lru_cache(maxsize=1)
def _installed_fields() -> frozenset[str] | None:
    """The installed transformers' TrainerState fields, asked only where a file holds a key :data:`FIELDS` lacks (the
    import costs a second or two): the resume would run with that version, which may know a field added after the
    list was written; None without transformers."""
    try:
        import dataclasses

        from transformers.trainer_callback import TrainerState
    except Exception:  # noqa: BLE001 - no transformers, or one that fails to import: the static list decides
        return None
    return frozenset(f.name for f in dataclasses.fields(TrainerState))


def _fits(value: Any, kind: str) -> bool:
    """Whether a parsed JSON value is of ``kind`` (a boolean is no number, and a float no integer: Trainer writes the
    step and the batch size as integers)."""
    if kind == _NULL:
        return value is None
    if isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def _kind(value: Any) -> str:
    """The JSON kind of a parsed value, for a message."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a fractional number"
    return next((kind for kind in (_NULL, _INT, _LIST, _OBJECT, _TEXT) if _fits(value, kind)), type(value).__name__)
