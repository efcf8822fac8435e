"""The transformers Trainer's arguments a checkpoint folder keeps (``training_args.bin``), read for advice only.

``training_args.bin`` is ``torch.save(TrainingArguments)``: a pickled object, read here by the restricted
unpickler into inert stand-ins (nothing of transformers' runs) for the one setting the advice names, the
run's gradient clipping (``max_grad_norm``: a trial's run clipped at 1e9 and was told "the Trainer's is 1.0 by
default", which it had turned off).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nandoctor.errors import NandoctorError
from nandoctor.fileidentity import FileIdentity, fingerprint

TRAINING_ARGS = "training_args.bin"


def max_grad_norm(folder: Path) -> float | None:
    """The ``max_grad_norm`` the Trainer run that saved ``folder`` used; None where the folder keeps no readable
    ``training_args.bin`` or it holds no number there."""
    path = folder / TRAINING_ARGS
    try:
        return _read(str(path), fingerprint(path)) if path.is_file() else None
    except OSError:
        return None


@lru_cache(maxsize=16)
def _read(path: str, identity: FileIdentity) -> float | None:
    """:func:`max_grad_norm` of the file at ``path``, kept while its ``identity`` holds: one report's advice asks
    for it from several places (its verdict line, its next steps, a run's rows)."""
    del identity  # (part of the cache key only)
    from nandoctor.readers.torch.file import read_object

    try:
        args = read_object(Path(path))
    except (NandoctorError, OSError):
        return None
    state = getattr(args, "state", None)
    value = state.get("max_grad_norm") if isinstance(state, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # (an integer past float's range: as good as no clipping)
        return float("inf")


__all__ = ["TRAINING_ARGS", "max_grad_norm"]
