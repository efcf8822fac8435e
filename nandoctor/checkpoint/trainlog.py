"""The trainer log of a run: where it broke (:class:`TrainLog`) and its series over steps (for charts).

Two sources: ``trainer_state.json``'s ``log_history`` (transformers ``Trainer``) and
a Lightning ``CSVLogger``'s ``metrics.csv``, each read by one parser here and
judged by one rule (:func:`_where_it_broke`: the first NaN/Inf loss or grad_norm,
the first loss of exactly 0.0, the first loss ``LOSS_JUMP`` times the run's early loss, from the second
logged loss on). For the chart, only what was logged is kept (NaN
and Inf included: they are what the chart must show); a long log is thinned to
``MAX_POINTS`` evenly spaced points, keeping every non-finite one, so a
million-step run still gives a small report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.jsonfiles import number
from nandoctor.checkpoint.trainerstate import ResumeProblem, resume_problem

MAX_POINTS = 2000
# A loss this many times what a uniform guess scores (ln of the vocabulary or of the labels) is no trained model's:
# healthy runs start near 1x and go below it; label smoothing and auxiliary losses add little
UNTRAINED_MULTIPLE = 4.0
MAX_CSV_BYTES = 256 << 20  # a metrics.csv beyond this is not read (a chart needs no more)
METRICS_CSV = "metrics.csv"
_LOSS_KEYS = ("loss", "train_loss", "train_loss_step", "train/loss", "training_loss", "loss_step")
_GRAD_KEYS = ("grad_norm", "train/grad_norm", "grad_2.0_norm_total", "grad_norm_total")
_LOGGED_KEYS = ("loss", "grad_norm")  # what trainer_state.json's log_history is judged by
# A loss this many times the run's early loss means the weights that made it were already broken, finite as
# they may be: a diverged run's loss goes from ~5 to thousands within a few steps
# (tests/test_health_real_divergence.py). Healthy runs' loss spikes stay within 2-3x and recover. The early
# loss is the median of the first EARLY_LOSSES logged losses, or of those logged so far (a run at lr 40 logs
# 4.6, 13, 4150, 4.4e6, NaN: the jump is its third loss; early losses fall fast and noisily, and a random-init
# regression logging 5.7, 6.2, 1.0, 13.7 bounced off one lucky batch, no divergence:
# tests/test_trainlog_early.py). A jump must last: a diverged run's loss stays up or goes NaN, so the next logged
# loss back under the factor clears it (one odd example in a batch of 1 logged 8.8 among 0.006s, and the run's
# resume point was moved back 70 steps); against the first loss alone, which may be a lucky batch (1.2 before a
# run's 4.9s), the next must be GROWING times the jump (or NaN): a run that jumps right after its first log and
# plateaus is told from a lucky first batch by nothing in the log, and is then found by its weights or its NaN.
# The last log's jump stands until a later log says otherwise. It only moves the last healthy checkpoint (what to resume from, where --from auto takes
# donors) back before the jump in a run that has a bad checkpoint; it never fails a checkpoint on its own.
LOSS_JUMP = 4.0
LOSS_JUMP_UNCONFIRMED = 100.0  # a jump at the log's last entry that is said on its own (TrainLog.loss_jump_said)
EARLY_LOSSES = 5
GROWING = 1.5  # against fewer than _SETTLED early losses, a jump is confirmed by a next loss this many times it
_SETTLED = 2
STANDING = 3  # the last finite losses a log's standing loss is the lowest of (TrainLog.standing_loss)


@dataclass(frozen=True)
class TrainLog:
    """What a trainer log (``trainer_state.json``'s ``log_history``, a Lightning ``metrics.csv``) says
    about where training broke."""

    source: str
    last_step: int | None = None
    first_nonfinite_step: int | None = None  # first logged step with NaN/Inf loss or grad_norm
    first_nonfinite_keys: tuple[str, ...] = ()
    first_zero_loss_step: int | None = None  # a loss of exactly 0.0 usually means the loss went NaN/was masked
    error: str | None = None  # the file could not be read
    # Lightning: a row's step counts the optimizer steps done before it was logged, so its loss is of the
    # weights saved at that step (Trainer logs step N for the update that makes step N)
    logged_after_save: bool = False
    logged: tuple[str, ...] = ()  # the series the log has (``loss``, ``grad_norm``; a Lightning log's own key names)
    # The first logged loss at least LOSS_JUMP times the run's early loss (the median of its first EARLY_LOSSES
    # logged losses, or of those so far) that lasted (see LOSS_JUMP): finite, but the weights that made it were
    # already broken; the logging interval before it
    loss_jump_step: int | None = None
    loss_jump: tuple[float, float] | None = None  # (that loss, the early loss)
    loss_interval: int = 1
    loss_jump_confirmed: bool = False  # a later logged loss kept it up (the last log's jump stands unconfirmed)
    first_loss: float | None = None  # the first finite logged loss
    last_loss: float | None = None  # the last finite logged loss
    # past the first finite logged loss (the initial weights' own, or nearly): how many finite losses were logged, the
    # lowest of them, and the lowest of the last STANDING (where the loss stands at the log's end, one batch aside)
    losses_after_first: int = 0
    lowest_after_first: float | None = None
    standing_loss: float | None = None
    finite_again: bool = False  # a later entry logged every watched key finite after the first NaN/Inf one
    # where the log broke for good, past steps fp16 loss scaling skipped: the first NaN/Inf of a key that is no
    # gradient norm (a loss), or the start of a NaN/Inf stretch the log ends in; None when neither
    broke_after_skips: int | None = None
    after_jump: float | None = None  # the median of the losses logged from the jump on (NaN where one was NaN/Inf)
    # the file is no JSON object (cut short by an interrupted save, or a list): a resume fails on it (error says why)
    cut_short: bool = False
    # a JSON object Trainer's resume fails on all the same (a key TrainerState has no field for, train_batch_size null)
    resume: ResumeProblem | None = None

    @property
    def loss_jump_sustained(self) -> bool:
        """A confirmed jump after which the loss stayed up: the median of the losses logged from it on is still
        LOSS_JUMP times the early loss (or a loss went NaN/Inf). What the warnings of a run whose checkpoints all
        pass need: a batch-size-1 log alternates easy and rare examples (0.05, 3.06, 0.05, 2.98, 3.05 …), which
        confirms a jump at the next log while the run is healthy (a trial: its data loss fell from 0.69 to 0.44)."""
        if not self.loss_jump_confirmed or self.loss_jump is None or self.after_jump is None:
            return False
        return not math.isfinite(self.after_jump) or self.after_jump >= LOSS_JUMP * self.loss_jump[1]

    @property
    def loss_jump_said(self) -> bool:
        """Whether the text reports warn of the jump where no checkpoint fails for it: :attr:`loss_jump_sustained`, or
        a jump at the log's last entry, which nothing after it confirms, of ``LOSS_JUMP_UNCONFIRMED`` times the early
        loss (a batch-size-1 log's last entry may be a rare example at 10x; not at 100x)."""
        if self.loss_jump_sustained:
            return True
        if self.loss_jump is None or self.loss_jump_confirmed or self.loss_jump_step != self.last_step:
            return False
        loss, early = self.loss_jump
        return early > 0 and loss >= LOSS_JUMP_UNCONFIRMED * early

    @property
    def _skips_first(self) -> bool:
        """The log's first NaN/Inf were gradient norms alone, and a later entry is finite again."""
        return (self.first_nonfinite_step is not None and self.finite_again and bool(self.first_nonfinite_keys)
                and all("grad" in key.lower() for key in self.first_nonfinite_keys))

    @property
    def skipped_steps(self) -> bool:
        """Only the gradient norm went NaN/Inf, and later logs are finite again: fp16 loss scaling skipping the
        steps whose gradients overflowed (Trainer logs their grad_norm as NaN/Inf while the GradScaler calibrates;
        the weights are untouched), not a run that broke."""
        return self._skips_first and self.broke_after_skips is None

    @property
    def loss_fell(self) -> bool:
        """Whether the run's loss came down to two thirds of its first logged value or less, with no jump: a healthy
        run's sign (a run at lr 10 wandered from 2,711 to 2,434 with every checkpoint broken; a healthy one from
        scratch goes from 10 to 4, a regression head from 1e6 to 1e4, and a linear probe on noisy targets from
        38,748 to 21,136: its noise floor, ~22,500, is more than half the first loss, and half was a false alarm)."""
        return (self.loss_jump is None and self.first_loss is not None and self.last_loss is not None
                and self.last_loss <= self.first_loss * 2 / 3)

    def came_down(self, untrained: float | None) -> bool:
        """:attr:`loss_fell`, and to where a model that learned anything is: at most ``UNTRAINED_MULTIPLE`` times
        ``untrained``, the loss of a model that guesses uniformly (initscales.untrained_loss), where that is known. A
        run at lr 10 went from 3,158 to 2,110 over a vocabulary of 128 (untrained: 4.85): it fell, and never
        trained."""
        return self.loss_fell and (untrained is None or self.last_loss is None
                                   or self.last_loss <= UNTRAINED_MULTIPLE * untrained)

    @property
    def broken_weights_from(self) -> int | None:
        """The first step whose saved weights may have made the loss jump (:attr:`loss_jump_step`): a Trainer
        logs at step J the mean loss of steps J-L+1..J, each computed with the weights saved one step before
        (so from step J-L); a Lightning row's loss is of the weights saved at its own step (so from J-L+1)."""
        if self.loss_jump_step is None:
            return None
        return self.loss_jump_step - self.loss_interval + (1 if self.logged_after_save else 0)

    @property
    def nonfinite_from(self) -> int | None:
        """The step from which the log's NaN/Inf say the run broke: its first NaN/Inf, or, past gradient norms that
        went NaN/Inf and came back (steps fp16 loss scaling skipped), where it broke after them; None when never."""
        return self.broke_after_skips if self._skips_first else self.first_nonfinite_step

    @property
    def suspicious_step(self) -> int | None:
        """Where the log says the run broke: its first NaN/Inf (unless those were :attr:`skipped_steps`) or its
        first loss of exactly 0.0; None when it says nothing of the kind."""
        steps = [s for s in (self.nonfinite_from, self.first_zero_loss_step) if s is not None]
        return min(steps) if steps else None


def _where_it_broke(
    source: str, entries: Iterable[tuple[int, Mapping[str, Any]]], keys: tuple[str, ...], loss_key: str | None
) -> TrainLog:
    """The first entry (in log order) whose ``keys`` hold NaN/Inf, the first loss of exactly 0.0, and the first
    loss that jumped (:attr:`TrainLog.loss_jump_step`)."""
    last = first_bad = first_zero = None
    finite_again = False
    first_loss_bad: int | None = None  # the first NaN/Inf of a key that is no gradient norm
    bad_since: int | None = None  # the first NaN/Inf entry since the last all-finite one
    first_loss: float | None = None  # the first and the last finite logged loss
    last_loss: float | None = None
    bad_keys: tuple[str, ...] = ()
    seen: set[str] = set()
    early: list[float] = []  # the first EARLY_LOSSES finite losses: the run's early loss is their median
    jump: tuple[int, float, float, int] | None = None  # (step, loss, early loss, interval)
    pending: tuple[int, float, float, int] | None = None  # a jump the next logged loss confirms or clears
    previous_loss_step: int | None = None
    losses: list[tuple[int, float]] = []  # (step, loss) of every logged loss, NaN/Inf included
    after_first: list[float] = []  # the finite losses logged after the first finite one
    for step, entry in entries:
        last = step if last is None else max(last, step)
        seen.update(k for k in keys if isinstance(entry.get(k), (int, float)) and not isinstance(entry[k], bool))
        nonfinite = tuple(  # only floats can be NaN/Inf (and a 400-digit int would overflow isfinite)
            k for k in keys if isinstance(entry.get(k), float) and not math.isfinite(entry[k])
        )
        if nonfinite:
            if first_bad is None:
                first_bad, bad_keys = step, nonfinite
            bad_since = step if bad_since is None else bad_since
            if first_loss_bad is None and any("grad" not in k.lower() for k in nonfinite):
                first_loss_bad = step
        elif any(isinstance(entry.get(k), (int, float)) and not isinstance(entry[k], bool) for k in keys):
            finite_again |= first_bad is not None  # (an entry that logged its keys, all finite)
            bad_since = None
        loss = entry.get(loss_key) if loss_key else None
        if first_zero is None and isinstance(loss, (int, float)) and loss == 0.0:
            first_zero = step
        value = _number(loss) if isinstance(loss, (int, float)) else None  # (a 400-digit int: inf, not an error)
        if value is not None:
            losses.append((step, value))
        if value is not None and math.isfinite(value):
            if first_loss is not None:
                after_first.append(value)
            first_loss = value if first_loss is None else first_loss
            last_loss = value
        if pending is not None and value is not None:
            # A diverged run's loss stays up (or goes NaN); a spike from one odd batch is back down at the next log.
            # Against fewer than three early losses (one lucky batch among them would do) it must keep rising.
            confirmed = not math.isfinite(value) or (
                value >= GROWING * pending[1] if len(early) < _SETTLED else value >= LOSS_JUMP * pending[2])
            if confirmed:
                jump, pending = pending, None
            else:
                if len(early) < EARLY_LOSSES:
                    early.append(pending[1])  # a loss of the run after all
                pending = None
        if value is not None and math.isfinite(value) and jump is None:
            if pending is None and early:
                baseline = _median(early)
                if baseline > 0 and value >= LOSS_JUMP * baseline:
                    interval = step - previous_loss_step if previous_loss_step is not None else 1
                    pending = (step, value, baseline, max(1, interval))  # (early is left as it was till then)
                    previous_loss_step = step
                    continue  # (a spike joins the early losses only once cleared)
            if len(early) < EARLY_LOSSES:
                early.append(value)
            previous_loss_step = step
    confirmed = jump is not None
    jump = jump or pending  # the last log's jump: nothing yet says it passed
    broke = [s for s in (first_loss_bad, bad_since) if s is not None]
    found = TrainLog(source, last, first_bad, bad_keys, first_zero, logged=tuple(k for k in keys if k in seen),
                     first_loss=first_loss, last_loss=last_loss, finite_again=finite_again,
                     losses_after_first=len(after_first), lowest_after_first=min(after_first, default=None),
                     standing_loss=min(after_first[-STANDING:], default=None),
                     broke_after_skips=min(broke) if broke else None)
    if jump is None:
        return found
    after = [v for s, v in losses if s >= jump[0]]
    after_median = math.nan if any(not math.isfinite(v) for v in after) else _median(after) if after else None
    return dataclasses.replace(found, loss_jump_step=jump[0], loss_jump=(jump[1], jump[2]), loss_interval=jump[3],
                               loss_jump_confirmed=confirmed, after_jump=after_median)


def _median(values: list[float]) -> float:
    """The median of a few losses (statistics.median's import pulls fractions and decimal: ~3 ms a start)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


CUT_SHORT = ResumeProblem("", "is not a valid JSON object (cut short?): Trainer's resume_from_checkpoint fails on it "
                          "(TrainerState.load_from_json reads it first)", "resume from an earlier checkpoint")


def unresumable(path: Path) -> ResumeProblem | None:
    """Why Trainer's ``resume_from_checkpoint`` fails on the trainer_state.json at ``path``: it reads it first
    (TrainerState.load_from_json), so a file that is no JSON object (a save interrupted while writing it,
    :data:`CUT_SHORT`), or one with a key or value TrainerState or the resume cannot take (trainerstate.py); None when
    it resumes, or is not there. Read once with the log."""
    if not os.path.isfile(path):
        return None
    log = read_train_log(path)
    return CUT_SHORT if log.cut_short else log.resume


def read_train_log(path: Path) -> TrainLog:
    """Parse ``trainer_state.json``; JSON's NaN/Infinity literals are what Trainer writes for them. Parsed once per
    process while the file stays as it was (a scan, its run context and a repair's donors each ask for it)."""
    try:
        found = os.stat(path)
    except OSError as exc:
        return TrainLog(str(path), error=f"cannot read: {exc.strerror or exc}")
    return _read_train_log(str(path), found.st_size, found.st_mtime_ns, found.st_ino)


@functools.lru_cache(maxsize=64)
def _read_train_log(name: str, size: int, mtime_ns: int, inode: int) -> TrainLog:
    from nandoctor.checkpoint.jsonfiles import read_json

    path = Path(name)
    try:
        data = read_json(path)
    except OSError as exc:
        return TrainLog(str(path), error=f"cannot read: {exc.strerror or exc}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return TrainLog(str(path), error=f"not valid JSON: {exc}", cut_short=True)
    except ValueError as exc:  # (refused as too large or too deep: read, not cut short)
        return TrainLog(str(path), error=f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return TrainLog(str(path), error="not a JSON object", cut_short=True)
    resume = resume_problem(data)
    history = data.get("log_history")
    if not isinstance(history, list):
        return TrainLog(str(path), error="no \"log_history\" list", resume=resume)
    return dataclasses.replace(from_log_history(str(path), history), resume=resume)


def from_log_history(source: str, history: list[Any]) -> TrainLog:
    """Where a ``log_history`` (trainer_state.json's, or a live ``TrainerState``'s) broke."""
    entries = ((e["step"], e) for e in history if isinstance(e, dict) and isinstance(e.get("step"), int))
    return _where_it_broke(source, entries, _LOGGED_KEYS, "loss")


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
    """A logged value as a float (NaN/Inf kept; a CSV cell's text too); None for anything that is not a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return number(value)  # (a 400-digit int: inf, not OverflowError)


def _thin(points: list[LogPoint]) -> tuple[tuple[LogPoint, ...], int]:
    if len(points) <= MAX_POINTS:
        return tuple(points), 0
    stride = math.ceil(len(points) / MAX_POINTS)

    def keep(i: int, p: LogPoint) -> bool:
        broken = any(v is not None and not math.isfinite(v) for v in (p.loss, p.grad_norm))
        return i % stride == 0 or i == len(points) - 1 or broken

    kept = [p for i, p in enumerate(points) if keep(i, p)]
    return tuple(kept[: MAX_POINTS * 2]), len(points)  # (non-finite points can add at most as many again)


def _series(source: str, rows: Mapping[int, Mapping[str, float]], loss_key: str | None, grad_key: str | None) -> LogSeries | None:
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
    candidates = _logged_like(keys, word)
    return candidates[0] if candidates else None


def _logged_like(keys: set[str], word: str) -> list[str]:
    """The training columns among ``keys`` named like ``word`` (not validation, test or eval ones), in name order."""
    return sorted(k for k in keys if word in k.lower() and not k.lower().startswith(("val", "test", "eval")))


_TOTAL = re.compile(r"^(?:train(?:ing)?[_/.]?)?(?:total[_/.]?)?loss(?:[_/.]?(?:step|epoch|total))?$")


def _objective(keys: set[str]) -> tuple[str | None, tuple[str, ...]]:
    """(the column that logs the training objective, every training loss column) of a metrics.csv. The objective:
    one of _LOSS_KEYS, the one loss column, or the one named as a total (``total_loss``); None among components
    alone (a VAE's ``kl_loss`` and ``recon_loss``, a GAN's ``d_loss`` and ``g_loss``), whose growth is no
    divergence (a VAE's KL term rises by design while its warm-up runs: a trial). Every loss column is watched for
    NaN/Inf either way."""
    losses = tuple(_logged_like(keys, "loss"))
    for key in _LOSS_KEYS:
        if key in keys:
            return key, tuple(dict.fromkeys((key, *losses)))
    if len(losses) == 1:
        return losses[0], losses
    totals = [k for k in losses if _TOTAL.match(k.lower())]
    # (Lightning's on_step + on_epoch logging writes one loss twice, `train/loss_step` and `train/loss_epoch`: one
    # objective, the per-step column its finest record)
    bases = {re.sub(r"[_/.]?(step|epoch)$", "", k.lower()) for k in totals}
    if len(bases) == 1 and totals:
        return min(totals, key=lambda k: (not k.lower().endswith("step"), k.lower().endswith("epoch"))), losses
    return None, losses


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


@dataclass(frozen=True)
class MetricsTable:
    """A Lightning ``CSVLogger`` file as read: the loss and grad-norm values logged, by step (NaN/Inf kept).

    Lightning logs a row with step ``s`` after ``s`` optimizer steps, while computing the next one: the
    rows a ``…step=N….ckpt`` file's save came after are those with a step below N.
    """

    source: str
    rows: Mapping[int, Mapping[str, float]]
    loss_key: str | None  # the training objective's column (_objective): judged for jumps, drawn in the charts
    grad_key: str | None
    watched: tuple[str, ...] = ()  # every training loss column besides: NaN/Inf in any is where the log broke
    error: str | None = None  # why the file could not be read whole: then it is not judged

    def series(self) -> LogSeries | None:
        return None if self.error else _series(self.source, self.rows, self.loss_key, self.grad_key)

    def train_log(self, before_step: int | None = None) -> TrainLog | None:
        """Where the log broke, over every row or over the rows logged before step ``before_step``
        (a checkpoint's save); None when there are none."""
        if self.error:
            return TrainLog(self.source, error=self.error)
        entries = [(s, row) for s, row in sorted(self.rows.items()) if before_step is None or s < before_step]
        if not entries:
            return None
        keys = tuple(dict.fromkeys(k for k in (self.loss_key, *self.watched, self.grad_key) if k))
        return dataclasses.replace(_where_it_broke(self.source, entries, keys, self.loss_key), logged_after_save=True)


def from_metrics_csv(path: Path) -> LogSeries | None:
    """A Lightning ``CSVLogger`` file's loss and grad-norm series (:func:`read_metrics_csv`)."""
    table = read_metrics_csv(path)
    return None if table is None else table.series()


def read_metrics_csv(path: Path) -> MetricsTable | None:
    """A Lightning ``CSVLogger`` file: one row per log call, empty cells for keys not logged then; None when
    it cannot be read or logs neither a loss nor a grad norm by step. Read once per process while the file stays
    as it was (a scan of one step file, its repair's donors and a callback's checks each ask for it)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return _read_metrics_csv(str(path), found.st_size, found.st_mtime_ns, found.st_ino)


@functools.lru_cache(maxsize=4)
def _read_metrics_csv(name: str, size: int, mtime_ns: int, inode: int) -> MetricsTable | None:
    import csv  # here: only a Lightning run has a metrics.csv, and every scan of a checkpoint imports this module

    path = Path(name)
    try:
        if size > MAX_CSV_BYTES:
            return None
        handle = path.open(newline="", encoding="utf-8-sig", errors="replace")  # (-sig: a BOM an editor put there)
    except OSError:
        return None
    rows: dict[int, dict[str, float]] = {}
    with handle:
        reader = csv.DictReader(handle)
        keys = {k for k in (reader.fieldnames or ()) if k}
        (loss_key, losses), grad_key = _objective(keys), _pick(keys, _GRAD_KEYS, "grad")
        read = [k for k in (*losses, grad_key) if k]
        if "step" not in keys or not read:
            return None
        error = None
        spanning = 0  # line ends inside the quoted fields of the last row read
        try:
            for row in reader:
                # (line ends inside a row's fields: only a quote spans lines; blank lines, which the reader skips,
                # are none. Judged once the file has ended, below: a row after it means the quote closed)
                spanning = sum(v.count("\n") for v in row.values() if isinstance(v, str))
                if spanning:
                    continue
                step = _number(row.get("step"))
                if step is None or not math.isfinite(step):
                    continue
                for key in read:
                    value = _number(row.get(key))
                    if value is not None:
                        rows.setdefault(int(step), {})[key] = value
        except csv.Error:
            pass  # a torn last line (the run is still writing): keep what was read
        if spanning > 1:
            # (a quote that never closes: every line after it is one field of the file's last row, its rows never
            # read; a log read in part would say the run was finite where its rows after may hold NaN. A last line
            # torn while the run writes it holds one line end at most: what was read is kept)
            error = (f"a quoted field never closes (it runs to line {reader.line_num}): the rows after its quote "
                     "cannot be read")
    return MetricsTable(str(path), rows, loss_key, grad_key, losses, error)


def metrics_csv_near(folder: Path) -> Path | None:
    """The ``metrics.csv`` of a Lightning run: in ``folder``, its parent (``version_N/checkpoints``), the
    newest ``lightning_logs/version_N`` (or ``version_N``) below it, or the newest ``<name>/version_N``
    beside it (``CSVLogger(save_dir, name)`` next to ``ModelCheckpoint(dirpath=save_dir/"checkpoints")``)."""
    candidates = [folder / METRICS_CSV, folder.parent / METRICS_CSV]
    for base, pattern in ((folder, "lightning_logs/version_*/"), (folder, "version_*/"), (folder.parent, "*/version_*/")):
        try:
            found = sorted(base.glob(pattern + METRICS_CSV), key=lambda p: _version(p.parent.name))
        except OSError:
            continue
        candidates += reversed(found)
    return next((c for c in candidates if c.is_file()), None)


def metrics_near(folder: Path) -> MetricsTable | None:
    """The :class:`MetricsTable` of the Lightning run whose checkpoints are in ``folder``, if one is found."""
    found = metrics_csv_near(Path(folder))
    return read_metrics_csv(found) if found is not None else None


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
