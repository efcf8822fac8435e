"""A run's growth baseline, kept beside its checkpoints so that rotation cannot take it away.

A checkpoint is diverged when the bulk of a weight tensor grew ``GROWTH_DIVERGED``
times since the run's *first healthy checkpoint* (verdict.growth). That
checkpoint is usually the first one saved, and ``save_total_limit`` /
``save_top_k`` rotation deletes it first: measured against the oldest checkpoint
left, a run drifting a few times per save never looks diverged, and the training
callbacks kept (and protected) checkpoints whose loss was 10^4 times the start.

So the callbacks (integrations/gate.py) write the first healthy checkpoint's
per-tensor scales into ``<run>/nandoctor-baseline.json`` when they first see it,
and the run scan and a checkpoint judged in its run (runs.py, runcontext.py) take
them from there when that checkpoint is gone. A baseline saved at a later step
than a checkpoint now on disk is never used (a run restarted from scratch in
the same folder replaces it at its first save, and without the callback its first
logged loss tells the runs apart); tensors it does not name are not compared
(another model's baseline compares nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE_NAME = "nandoctor-baseline.json"


@dataclass(frozen=True)
class RunBaseline:
    """The run's first healthy checkpoint as growth needs it: its step, its name in the run folder, its
    largest weight and every weight tensor's scale (verdict.tensor_scales)."""

    step: int
    checkpoint: str
    max_abs: float | None
    scales: dict[str, float]
    first_loss: tuple[int, float] | None = None  # the run's first logged loss (trainer_state.json): whose run it is

    def to_json(self) -> dict[str, Any]:
        return {"format": "nandoctor-baseline/1", "step": self.step, "checkpoint": self.checkpoint,
                "max_abs": self.max_abs, "scales": self.scales,
                "first_loss": None if self.first_loss is None else list(self.first_loss)}


def first_loss(checkpoint: Path) -> tuple[int, float] | None:
    """(step, loss) of the first loss a Trainer checkpoint's trainer_state.json logged: the same in every checkpoint
    of one run (log_history keeps the run's whole log), another value in a run started again from scratch."""
    from nandoctor.checkpoint.jsonfiles import read_json
    from nandoctor.checkpoint.loaders import TRAINER_STATE

    try:
        history = read_json(Path(checkpoint) / TRAINER_STATE).get("log_history")
    except (OSError, ValueError, AttributeError):
        return None
    for entry in history if isinstance(history, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and _finite_number(entry.get("loss")):
            return entry["step"], float(entry["loss"])
    return None


def read_baseline(run: Path) -> RunBaseline | None:
    """The baseline kept in ``run``; None when there is none or it is not one this module wrote."""
    from nandoctor.checkpoint.jsonfiles import read_json

    try:
        data = read_json(Path(run) / BASELINE_NAME)  # (bounded; a FIFO planted there does not block)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != "nandoctor-baseline/1":
        return None
    step, checkpoint, top, scales = data.get("step"), data.get("checkpoint"), data.get("max_abs"), data.get("scales")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(checkpoint, str) or not isinstance(scales, dict):
        return None
    if top is not None and not _finite_number(top):
        return None
    kept = {name: float(value) for name, value in scales.items() if isinstance(name, str) and _finite_number(value)}
    logged = data.get("first_loss")
    loss = ((logged[0], float(logged[1])) if isinstance(logged, list) and len(logged) == 2 and isinstance(logged[0], int)
            and _finite_number(logged[1]) else None)
    return RunBaseline(step, checkpoint, None if top is None else float(top), kept, loss) if kept else None


def kept_before(run: Path, steps_on_disk: Iterable[int], checkpoint: Path | None = None) -> RunBaseline | None:
    """The kept baseline when its checkpoint comes before every one of ``steps_on_disk`` (it was rotated
    away, so none of those can stand in for it) and it is this run's: ``checkpoint`` (one of the run's now)
    logged the same first loss, where both know it (a run started again from scratch in the same folder
    without the callback left another run's baseline behind); else None (the run's own checkpoints decide)."""
    kept = read_baseline(run)
    if kept is None or any(step <= kept.step for step in steps_on_disk):
        return None
    if kept.first_loss is not None and checkpoint is not None:
        now = first_loss(checkpoint)
        if now is not None and (now[0] != kept.first_loss[0] or not math.isclose(now[1], kept.first_loss[1],
                                                                                  rel_tol=1e-6)):
            return None
    return kept


def write_baseline(run: Path, kept: RunBaseline) -> None:
    """Write ``kept`` into ``run`` atomically, never through a link planted at a temporary name; raises OSError."""
    from nandoctor.report.outfile import write_text

    write_text(Path(run) / BASELINE_NAME, json.dumps(kept.to_json(), indent=1, allow_nan=False) + "\n")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["BASELINE_NAME", "RunBaseline", "first_loss", "kept_before", "read_baseline", "write_baseline"]
