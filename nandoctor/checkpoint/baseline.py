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

The file is nandoctor's own, and the run folder may hold anything: it is read without following a link
(jsonfiles.read_json) and written by replacing whatever is at its name (report/outfile.py, ``owned``), never
through a link or into a FIFO planted there; its numbers go through jsonfiles.number (a 400-digit integer is
no crash), and its ``checkpoint`` must be a plain name in the run (it is only ever a label: nothing it names
is opened). A file that is not a baseline this module wrote is ignored, and :func:`load_baseline` says why.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.jsonfiles import finite_number
from nandoctor.checkpoint.trainlog import UNTRAINED_MULTIPLE

BASELINE_NAME = "nandoctor-baseline.json"
# The label of a baseline taken from the weights a fresh training run starts from (step 0: the Trainer callback
# scans them at on_train_begin), not from a saved checkpoint: a run that blew up before its first save (lr 3:
# loss 7 to 640, every save "healthy" against the first, already 30x its start) grows past the rule against it.
INITIAL_WEIGHTS = "initial weights"


@dataclass(frozen=True)
class RunBaseline:
    """The run's first healthy checkpoint as growth needs it: its step, its name in the run folder, its
    largest weight and every weight tensor's scale (verdict.tensor_scales)."""

    step: int
    checkpoint: str
    max_abs: float | None
    scales: dict[str, float]
    first_loss: tuple[int, float] | None = None  # the run's first logged loss (trainer_state.json): whose run it is
    # the initial weights' own training loss (the first batch's, before any update: a training callback's), which a
    # loss that "came down" must come near to be a trained model's (usable_baseline)
    start_loss: float | None = None
    # a start guessed from the model's config (initscales.py: transformers' initializer_range), not one seen: a fine-tune
    # starts from pretrained weights, so only a run whose loss never trained (usable_baseline) is measured from it
    guessed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"format": "nandoctor-baseline/1", "step": self.step, "checkpoint": self.checkpoint,
                "max_abs": self.max_abs, "scales": self.scales,
                "first_loss": None if self.first_loss is None else list(self.first_loss),
                **({"start_loss": self.start_loss} if self.start_loss is not None else {})}


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
        step, loss = (_int(entry.get("step")), finite_number(entry.get("loss"))) if isinstance(entry, dict) else (None, None)
        if step is not None and loss is not None:
            return step, loss
    return None


def load_baseline(run: Path) -> tuple[RunBaseline | None, str | None]:
    """(the baseline kept in ``run``, None); (None, why it is ignored) for a file at its name that is not a
    baseline this module wrote (a link, a FIFO, invalid JSON, a field out of range); (None, None) without one."""
    from nandoctor.checkpoint.jsonfiles import read_json

    try:
        data = read_json(Path(run) / BASELINE_NAME, follow_links=False)  # (bounded; a FIFO does not block)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, _ignored(_unreadable(Path(run) / BASELINE_NAME, exc))
    if not isinstance(data, dict) or data.get("format") != "nandoctor-baseline/1":
        return None, _ignored("not a nandoctor-baseline/1 file")
    step, checkpoint, top, scales = _int(data.get("step")), data.get("checkpoint"), data.get("max_abs"), data.get("scales")
    if step is None or not 0 <= step < 1 << 63:
        return None, _ignored("its step is not a step")
    if not isinstance(checkpoint, str) or not _plain_name(checkpoint):
        return None, _ignored("its checkpoint is not a name in the run folder")
    if not isinstance(scales, dict) or (top is not None and finite_number(top) is None):
        return None, _ignored("its scales or largest weight are not finite numbers")
    kept = {name: value for name, value in ((n, finite_number(v)) for n, v in scales.items())
            if isinstance(name, str) and value is not None}
    if not kept:
        return None, _ignored("it holds no tensor scale")
    logged = data.get("first_loss")
    at, loss = (_int(logged[0]), finite_number(logged[1])) if isinstance(logged, list) and len(logged) == 2 else (None, None)
    if checkpoint == INITIAL_WEIGHTS:  # (growth against them says "since the weights the run started from")
        from nandoctor.verdict import InitialScales

        kept = InitialScales(kept)
    start = finite_number(data.get("start_loss")) if checkpoint == INITIAL_WEIGHTS else None
    return RunBaseline(step, checkpoint, finite_number(top), kept, None if at is None or loss is None else (at, loss),
                       start if start is not None and start > 0 else None), None


def read_baseline(run: Path) -> RunBaseline | None:
    """The baseline kept in ``run``; None when there is none or it is not one this module wrote."""
    return load_baseline(run)[0]


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


def usable_baseline(kept: RunBaseline | None, log: Any, untrained: float | None = None) -> RunBaseline | None:
    """``kept``, unless it is the initial weights' and the trainer log up to the checkpoint judged (``log``, a
    TrainLog or None) does not show a run gone wrong: a healthy run's weights may grow far from their initialisation
    (a regression head fitting targets in pixels: 700x in a false-alarm hunt, the loss falling all along), so growth
    since the start calls a checkpoint diverged only where its loss did not come down (a run at lr 3: 7 to 640; at
    lr 10: 2,711 at its first log, 2,883 at its first save), or came down from a first log already far above
    ``untrained``, the loss of a model that guesses uniformly, or else the initial weights' own loss where a callback
    kept it (TrainLog.came_down: a Lightning run's first logged loss was 2.4e6 at step 4, 230 at step 39, from 4.9 at
    step 0); without a logged loss, nothing says which, and the first healthy checkpoint on disk is the baseline, as
    before. A start ``guessed`` from the config is used only where the log's last loss is still ``UNTRAINED_MULTIPLE``
    times the untrained one: a fine-tune whose loss hardly moved starts from pretrained weights, which may lie far
    above the initializer's (a review's rescaled model fine-tuned healthy at loss 0.19 read DIVERGED)."""
    if kept is None or kept.checkpoint != INITIAL_WEIGHTS:
        return kept
    if kept.guessed:  # (positive evidence only: a loss still far above an untrained model's, whatever it did)
        return kept if untrained_jump(log, untrained) is not None else None
    reference = untrained if untrained is not None else kept.start_loss
    if log is None or getattr(log, "error", None) is not None or log.first_loss is None or log.came_down(reference):
        return None
    return kept


def never_trained(kept: RunBaseline | None, log: Any, untrained: float | None, run_log: Any = None
                  ) -> dict[str, Any] | None:
    """Where ``kept`` is the initial weights' (a callback's, or the start a config implies) and the log says the save's
    weights score worse than ``untrained`` (:func:`untrained_jump`, the run's log ``run_log``: its last loss still
    ``UNTRAINED_MULTIPLE`` times it, or standing above it): that loss as a jump from the untrained one, the run broken
    from its start: a smaller growth is diverged with it, as with a loss jump (verdict.diverged_why; a real run at lr 3
    scored an eval loss of 278 where an untrained model scores 4.85, its weights 228x the initializer's: CLEAN); else
    None."""
    return untrained_jump(log, untrained, run_log) if kept is not None and kept.checkpoint == INITIAL_WEIGHTS else None


# Where a loss stands against ``untrained``, the loss of a model that guesses uniformly (ln V, ln of the labels): a
# save whose loss stands this many times above it in a run that never logged below it (past its first loss) never
# trained; this many times above it after the run had logged below it, the run broke. A healthy run from scratch
# starts near 1x and goes below it within a few logs (one may rise a little first: its later logs come below, and it
# is judged by them where they are known); a fine-tune starts far below it; a stuck classifier hovers at 1x.
NEVER_BELOW = 1.2
RISEN_ABOVE = 1.5
NEVER_BELOW_LOGS = 3  # the losses past the first a log must hold before "never below" is said from it


def untrained_jump(log: Any, untrained: float | None, run_log: Any = None) -> dict[str, Any] | None:
    """Where the trainer log up to a save (``log``, a TrainLog) says its weights score worse than ``untrained``, the
    loss of a model that guesses uniformly (initscales.untrained_loss), that loss as a jump from ``untrained``
    (runs.loss_jump_at's keys, ``untrained`` True, and ``why``); else None. Worse, where

    - its last loss is still ``UNTRAINED_MULTIPLE`` times ``untrained`` (``why`` "never": it never trained);
    - the run's log (``run_log``, the log as its newest save holds it, else ``log``: whether the run ever came down is
      for its later logs to say too) never logged a loss below ``NEVER_BELOW`` times ``untrained`` past its first one,
      over ``NEVER_BELOW_LOGS`` logs at least, and the save's standing loss (the lowest of its last few) is above that
      too (``why`` "never"; a real Trainer run at lr 1, warmed up: 4.84 to 19.7 with no loss jump, its saves' eval
      losses 8.8 to 17 where untrained is 4.85, checkpoint-15 named the last healthy one);
    - the save's log logged below ``untrained`` past its first loss and its standing loss is ``RISEN_ABOVE`` times it
      (``why`` "risen": it had trained, and now scores worse than a model that guesses)."""
    if log is None or getattr(log, "error", None) is not None or untrained is None or log.last_loss is None:
        return None
    found = {"step": log.last_step, "loss": log.last_loss, "early_loss": untrained, "sustained": True,
             "untrained": True}
    if log.last_loss > UNTRAINED_MULTIPLE * untrained:
        return {**found, "why": "never"}
    standing = log.standing_loss
    if standing is None:
        return None
    whole = run_log if run_log is not None and getattr(run_log, "error", None) is None else log
    if (whole.losses_after_first >= NEVER_BELOW_LOGS and whole.lowest_after_first is not None
            and whole.lowest_after_first >= NEVER_BELOW * untrained and standing >= NEVER_BELOW * untrained):
        return {**found, "why": "never"}
    if log.lowest_after_first is not None and log.lowest_after_first < untrained and standing >= RISEN_ABOVE * untrained:
        return {**found, "why": "risen"}
    return None


def write_baseline(run: Path, kept: RunBaseline) -> None:
    """Write ``kept`` into ``run`` atomically, replacing whatever is at its name (a link, a FIFO: never written
    through) and never through a link planted at a temporary name; raises OSError."""
    from nandoctor.report.outfile import write_text

    write_text(Path(run) / BASELINE_NAME, json.dumps(kept.to_json(), indent=1, allow_nan=False) + "\n", owned=True)


def _ignored(why: str) -> str:
    return f"{BASELINE_NAME}: {why}; ignored (growth is measured against the run's checkpoints on disk)"


def _unreadable(path: Path, exc: OSError | ValueError) -> str:
    """Why the file at ``path`` could not be read as a baseline (``exc``), in words."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = stat.S_IFREG
    if stat.S_ISLNK(mode):
        return "a link (this file is never one)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"not valid JSON ({exc})" if isinstance(exc, json.JSONDecodeError) else str(exc)


def _int(value: Any) -> int | None:
    """A JSON integer (never ``true``: bool is an int in Python), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plain_name(name: str) -> bool:
    """Whether ``name`` is one entry of a folder (what this module writes: a checkpoint's own name), printable."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and name.isprintable()


__all__ = [
    "BASELINE_NAME",
    "INITIAL_WEIGHTS",
    "RunBaseline",
    "first_loss",
    "kept_before",
    "load_baseline",
    "read_baseline",
    "usable_baseline",
    "write_baseline",
]
