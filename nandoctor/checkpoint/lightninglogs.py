"""Lightning's logger folders: where ModelCheckpoint saves without a dirpath (``lightning_logs/version_N/checkpoints``),
told by the logger's files beside it. The layout (layout.py) and the step-file runs (stepfiles.py) both read it."""

from __future__ import annotations

from pathlib import Path

from nandoctor import access
from nandoctor.checkpoint.trainlog import METRICS_CSV

# Where ModelCheckpoint saves without a dirpath (trainer.log_dir/checkpoints), and what a logger writes beside it in
# its version folder (CSVLogger: both; TensorBoardLogger: hparams.yaml)
LIGHTNING_SAVES = "checkpoints"
LOGGER_FILES = frozenset({METRICS_CSV, "hparams.yaml"})


def version_saves(folder: Path, entries: list[Path]) -> Path | None:
    """The ``checkpoints/`` of a Lightning logger's version folder ``folder`` (listed as ``entries``): a folder
    holding a logger's files beside it; None for any other folder. (A trial: ``lightning_logs/version_0``, the
    default layout, exited 3 as UNREADABLE, "subfolder(s) hold weights: checkpoints/", its files healthy.)"""
    names = {e.name for e in entries}
    if LIGHTNING_SAVES not in names or not names & LOGGER_FILES:
        return None
    saves = Path(folder) / LIGHTNING_SAVES
    return saves if access.is_dir(saves, refused=False) else None


__all__ = ["LIGHTNING_SAVES", "LOGGER_FILES", "version_saves"]
