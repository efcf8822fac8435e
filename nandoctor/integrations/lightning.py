"""``NanDoctorCallback`` for Lightning: scan every ``.ckpt`` a ``lightning.Trainer`` writes, right after it is written.

    from nandoctor.integrations.lightning import NanDoctorCallback

    trainer = lightning.Trainer(..., callbacks=[ModelCheckpoint(...), NanDoctorCallback(stop_on_nonfinite=True)])

Which hook is honest: ``on_save_checkpoint`` hands over the dict *before* it is
written, and a callback's ``on_train_batch_end`` runs before ``ModelCheckpoint``'s
(Lightning orders checkpoint callbacks last), so neither sees the file. This
callback instead wraps the strategy's ``CheckpointIO`` for the fit: every file
``ModelCheckpoint`` (or ``trainer.save_checkpoint``) writes is scanned from disk
the moment ``save_checkpoint`` returns, by the same gate as the transformers
callback (integrations/gate.py): the bytes a resume or an export would load.

* The verdicts go to ``nandoctor.json`` in the checkpoint's folder (one entry per
  ``.ckpt``: step, gate, summary, bad layer ranges; entries of deleted files dropped), with the training losses
  each save is judged with, written before it is judged: a later ``nandoctor scan`` of the same bytes reads them
  where no ``metrics.csv`` lies near, and the folder is a run from its first save on (checkpoint/callbacklog.py).
* ``stop_on_nonfinite=True`` stops training (``trainer.should_stop``) at the first
  file that fails the gate; under DDP every rank stops one step later, together
  (the decision is reduced across ranks at the next batch: a rank that stopped
  alone would hang the others).
* ``protect_last_clean=True``: when ``ModelCheckpoint`` rotates the newest clean
  file of its folder away (``save_top_k``), the removal is held back until a newer
  clean file exists there, so at most one file more than ``save_top_k`` is kept per
  folder, however long the bad streak; while no training loss has been computed
  from the newest clean file's weights yet, the clean file before it is held too.
* The training loss (``training_step``'s, read every ``log_every_n_steps`` steps
  in ``on_train_batch_end``, not from a logger: ``CSVLogger`` writes its file every
  100 steps) is judged by the run scan's rule (checkpoint/trainlog.py): once a file
  failed, a loss that jumped to ``LOSS_JUMP`` times the run's early loss moves
  ``last_clean`` back to the newest clean file saved before the weights that made
  it, as ``nandoctor scan`` names a run's last healthy checkpoint. The first non-finite loss makes it scan
  the live weights: NaN there fails as a bad file would (a ``ModelCheckpoint`` monitoring the loss ranks NaN
  worst and may never write one).
* A file that is written again under the same name (``save_last=True``'s
  ``last.ckpt``, a ``filename`` without the step) is scanned each time but is never
  the clean file kept or named ``last_clean``: its clean bytes are gone with the
  next save. ``last_clean`` names the newest clean file still on disk that no
  later save rewrites (``save_last="link"``'s symlink is not a save: not scanned).

Strategies that do not write through ``CheckpointIO`` (DeepSpeed, sharded FSDP
folders) and asynchronous ``CheckpointIO`` are not scanned; a warning says so.
A scan that fails is logged and never stops or crashes training. Lightning and
torch are imported by this module only (``import nandoctor`` stays torch-free).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # say how to get it, not just "No module named lightning"
    raise ImportError(
        f"nandoctor.integrations.lightning needs lightning ({exc}); install it with: pip install lightning"
    ) from exc

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.callbacklog import LOSSES, losses_json
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.runs import last_passing_before
from nandoctor.checkpoint.stepfiles import saved_step, step_folder
from nandoctor.integrations.gate import (
    REPORT_NAME,
    CheckpointGate,
    passed_in,
    refuse_failed_resume,
    refuse_resume,
    write_json,
)
from nandoctor.model import ScanReport
from nandoctor.report.json_report import report_to_json

logger = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "NanDoctorCallback"]


class NanDoctorCallback(Callback):
    """Scan each ``.ckpt`` written during ``fit``; optionally stop at the first bad one; keep the last clean one.

    Args:
        stop_on_nonfinite: stop training when a written checkpoint fails the gate (non-finite weights or
            optimizer state, unhealthy weights, overflow with ``target_dtype``, or unreadable).
        target_dtype: also count weights that overflow a cast to ``fp16``, ``bf16``, ``fp8_e4m3``, ``fp8_e5m2``.
        fail_on: which findings fail the gate (default: nonfinite, exploded, outlier, overflow).
        protect_last_clean: hold back ``ModelCheckpoint``'s removal of the newest clean file.
        device: where to count (``cpu`` by default).
        write_report: keep the verdicts in ``nandoctor.json`` beside the files.
        log_metrics: hand each scan's health figures (``nandoctor/nonfinite``, ``nandoctor/max_abs``,
            ``nandoctor/outliers``, ``nandoctor/bad_tensors``; ``verdict.metrics``) to the trainer's
            loggers (CSV, TensorBoard, W&B …) at the checkpoint's step.
    """

    def __init__(
        self,
        stop_on_nonfinite: bool = False,
        *,
        target_dtype: str | None = None,
        fail_on: str | list[str] | None = None,
        protect_last_clean: bool = True,
        device: str = "cpu",
        write_report: bool = True,
        log_metrics: bool = True,
    ) -> None:
        self.gate = CheckpointGate(target_dtype=target_dtype, fail_on=fail_on, device=device)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.protect_last_clean = protect_last_clean
        self.write_report = write_report
        self.log_metrics = log_metrics
        self.stopped_at: int | None = None
        self.held_back: set[str] = set()  # files ModelCheckpoint removed that are kept as the last clean one
        self._clean: dict[str, int] = {}  # path → step: clean files on disk that no save rewrites
        self._written: set[str] = set()  # every path saved during this fit
        self._stop_pending = False
        self._save_pending: int | None = None  # the step whose broken live state rank 0 asks every rank to save
        self._io: _ScanningCheckpointIO | None = None
        self._losses: dict[int, dict[str, float]] = {}  # step of the weights → {"loss": the loss they gave}
        self._batch_step = 0  # the step of the weights the current batch's loss is computed with
        self._ended = False  # fit is over: no loss will confirm the newest clean file any more
        self.nonfinite_loss_at: int | None = None  # the step of the weights that gave the first NaN/Inf loss
        # (every NaN/Inf loss after it is checked again, until the weights are found NaN/Inf)
        self.nonfinite_weights_at: int | None = None  # the step the live weights were found NaN/Inf (after that loss)

    reports = property(lambda self: self.gate.reports)  # file path → report (rank zero only)
    last_clean = property(lambda self: self.gate.last_clean)  # the newest clean file still on disk (never last.ckpt)
    first_bad = property(lambda self: self.gate.first_bad)

    # -- Lightning hooks -------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._io is not None:
            return
        inner = trainer.strategy.checkpoint_io
        if type(inner).__name__ == "AsyncCheckpointIO":  # the file is not written when save returns
            logger.warning("nandoctor: asynchronous CheckpointIO: the saved checkpoints are not scanned")
            return
        self._io = _ScanningCheckpointIO(inner, self, trainer)
        trainer.strategy.checkpoint_io = self._io

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:  # from scratch: an earlier run's baseline in a checkpoint folder goes
            folders = [Path(d) for d in (getattr(c, "dirpath", None) for c in trainer.checkpoint_callbacks) if d]
            for folder in folders:
                self.gate.start(folder, fresh=trainer.global_step == 0)
            if trainer.global_step == 0 and folders:  # (a .ckpt names the module's weights under state_dict.)
                self.gate.keep_initial_baseline(folders, pl_module, prefix="state_dict.")
        if not self._clean:
            self._clean.update(self._previous_clean(trainer))  # a resumed run: the verdicts are on disk
            self._sync()
        if trainer.is_global_zero and trainer.global_step > 0:
            self._resumed_losses(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        previous, self._batch_step = self._batch_step, trainer.global_step
        # every rank reaches this point: they decide together
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self._stop_pending, all=False):
            trainer.should_stop = True
            self._save_together(trainer, previous)  # (before this batch's step)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
    ) -> None:
        # (before ModelCheckpoint's own on_train_batch_end: Lightning runs checkpoint callbacks last)
        step = self._batch_step
        if not trainer.is_global_zero or step in self._losses or step % max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1)):
            return
        loss = _loss_of(outputs)
        if loss is None:
            return
        self._losses[step] = {"loss": loss}
        if step == 0 and math.isfinite(loss) and loss > 0:
            # (the initial weights' own loss: a loss that later "came down" must come near it to be a trained model's;
            # a run at lr 1e2 logged 2.4e6 at step 4 and 230 at step 39, from 4.9 here, and passed CLEAN)
            self.gate.start_loss = loss
        if not math.isfinite(loss) and self.nonfinite_weights_at is None:  # each such loss, until the weights fail
            self._check_live_weights(trainer, pl_module, step, loss)
        self._release_all()  # the newest clean file's weights may have just given their loss

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:  # (a stop found at the last batch: no next batch to save it at)
            self._save_together(trainer, self._batch_step)
        # as Trainer's end-of-training clean-up: the newest clean file (and one before a loss jump) is enough
        self._ended = True
        self._release_all()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._io is not None and trainer.strategy.checkpoint_io is self._io:
            trainer.strategy.checkpoint_io = self._io.inner
        self._io = None
        if stage == "fit" and trainer.is_global_zero and (self.reports or self.nonfinite_weights_at is not None):
            live = (f"; live weights NaN/Inf from step {self.nonfinite_weights_at}"
                    if self.nonfinite_weights_at is not None else "")
            logger.info("nandoctor: %d checkpoint(s) scanned; last clean: %s; first bad: %s%s",
                        len(self.reports), self.last_clean or "none", self.first_bad or "none", live)

    # -- what the CheckpointIO wrapper reports ---------------------------------------------------

    def writing(self, path: Path) -> None:
        """``path`` is about to be written: whatever clean bytes it held are going."""
        if self._clean.pop(str(path), None) is not None:
            self._sync()

    def loading(self, path: Path) -> None:
        """``fit(ckpt_path=…)`` is about to resume from ``path``: a file that fails the check (``ckpt_path="last"``
        takes last.ckpt, often the save that broke) would have training go on from bad weights until the next save.
        Its own verdict in ``nandoctor.json`` says so, and what is loaded now decides (a repaired copy may have
        replaced it); a file of a run saved without this callback has no verdict, so it is scanned (a trial's
        Trainer resumed from NaN weights). Raised with ``stop_on_nonfinite``, logged as an error otherwise."""
        try:
            data = read_json(path.parent / REPORT_NAME, follow_links=False)
        except (OSError, ValueError):
            data = None  # (no verdict written: what is loaded decides)
        entries = data.get("checkpoints") if isinstance(data, dict) else None
        entry = entries.get(path.name) if isinstance(entries, dict) else None
        entry = entry if isinstance(entry, dict) else None
        if entry is not None and passed_in(entry):
            return
        report = None
        try:
            report = self.gate.scan(path)
        except Exception as exc:  # noqa: BLE001 - (its own load says what is wrong with it)
            if entry is None:
                return
            logger.error("nandoctor: could not scan %s before resuming from it (%s)", path, exc)
        if report is not None and verdicts.passes(report, self.gate.fail_on):
            if entry is not None:
                logger.warning("nandoctor: resuming from %s, which failed its check when it was saved and passes it "
                               "now (replaced since)", path)
            return
        clean = data.get("last_clean") if isinstance(data, dict) else None
        clean = (path.parent / clean if isinstance(clean, str) and (path.parent / clean).exists()
                 else self._last_passing_before(path))
        instead = (f"resume from the last clean one instead: fit(ckpt_path={str(clean)!r})" if clean is not None else
                   "no earlier file of this run passes: start again from the base model")
        if entry is not None:
            refuse_failed_resume(path, entry, instead, self.stop_on_nonfinite, path.parent)
        elif report is not None:
            refuse_resume(f"resuming from {path}, which fails nandoctor's check ({verdicts.one_line(report)}): "
                          f"training would go on from it; {instead}", self.stop_on_nonfinite, path.parent)

    def _last_passing_before(self, path: Path) -> Path | None:
        """The newest step file of ``path``'s folder saved before it that passes a scan now (a run without verdicts
        on disk; only when a resume is refused)."""
        found = step_folder(path.parent)
        return last_passing_before(found.steps if found is not None else (), saved_step(path),
                                   lambda file: verdicts.passes(self.gate.scan(file), self.gate.fail_on), skip=path)

    def saved(self, trainer: Trainer, path: Path) -> None:
        """``path`` was just written (on rank zero): scan it, keep the verdict, stop or release files."""
        step = trainer.global_step
        rewritten = str(path) in self._written or _is_last_path(trainer, path)
        self._written.add(str(path))
        from nandoctor.checkpoint.callbacklog import LIVE_LOG, losses_table

        if self.write_report:
            # (first: the losses it is judged with, for a later scan of these bytes; and the folder is a run from its
            # first save on, for that scan and for this check alike: checkpoint/callbacklog.py)
            self._update(path.parent, lambda entries: None)
        # (the losses this callback saw, for a run whose logger writes no metrics.csv beside its checkpoints)
        token = LIVE_LOG.set(losses_table(self._losses) if self._losses else None)
        try:
            passed, report = self.gate.check(path, str(path))
        finally:
            LIVE_LOG.reset(token)
        if report is not None and self.write_report:
            self._write(path, step, report, rewritten)
            self.gate.keep_baseline(path, report)
        if report is not None and self.log_metrics:
            # Straight to the loggers: saves happen in hooks where LightningModule.log is refused
            # (on_validation_end), and the loggers are what every dashboard reads.
            figures = verdicts.metrics(report)
            for sink in trainer.loggers:
                sink.log_metrics(figures, step=step)
        if passed and not rewritten:
            self._clean[str(path)] = step
        self._sync()
        self._release(path.parent)
        if passed is False and self.stop_on_nonfinite and self.stopped_at is None:
            logger.error("nandoctor: stopping training at step %d: %s failed the check; last clean checkpoint: %s",
                         step, path, self.last_clean or "none")
            self._stop(trainer, step)

    def _stop(self, trainer: Trainer, step: int) -> None:
        self.stopped_at = step
        if trainer.world_size > 1:
            self._stop_pending = True  # reduced across ranks at the next batch
        else:
            trainer.should_stop = True

    def _check_live_weights(self, trainer: Trainer, pl_module: LightningModule, step: int, loss: float) -> None:
        """The first non-finite training loss: check the model's weights where they live. NaN there is a broken
        run that no file may show: a ``ModelCheckpoint`` monitoring the loss ranks NaN worst and never writes it
        (a trial trained 18 steps on NaN weights with nothing said), so it fails here as a bad file would."""
        from nandoctor.api import scan_module

        first = self.nonfinite_loss_at is None
        if first:
            self.nonfinite_loss_at = step
        report = scan_module(pl_module)
        if not report.nonfinite:
            if first:  # (once: a streak of bad batches is checked at each loss, said at the first)
                logger.warning("nandoctor: training_step's loss is %s at step %d while the model's weights are finite "
                               "(a bad batch, or an overflow in the forward pass)", loss, step)
            return
        self.nonfinite_weights_at = step
        logger.error("nandoctor: training_step's loss is %s at step %d and the model's weights hold NaN/Inf (%s): no "
                     "checkpoint saved from here on is a resume point (a ModelCheckpoint monitoring the loss may never "
                     "write one to check); last clean checkpoint: %s%s", loss, step,
                     verdicts.one_line(report, label="live weights"), self.last_clean or "none",
                     "; stopping training" if self.stop_on_nonfinite and self.stopped_at is None else "")
        if self.stop_on_nonfinite and self.stopped_at is None:
            self._stop(trainer, step)
            if trainer.world_size > 1:
                self._save_pending = step  # (saved by every rank at the next batch: on_train_batch_start)
            else:
                self._save_the_broken_state(trainer, step)

    def _save_together(self, trainer: Trainer, step: int) -> None:
        """Under DDP, every rank at once: save the state rank 0 found broken (``_save_pending``), if it did. A save is
        collective, so the decision is reduced first; the ranks' weights are one model's replicas, and ``step`` is
        the batch whose weights rank 0 checked (the same on every rank)."""
        if trainer.strategy.reduce_boolean_decision(self._save_pending is not None, all=False):
            self._save_pending = None
            self._save_the_broken_state(trainer, step)

    def _save_the_broken_state(self, trainer: Trainer, step: int) -> None:
        """The stop on live NaN weights writes that state beside the step files (``nandoctor-stopped-step=N.ckpt``,
        scanned and failed as any save), so that the run's scan and a gate after training fail as the callback did:
        no ModelCheckpoint would write it (a trial of the Trainer callback: a run stopped this way scanned as a
        finished one). Under DDP every rank calls it at once (a save is collective: on_train_batch_start)."""
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if not dirpath:
            return
        try:
            trainer.save_checkpoint(Path(dirpath) / f"nandoctor-stopped-step={step}.ckpt")
        except Exception as exc:  # noqa: BLE001  never crash training because of the doctor
            logger.error("nandoctor: could not save the stopped run's state beside its checkpoints (%s: %s)",
                         type(exc).__name__, exc)

    def keeps(self, path: Path) -> bool:
        """Whether the removal ModelCheckpoint asked for is held back (``path`` is a clean file to resume from:
        :meth:`_protected`)."""
        if not self.protect_last_clean or str(path) not in self._protected(path.parent):
            return False
        if str(path) not in self.held_back:
            self.held_back.add(str(path))
            logger.info("nandoctor: keeping %s, the last clean checkpoint, until a newer one passes", path)
        return True

    def removed(self, path: Path) -> None:
        if self._clean.pop(str(path), None) is not None:
            self._sync()
        if self.write_report:
            self._update(path.parent, lambda entries: entries.pop(path.name, None))

    # -- helpers ----------------------------------------------------------------------------------

    def _newest_clean(self, folder: Path | None = None, before: int | None = None) -> str | None:
        """The newest clean file on disk (in ``folder`` when given) that no later save rewrites, saved before
        step ``before`` (default: before the weights that made the loss jump, once a file failed)."""
        before = self._broken_from() if before is None else before
        kept = [(step, name) for name, step in self._clean.items()
                if (folder is None or Path(name).parent == folder) and (before is None or step < before)]
        return max(kept)[1] if kept else None

    def _jump_from(self) -> int | None:
        """The first step whose weights may have made the training loss jump (the run scan's rule,
        checkpoint/trainlog.py, over the losses seen so far), else None."""
        if not self._losses:
            return None
        from nandoctor.checkpoint.callbacklog import losses_table

        log = losses_table(self._losses).train_log()
        return None if log is None else log.broken_weights_from

    def _broken_from(self) -> int | None:
        """Once a file failed, the loss jump's first step (:meth:`_jump_from`): ``last_clean`` lies before it,
        as the run scan's last healthy checkpoint does. A jump alone fails nothing."""
        return self._jump_from() if self.gate.first_bad is not None else None

    def _protected(self, folder: Path) -> set[str]:
        """The clean files of ``folder`` that rotation must not take: the newest; while no loss has been
        computed from its weights yet (until fit ends), the one before it; and, once the loss jumped, the newest one before
        the jump (should a file fail later, that is where the run resumes: :meth:`_broken_from`)."""
        kept = sorted((step, name) for name, step in self._clean.items() if Path(name).parent == folder)
        protected = {name for _, name in kept[-1:]}
        if len(kept) >= 2 and max(self._losses, default=-1) < kept[-1][0] and not self._ended:
            protected.add(kept[-2][1])
        jump = self._jump_from()
        before_jump = self._newest_clean(folder, before=jump) if jump is not None else None
        return protected | ({before_jump} if before_jump is not None else set())

    def _sync(self) -> None:
        self.gate.last_clean = self._newest_clean()

    def _release_all(self) -> None:
        for folder in {Path(h).parent for h in self.held_back}:
            self._release(folder)

    def _release(self, folder: Path) -> None:
        """Remove the files held back in ``folder`` that are no longer protected (a newer clean file, its
        loss seen)."""
        protected = self._protected(folder)
        for held in sorted(h for h in self.held_back - protected if Path(h).parent == folder):
            self.held_back.discard(held)
            if self._io is not None:
                self._io.remove_checkpoint(held)

    def _write(self, path: Path, step: int, report: ScanReport, rewritten: bool) -> None:
        data = report_to_json(report)
        entry = {
            "step": step,
            "rewritten": rewritten,
            "gate": self.gate.gate(report),
            "summary": data["summary"],
            "bad_layer_ranges": data["bad_layer_ranges"],
            "errors": data["errors"],
        }
        self._update(path.parent, lambda entries: entries.__setitem__(path.name, entry))

    def _update(self, folder: Path, change: Any) -> None:
        """Read ``folder/nandoctor.json``, apply ``change`` to its ``checkpoints`` map, write it back."""
        file = folder / REPORT_NAME
        try:
            data = read_json(file, follow_links=False)  # (nandoctor's own file: a link there is not followed)
        except (OSError, ValueError):
            data = {}
        entries = data.get("checkpoints") if isinstance(data, dict) else None
        entries = entries if isinstance(entries, dict) else {}
        change(entries)
        broken_from = self._broken_from()
        by_step = _by_step(entries)  # (a step that is no integer in the file read: -1, never a TypeError)
        healthy = [n for n, e in entries.items() if _kept_clean(e) and (folder / n).exists()
                   and (broken_from is None or by_step(n)[0] < broken_from)]
        bad = [n for n, e in entries.items() if isinstance(e, dict) and not passed_in(e)]
        write_json(file, {
            "checkpoints": dict(sorted(entries.items(), key=lambda item: by_step(item[0]))),
            "last_clean": max(healthy, key=by_step, default=None),
            "first_bad": min(bad, key=by_step, default=None),
            LOSSES: losses_json(self._losses),  # (what the verdicts were judged with: checkpoint/callbacklog.py)
        })

    def _resumed_losses(self, trainer: Trainer) -> None:
        """A resumed run: the losses an earlier fit kept in its ``nandoctor.json`` files, of the weights before the
        resumed step (those from it on were another trajectory's), go before this fit's: its early loss is the run's,
        and the next write keeps them (checkpoint/callbacklog.py)."""
        from nandoctor.checkpoint.callbacklog import read_losses

        for callback in trainer.checkpoint_callbacks:
            dirpath = getattr(callback, "dirpath", None)
            earlier = read_losses(Path(dirpath)) if dirpath else {}
            self._losses = {**{s: row for s, row in earlier.items() if s < trainer.global_step}, **self._losses}

    def _previous_clean(self, trainer: Trainer) -> dict[str, int]:
        """The files a previous fit's ``nandoctor.json`` says passed, still there, that no save rewrites."""
        found: dict[str, int] = {}
        for callback in trainer.checkpoint_callbacks:
            dirpath = getattr(callback, "dirpath", None)
            if not dirpath:
                continue
            try:
                data = read_json(Path(dirpath) / REPORT_NAME, follow_links=False)
            except (OSError, ValueError):
                continue
            entries = data.get("checkpoints") if isinstance(data, dict) else None
            last = re.compile(rf"^{re.escape(getattr(callback, 'CHECKPOINT_NAME_LAST', 'last'))}(-\d+)?\.ckpt$")
            for name, entry in (entries or {}).items() if isinstance(entries, dict) else ():
                if (_kept_clean(entry) and not last.match(name) and (Path(dirpath) / name).exists()
                        and isinstance(entry.get("step"), int)):
                    found[str(Path(dirpath) / name)] = entry["step"]
        return found


