"""``NanDoctorCallback``: scan every checkpoint a Hugging Face ``Trainer`` saves, before it is trusted.

    trainer = Trainer(..., callbacks=[NanDoctorCallback(stop_on_nonfinite=True)])

On each save the new ``checkpoint-N`` is scanned from disk (on the CPU by
default: the files were just written, so they are in the page cache, and the
GPU stays with training); the verdict is written into the folder as
``nandoctor.json`` and logged. With ``stop_on_nonfinite=True`` training stops
at the first checkpoint that fails the gate.

The newest clean checkpoint is kept out of ``save_total_limit`` rotation.
Trainer rotates inside ``_save_checkpoint``, *before* ``on_save`` runs, and
always keeps ``state.best_model_checkpoint``; so after a clean save this
callback points ``best_model_checkpoint`` at it, ready for the next rotation.
When the run tracks its own best model (``metric_for_best_model``), that
field is the user's, and the callback instead raises ``args.save_total_limit``
just enough that the newest clean checkpoint survives (logged; back to the
user's limit once a newer clean checkpoint exists).

A scan that fails for any reason is logged and never stops or crashes training.

Each scan's health figures (``nandoctor/nonfinite``, ``nandoctor/max_abs``,
``nandoctor/outliers``, ``nandoctor/bad_tensors``; ``verdict.metrics``) go into
``state.log_history`` at the checkpoint's step, and into the ``logs`` of the next
``on_log``, where the reporting callbacks (``report_to``: TensorBoard, W&B,
MLflow …) see them, provided this callback runs before them. Trainer puts the
callbacks passed as ``callbacks=[...]`` after its reporters, so add it with
:func:`attach` instead::

    trainer = Trainer(...)
    attach(trainer, NanDoctorCallback(stop_on_nonfinite=True))

Under ``torch.distributed`` (DDP, FSDP, DeepSpeed) only world process zero
scans, since it is the one that wrote the files and the others may reach
``on_save`` before it has finished; its verdict is broadcast, so every rank
stops at the same step (a rank that stopped alone would hang the others).
``reports`` is filled on process zero only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

try:
    from transformers import (
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as exc:  # say how to get it, not just "No module named transformers"
    raise ImportError(
        f"nandoctor.integrations.transformers needs transformers ({exc}); "
        "install it with: pip install 'nandoctor[transformers]'"
    ) from exc

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.jsonfiles import read_json
from nandoctor.checkpoint.runs import checkpoints_in
from nandoctor.model import ScanReport
from nandoctor.report.json_report import report_to_json as _to_json

logger = logging.getLogger(__name__)

REPORT_NAME = "nandoctor.json"
PREFIX = "checkpoint"


class NanDoctorCallback(TrainerCallback):
    """Scan each saved checkpoint; optionally stop training at the first bad one; keep the last clean one.

    Args:
        stop_on_nonfinite: stop training (``control.should_training_stop``) when a
            saved checkpoint fails the gate: non-finite weights, overflow risk when
            ``target_dtype`` is given (as ``fail_on`` picks), or unreadable files.
        target_dtype: also count weights that overflow when cast to ``fp16``,
            ``bf16``, ``fp8_e4m3`` or ``fp8_e5m2``.
        fail_on: which findings fail the gate (default: ``nonfinite`` and ``overflow``).
        protect_last_clean: keep the newest clean checkpoint through ``save_total_limit`` rotation.
        device: where to count (``cpu`` by default; ``auto``/``cuda`` to use the GPU).
        write_report: write ``nandoctor.json`` into each checkpoint folder.
        log_metrics: log the health figures of each save (see the module docstring and :func:`attach`).
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
        self.stop_on_nonfinite = stop_on_nonfinite
        self.target_dtype = target_dtype
        self.fail_on = verdicts.parse_fail_on(fail_on)
        verdicts.require_target_for_overflow(self.fail_on, target_dtype)  # a gate that passes anything is a bug
        self.protect_last_clean = protect_last_clean
        self.device = device
        self.write_report = write_report
        self.reports: dict[int, ScanReport] = {}  # step → report, for code that wants the details
        self.last_clean: str | None = None  # path of the newest checkpoint that passed
        self.first_bad: str | None = None
        self.stopped_at: int | None = None
        self._user_limit: int | None = None
        self._limit_raised = False
        self.log_metrics = log_metrics
        self._pending: dict[str, float] | None = None  # figures of the last save, for the next on_log
        self._ahead_of_reporters = False  # set by attach()
        self._warned_order = False

    # -- Trainer events -------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._user_limit = args.save_total_limit
        if self.last_clean is None:
            self.last_clean = self._previous_clean(args)  # a resumed run: verdicts are on disk
            if self.last_clean:
                self._protect(args, state)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        folder = Path(str(args.output_dir)) / f"{PREFIX}-{state.global_step}"
        # Under torch.distributed only process zero writes the checkpoint, and nothing makes the other
        # ranks wait for it before on_save: they would scan a half-written folder (or none) and decide
        # differently, and a rank that stops alone hangs the others at the next collective. So process
        # zero scans and every rank follows its verdict.
        distributed = _distributed()
        passed: bool | None = None  # None: not scanned, training goes on
        if state.is_world_process_zero or distributed is None:
            passed = self._check(folder, state)
        if distributed is not None:
            box = [passed]
            distributed.broadcast_object_list(box, src=0)
            passed = box[0]
        report = self.reports.get(state.global_step)
        if self.log_metrics and report is not None and state.is_world_process_zero:
            self._pending = verdicts.metrics(report)
            state.log_history.append({**self._pending, "step": state.global_step})
        if passed is None:
            return control
        if passed:
            self.last_clean = str(folder)
            self._protect(args, state)
            return control
        if self.first_bad is None:
            self.first_bad = str(folder)
        self._protect(args, state)
        if self.stop_on_nonfinite:
            control.should_training_stop = True
            self.stopped_at = state.global_step
            if state.is_world_process_zero:
                logger.error(
                    "nandoctor: stopping training at step %d: %s failed the check; last clean checkpoint: %s",
                    state.global_step,
                    folder,
                    self.last_clean or "none",
                )
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        # Trainer hands every callback the same dict: what is added here reaches the callbacks after this one.
        if self._pending is None or logs is None:
            return
        logs.update(self._pending)
        self._pending = None
        reporters = [r for r in (args.report_to or []) if r != "none"]
        if reporters and not self._ahead_of_reporters and not self._warned_order:
            self._warned_order = True
            logger.warning(
                "nandoctor: health metrics are in state.log_history but %s may not see them: Trainer calls "
                "its reporting callbacks before the ones passed in callbacks=[...]; add the callback with "
                "nandoctor.integrations.transformers.attach(trainer, callback) instead",
                ", ".join(map(str, reporters)),
            )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._limit_raised and self._user_limit is not None:
            args.save_total_limit = self._user_limit  # leave the arguments as we found them
        if state.is_world_process_zero and self.reports:
            logger.info(
                "nandoctor: %d checkpoint(s) scanned; last clean: %s; first bad: %s",
                len(self.reports),
                self.last_clean or "none",
                self.first_bad or "none",
            )

    # -- helpers --------------------------------------------------------------------------------

    def _check(self, folder: Path, state: TrainerState) -> bool | None:
        """Scan ``folder``, record and log the verdict: passed, failed, or None when it could not be scanned."""
        try:
            if not folder.is_dir():  # (may raise, e.g. PermissionError: then too, a verdict must be broadcast)
                if state.is_world_process_zero:
                    logger.warning("nandoctor: checkpoint folder %s not found after the save; not scanned", folder)
                return None
            report = self._scan(folder)
            self.reports[state.global_step] = report
            passed = verdicts.passes(report, self.fail_on)
            if state.is_world_process_zero:
                self._write(folder, report)
                line = verdicts.one_line(report, self.fail_on, label=str(folder))
                (logger.info if passed else logger.warning)("nandoctor: %s", line)
        except Exception as exc:  # noqa: BLE001  never crash training (nor leave other ranks waiting) because of the doctor
            logger.error("nandoctor: could not scan %s (%s: %s); training goes on", folder, type(exc).__name__, exc)
            return None
        return passed

    def _scan(self, folder: Path) -> ScanReport:
        from nandoctor.api import scan

        return scan(folder, device=self.device, target_dtype=self.target_dtype)

    def _write(self, folder: Path, report: ScanReport) -> None:
        if not self.write_report:
            return
        data = _to_json(report)
        data["gate"] = {
            "fail_on": sorted(self.fail_on),
            "exit_code": verdicts.exit_code(report, self.fail_on),
            "passed": verdicts.passes(report, self.fail_on),
        }
        tmp = folder / f".{REPORT_NAME}.writing"
        try:
            tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            os.replace(tmp, folder / REPORT_NAME)
        except (OSError, ValueError) as exc:
            logger.error("nandoctor: could not write %s (%s)", folder / REPORT_NAME, exc)
            tmp.unlink(missing_ok=True)

    def _previous_clean(self, args: TrainingArguments) -> str | None:
        try:
            found = checkpoints_in(Path(str(args.output_dir)))
        except OSError:
            return None
        for _, folder in reversed(found):
            try:
                data = read_json(folder / REPORT_NAME)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("gate"), dict) and data["gate"].get("passed") is True:
                return str(folder)
        return None

    def _tracks_best(self, args: TrainingArguments) -> bool:
        return bool(args.metric_for_best_model) or bool(args.load_best_model_at_end)

    def _protect(self, args: TrainingArguments, state: TrainerState) -> None:
        """Make the next rotation keep ``self.last_clean``."""
        if not self.protect_last_clean or self.last_clean is None:
            return
        if not self._tracks_best(args):
            # rotate_checkpoints always keeps best_model_checkpoint; compared as str(Path(...)).
            state.best_model_checkpoint = str(Path(self.last_clean))
            return
        limit = self._user_limit
        if limit is None or limit <= 0:
            return  # nothing is ever deleted
        clean_step = _step(self.last_clean)
        try:
            steps = [s for s, _ in checkpoints_in(Path(str(args.output_dir)))]
        except OSError:
            return
        best_step = _step(state.best_model_checkpoint) if state.best_model_checkpoint else None
        # Checkpoints from the clean one on, the one the next save adds, and the user's best if older:
        # with that many kept, rotation deletes only checkpoints older than the clean one.
        needed = sum(1 for s in steps if s >= clean_step) + 1
        if best_step is not None and best_step < clean_step and best_step in steps:
            needed += 1
        new_limit = max(limit, needed)
        if new_limit != args.save_total_limit:
            if new_limit > limit and state.is_world_process_zero:
                logger.warning(
                    "nandoctor: keeping %s through rotation: save_total_limit %d → %d until a newer clean checkpoint",
                    self.last_clean,
                    limit,
                    new_limit,
                )
            args.save_total_limit = new_limit
            self._limit_raised = new_limit != limit


