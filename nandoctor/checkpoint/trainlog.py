"""The trainer log of a run as a series over steps (loss, grad_norm), for the HTML report's chart.

Two sources: ``trainer_state.json``'s ``log_history`` (transformers ``Trainer``) and
a Lightning ``CSVLogger``'s ``metrics.csv``. Only what was logged is kept (NaN and
Inf included: they are what the chart must show); a long log is thinned to
``MAX_POINTS`` evenly spaced points, keeping every non-finite one, so a
million-step run still gives a small report. Nothing here decides anything:
where the log broke is ``runs.TrainLog``'s (read from the same file).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_POINTS = 2000
MAX_CSV_BYTES = 256 << 20  # a metrics.csv beyond this is not read (a chart needs no more)
METRICS_CSV = "metrics.csv"
_LOSS_KEYS = ("loss", "train_loss", "train_loss_step", "train/loss", "training_loss", "loss_step")
_GRAD_KEYS = ("grad_norm", "train/grad_norm", "grad_2.0_norm_total", "grad_norm_total")


@dataclass(frozen=True, slots=True)
class LogPoint:
    step: int
    loss: float | None = None
    grad_norm: float | None = None


@dataclass(frozen=True, slots=True)
class LogSeries:
    """Loss and gradient norm over steps, steps ascending; ``*_key`` name the logged keys they came from."""

    source: str
    points: tuple[LogPoint, ...]
    loss_key: str | None = "loss"
    grad_key: str | None = "grad_norm"
    thinned_from: int = 0  # the number of points before thinning; 0 when all are kept


def _number(value: Any) -> float | None:
    """A logged value as a float (NaN/Inf kept); None for anything that is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value) if abs(value) < 1 << 1000 else math.inf  # a 400-digit int would overflow float()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _thin(points: list[LogPoint]) -> tuple[tuple[LogPoint, ...], int]:
    if len(points) <= MAX_POINTS:
        return tuple(points), 0
    stride = math.ceil(len(points) / MAX_POINTS)

    def keep(i: int, p: LogPoint) -> bool:
        broken = any(v is not None and not math.isfinite(v) for v in (p.loss, p.grad_norm))
        return i % stride == 0 or i == len(points) - 1 or broken

    kept = [p for i, p in enumerate(points) if keep(i, p)]
    return tuple(kept[: MAX_POINTS * 2]), len(points)  # (non-finite points can add at most as many again)


def _series(source: str, rows: dict[int, dict[str, float]], loss_key: str | None, grad_key: str | None) -> LogSeries | None:
    points = [
        LogPoint(step, row.get(loss_key) if loss_key else None, row.get(grad_key) if grad_key else None)
        for step, row in sorted(rows.items())
    ]
    points = [p for p in points if p.loss is not None or p.grad_norm is not None]
    if not points:
        return None
    kept, before = _thin(points)
    return LogSeries(source, kept, loss_key, grad_key, before)


def _pick(keys: set[str], preferred: tuple[str, ...], word: str) -> str | None:
    for key in preferred:
        if key in keys:
            return key
    candidates = sorted(k for k in keys if word in k.lower() and not k.lower().startswith(("val", "test", "eval")))
    return candidates[0] if candidates else None


def from_trainer_state(path: Path) -> LogSeries | None:
    """``log_history``'s loss and grad_norm by step; None when the file holds none (or cannot be read)."""
    from nandoctor.checkpoint.jsonfiles import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    history = data.get("log_history") if isinstance(data, dict) else None
    if not isinstance(history, list):
        return None
    rows: dict[int, dict[str, float]] = {}
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) or isinstance(entry["step"], bool):
            continue
        for key in ("loss", "grad_norm"):
            value = _number(entry.get(key))
            if value is not None:
                rows.setdefault(entry["step"], {})[key] = value
    return _series(str(path), rows, "loss", "grad_norm")


def from_metrics_csv(path: Path) -> LogSeries | None:
    """A Lightning ``CSVLogger`` file: one row per log call, empty cells for keys not logged then."""
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            return None
        handle = path.open(newline="", encoding="utf-8", errors="replace")
    except OSError:
        return None
    rows: dict[int, dict[str, float]] = {}
    with handle:
        reader = csv.DictReader(handle)
        keys = {k for k in (reader.fieldnames or ()) if k}
        loss_key, grad_key = _pick(keys, _LOSS_KEYS, "loss"), _pick(keys, _GRAD_KEYS, "grad")
        if "step" not in keys or (loss_key is None and grad_key is None):
            return None
        try:
            for row in reader:
                step = _number(row.get("step"))
                if step is None or not math.isfinite(step):
                    continue
                for key in (loss_key, grad_key):
                    value = _number(row.get(key)) if key else None
                    if key and value is not None:
                        rows.setdefault(int(step), {})[key] = value
        except csv.Error:
            pass  # a torn last line (the run is still writing): keep what was read
    return _series(str(path), rows, loss_key, grad_key)


def metrics_csv_near(folder: Path) -> Path | None:
    """The ``metrics.csv`` of a Lightning run: in ``folder``, its parent (``version_N/checkpoints``), or the
    newest ``lightning_logs/version_N`` (or ``version_N``) below it."""
    candidates = [folder / METRICS_CSV, folder.parent / METRICS_CSV]
    for pattern in ("lightning_logs/version_*/" + METRICS_CSV, "version_*/" + METRICS_CSV):
        try:
            found = sorted(folder.glob(pattern), key=lambda p: _version(p.parent.name))
        except OSError:
            continue
        candidates += reversed(found)
    return next((c for c in candidates if c.is_file()), None)


def _version(name: str) -> int:
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def read_series(folder: str | Path, trainer_state: str | None = None) -> LogSeries | None:
    """The run's log series: ``trainer_state`` (the run's longest trainer log) when given, else a
    Lightning ``metrics.csv`` near ``folder``; None when neither holds loss or grad_norm."""
    if trainer_state:
        series = from_trainer_state(Path(trainer_state))
        if series is not None:
            return series
    found = metrics_csv_near(Path(folder))
    return from_metrics_csv(found) if found is not None else None