def _loss_of(outputs: Any) -> float | None:
    """The loss ``training_step`` returned (a tensor, or a dict's ``"loss"``), as a float; None without one."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(loss.detach()) if loss is not None and loss.numel() == 1 else None
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def _kept_clean(entry: Any) -> bool:
    """Whether a ``nandoctor.json`` entry is a clean file that stays clean (not one a later save rewrites)."""
    return passed_in(entry) and not entry.get("rewritten")


def _is_last_path(trainer: Trainer, path: Path) -> bool:
    """Whether ``path`` is a ``ModelCheckpoint``'s ``save_last`` file (it sets ``last_model_path`` before saving)."""
    target = os.path.abspath(path)
    lasts = (getattr(callback, "last_model_path", "") for callback in trainer.checkpoint_callbacks)
    return any(last and os.path.abspath(last) == target for last in lasts)


def _by_step(entries: dict[str, Any]) -> Any:
    def key(name: str) -> tuple[int, str]:
        entry = entries.get(name)
        step = entry.get("step") if isinstance(entry, dict) else None
        return (step if isinstance(step, int) else -1, name)

    return key


class _ScanningCheckpointIO(CheckpointIO):
    """The strategy's own ``CheckpointIO``, plus: scan each file after it is written; hold back the
    removal of the newest clean one."""

    def __init__(self, inner: CheckpointIO, doctor: NanDoctorCallback, trainer: Trainer) -> None:
        self.inner = inner
        self.doctor = doctor
        self.trainer = trainer

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self.doctor.writing(Path(path))
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self.doctor.saved(self.trainer, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        self.doctor.loading(Path(path))
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        if self.doctor.keeps(Path(path)):
            return
        self.inner.remove_checkpoint(path)
        self.doctor.removed(Path(path))

    def teardown(self) -> None:
        self.inner.teardown()