def attach(trainer: Any, callback: NanDoctorCallback | None = None) -> NanDoctorCallback:
    """Add ``callback`` (a new default ``NanDoctorCallback`` when None) to ``trainer`` ahead of its reporters.

    Trainer calls the reporting callbacks of ``report_to`` before any callback passed to it, and a
    callback is handed no Trainer to change that: placed first (after ``DefaultFlowCallback``, which
    drives logging and saving), the doctor's figures are in ``logs`` before TensorBoard, W&B or MLflow
    read them. An instance already added is moved, never doubled.
    """
    doctor = callback if callback is not None else NanDoctorCallback()
    handler = trainer.callback_handler
    handler.callbacks = [c for c in handler.callbacks if c is not doctor]
    from transformers.trainer_callback import DefaultFlowCallback

    at = next((i + 1 for i, c in enumerate(handler.callbacks) if isinstance(c, DefaultFlowCallback)), 0)
    handler.callbacks.insert(at, doctor)
    doctor._ahead_of_reporters = True
    return doctor


def _step(path: str | None) -> int:
    name = Path(path or "").name
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _distributed() -> Any:
    """``torch.distributed`` when this process is one of several in an initialised process group, else None."""
    try:
        import torch.distributed as dist  # torch is already loaded in any process that runs a Trainer
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist
