"""What the Lightning training callback judged a save with, kept beside the step files for a later scan.

``NanDoctorCallback`` (integrations/lightning.py) judges each ``.ckpt`` within its run (runcontext.py). Where no
logger writes a ``metrics.csv`` beside the checkpoints (Lightning's default TensorBoard logger, a ``CSVLogger`` in
a folder of its own), its trainer log is the ``training_step`` losses the callback saw itself (:data:`LIVE_LOG`).
Those lived in the process only: ``nandoctor scan`` of the same bytes afterwards had no log, so nothing said the
loss never came down, the step-0 weights were no baseline, and a run the callback had stopped as DIVERGED scanned
PASS CLEAN (a trial at lr 1e2: eval loss 6,804 where an untrained model scores 4.85). So the callback writes them
into its ``nandoctor.json`` (``losses``: step of the weights that computed it → loss; NaN and ±Inf as the strings
``"nan"``, ``"inf"``, ``"-inf"``, which JSON cannot hold) *before* it judges each save, and :func:`lightning_log`
reads them back as the run's log where no ``metrics.csv`` is found: the scan judges the same bytes from the same
evidence by the same rules. It never takes the recorded verdict itself on trust (anyone can write a JSON file; a
file replaced since is judged as it is now).

Those files also say the folder is a run: one Lightning step file alone is a single checkpoint to a scan, so the
callback's first save was judged with no run context (no step-0 baseline, no loss) and passed CLEAN, while the
``last.ckpt`` written right after it, the same weights, was judged in the run and DIVERGED. A folder where the
callback's files lie (:func:`callback_files`) is a run from its first step file on (stepfiles.step_folder), for the
callback and for every later scan alike.

Read as nandoctor's own files are (jsonfiles.read_json: no link followed, bounded); a value that is no step or no
loss is left out. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.trainlog import MetricsTable, metrics_near

REPORT_NAME = "nandoctor.json"  # the training callbacks' verdicts (integrations/gate.py)
LOSSES = "losses"  # its key holding the Lightning callback's training losses
SOURCE = "training_step loss"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_STEP = re.compile(r"[0-9]{1,18}")

# The losses the callback is judging with now (a MetricsTable), set while it judges a save it just wrote: the same as
# it wrote into nandoctor.json, and what it judges with where it writes no nandoctor.json (write_report=False)
LIVE_LOG: ContextVar[Any] = ContextVar("nandoctor_live_log", default=None)


def losses_table(losses: Mapping[int, Mapping[str, float]], source: str = SOURCE) -> MetricsTable:
    """The callback's losses (step → ``{"loss": value}``) as a trainer log table."""
    return MetricsTable(source, losses, "loss", None)


def losses_json(losses: Mapping[int, Mapping[str, float]]) -> dict[str, float | str]:
    """The callback's losses as ``nandoctor.json`` holds them (JSON keys are strings; NaN/Inf as words)."""
    return {str(step): value if math.isfinite(value) else str(value)
            for step, row in sorted(losses.items()) if isinstance(value := row.get("loss"), float)}


def read_losses(folder: Path) -> dict[int, dict[str, float]]:
    """The losses a callback kept in ``folder``'s ``nandoctor.json`` (step → ``{"loss": value}``); {} without."""
    from nandoctor.checkpoint.jsonfiles import number, read_json

    try:
        data = read_json(Path(folder) / REPORT_NAME, follow_links=False)
    except (OSError, ValueError):
        return {}
    kept = data.get(LOSSES) if isinstance(data, dict) else None
    rows: dict[int, dict[str, float]] = {}
    for step, value in kept.items() if isinstance(kept, dict) else ():
        loss = _NON_FINITE.get(value) if isinstance(value, str) else number(value)
        if isinstance(step, str) and _STEP.fullmatch(step) and loss is not None:
            rows[int(step)] = {"loss": loss}
    return rows


def lightning_log(folder: Path, csv_near: Path | None = None) -> MetricsTable | None:
    """The trainer log of the Lightning run whose step files lie in ``folder``: its ``metrics.csv`` (near
    ``csv_near``, default ``folder``: trainlog.metrics_csv_near), else the losses a callback is judging with now
    (:data:`LIVE_LOG`), else those it kept in ``folder``'s ``nandoctor.json``; None without any."""
    found = metrics_near(Path(folder) if csv_near is None else csv_near)
    if found is not None:
        return with_start_loss(found, folder)
    live = LIVE_LOG.get()
    if live is not None:
        return live
    kept = read_losses(folder)
    return losses_table(kept, f"{Path(folder) / REPORT_NAME}, the {SOURCE}es the callback saw") if kept else None


def kept_start_loss(folder: Path) -> float | None:
    """The initial weights' own training loss (step 0's batch, before any update) a Lightning callback kept in
    ``folder``: the baseline's ``start_loss`` (baseline.py), else step 0 of its ``nandoctor.json`` losses; None."""
    from nandoctor.checkpoint.baseline import INITIAL_WEIGHTS, read_baseline

    kept = read_baseline(Path(folder))
    if kept is not None and kept.checkpoint == INITIAL_WEIGHTS and kept.start_loss is not None:
        return kept.start_loss
    start = read_losses(Path(folder)).get(0, {}).get("loss")
    return start if start is not None and math.isfinite(start) and start > 0 else None


def with_start_loss(table: MetricsTable, folder: Path) -> MetricsTable:
    """``table`` (a run's metrics.csv) with the start loss the callback kept in ``folder`` (:func:`kept_start_loss`)
    as its step-0 row, where it logs none: Lightning logs its first row after ``log_every_n_steps`` updates, and a run
    whose learning rate warmed up too high had already left its start there (a trial at lr 2: 4.85 at step 0, 10.7 at
    step 1, 17.5 at step 3): its early loss, measured from the logged rows alone, was 17.5, the jump to 53.7 at the
    first save passed under it, and the run scan named that save its last healthy checkpoint where the callback, which
    judged from step 0, had named none. The run scan and the callback judge from the same start."""
    if table.error or table.loss_key is None or any(step <= 0 for step in table.rows):
        return table
    start = kept_start_loss(folder)
    if start is None:
        return table
    return dataclasses.replace(table, rows={0: {table.loss_key: start}, **table.rows})


def callback_files(entries: Iterable[Path]) -> bool:
    """Whether a folder's ``entries`` hold a training callback's files (its verdicts, or the run's baseline): the
    folder is a ``ModelCheckpoint``'s, its step files one run's."""
    from nandoctor.checkpoint.baseline import BASELINE_NAME

    return any(entry.name in (REPORT_NAME, BASELINE_NAME) for entry in entries)


__all__ = ["LIVE_LOG", "LOSSES", "REPORT_NAME", "callback_files", "kept_start_loss", "lightning_log", "losses_json",
           "losses_table", "read_losses", "with_start_loss"]
