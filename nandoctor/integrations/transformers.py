"""``NanDoctorCallback``: scan every checkpoint a Hugging Face ``Trainer`` saves, before it is trusted.

    trainer = Trainer(..., callbacks=[NanDoctorCallback(stop_on_nonfinite=True)])

On each save the new ``checkpoint-N`` is scanned from disk (integrations/gate.py,
shared with the Lightning callback); the verdict is written into the folder as
``nandoctor.json`` and logged. With ``stop_on_nonfinite=True`` training stops
at the first checkpoint that fails the gate.

The newest clean checkpoint is kept out of ``save_total_limit`` rotation. Trainer
rotates inside ``_save_checkpoint``, *before* ``on_save`` runs, keeping only
``state.best_model_checkpoint`` and the newest checkpoints, so the callback takes
rotation over for the run (``args.save_total_limit`` is ``None`` while training,
the user's value again at the end) and rotates in ``on_save`` as Trainer would,
after its verdict, protecting the newest clean checkpoint and, while that one is
the newest save, the clean one before it: the trainer log may yet show that the
newest one's weights made the loss jump (trainlog.py), and the run's last healthy
checkpoint is then the one before. Once the live ``log_history`` shows a loss jump,
the newest clean checkpoint before the weights that made it is protected too (the
loss may jump several saves before any weight fails). A bad checkpoint after a
loss jump moves ``last_clean`` back before the jump, as ``nandoctor scan RUN`` does.
However long a run of bad saves is, at most ``save_total_limit + 1`` checkpoints
are kept (one more while unconfirmed, one more after a jump); with
``save_total_limit=1`` the last clean one is left at the end (Trainer's own
end-of-training clean-up keeps only the best), and the newest beside it when it failed. When the run tracks its own best
model (``metric_for_best_model``) that one is kept too. A clean save logs nothing
but its verdict.

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

Where every rank writes its own files (a DCP save: ``__R_K.distcp``; DeepSpeed
ZeRO: ``global_stepN/*zero_pp_rank_R_*``), each rank finds its own files in the
new folder, and then every rank checks the files it wrote with
:func:`~nandoctor.integrations.saved.verify_saved` (one ``all_reduce``; every
rank gets the same verdict) instead of process zero reading everything.
``reports`` then holds each rank's report of its own files; ``nandoctor.json``
(written by process zero) holds process zero's report and the agreed gate, with
every rank's exit code. ``target_dtype`` is checked the same way: each rank counts
the overflow of its own files (the counts of the ranks add up to a full scan's).
No health figures are logged for a per-rank check (each rank saw only its files).
"""

from __future__ import annotations

import contextlib
import logging
import math
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
from nandoctor.checkpoint.runs import checkpoints_in, last_passing_before
from nandoctor.integrations.gate import (
    REPORT_NAME,
    CheckpointGate,
    distributed,
    passed_in,
    refuse_failed_resume,
    refuse_resume,
    write_json,
)
from nandoctor.integrations.saved import verify_saved, wrote_own_files
from nandoctor.model import ScanReport
from nandoctor.wording import first_few

logger = logging.getLogger(__name__)

PREFIX = "checkpoint"
__all__ = ["REPORT_NAME", "NanDoctorCallback"]


class NanDoctorCallback(TrainerCallback):
    """Scan each saved checkpoint; optionally stop training at the first bad one; keep the last clean one.

    Args:
        stop_on_nonfinite: stop training (``control.should_training_stop``) when a
            saved checkpoint fails the gate: non-finite weights, overflow risk when
            ``target_dtype`` is given (as ``fail_on`` picks), or unreadable files.
        target_dtype: also count weights that overflow when cast to ``fp16``,
            ``bf16``, ``fp8_e4m3`` or ``fp8_e5m2``.
        fail_on: which findings fail the gate (default: nonfinite, exploded, outlier, overflow).
        protect_last_clean: keep the checkpoint to resume from through ``save_total_limit`` rotation (the
            newest clean one; the clean one before it until a loss is logged from the newest's weights; once
            the loss jumped, the newest clean one before the jump).
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
        self.gate = CheckpointGate(target_dtype=target_dtype, fail_on=fail_on, device=device)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.protect_last_clean = protect_last_clean
        self.write_report = write_report
        self.stopped_at: int | None = None
        self._user_limit: int | None = None
        self._rotating = False  # True while this callback rotates in Trainer's place (a tracked best model)
        self._kept_logged: set[str] = set()  # clean checkpoints already said to be kept (said once each)
        self.log_metrics = log_metrics
        self._pending: dict[str, float] | None = None  # figures of the last save, for the next on_log
        self._passed: list[tuple[int, str]] = []  # (step, folder) of every checkpoint that passed, oldest first
        self._ahead_of_reporters = False  # set by attach()
        self._warned_order = False
        self.nonfinite_loss_at: int | None = None  # the step of the first NaN/Inf loss or grad_norm logged
        self.nonfinite_weights_at: int | None = None  # the step the live weights were found NaN/Inf (after that log)

    # The gate's options and verdicts, under the names this callback has always had.
    target_dtype = property(lambda self: self.gate.target_dtype)
    fail_on = property(lambda self: self.gate.fail_on)
    device = property(lambda self: self.gate.device)
    reports = property(lambda self: self.gate.reports)  # step → report (process zero only)

    @property
    def last_clean(self) -> str | None:
        """Path of the newest checkpoint that passed."""
        return self.gate.last_clean

    @last_clean.setter
    def last_clean(self, value: str | None) -> None:
        self.gate.last_clean = value

    @property
    def first_bad(self) -> str | None:
        return self.gate.first_bad

    # -- Trainer events -------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._user_limit = args.save_total_limit
        if state.is_world_process_zero:  # (the one that writes the checkpoints and their baseline)
            self.gate.start(Path(args.output_dir or "."), fresh=state.global_step == 0)
            if state.global_step == 0 and kwargs.get("model") is not None:
                self.gate.keep_initial_baseline([Path(args.output_dir or ".")], kwargs["model"])
        if self.protect_last_clean and self._user_limit and self._user_limit > 0:
            # Trainer's rotation keeps only the newest and one best: this callback rotates instead (on_save),
            # keeping the clean checkpoints a resume may need too; the user's value is back at the end.
            args.save_total_limit = None
            self._rotating = True
        if self.last_clean is None:
            self.last_clean = self._previous_clean(args)  # a resumed run: verdicts are on disk
            if self.last_clean:
                self._protect(args, state)
        if state.global_step > 0:
            self._refuse_a_failed_resume(args, state, kwargs.get("model"), kwargs.get("optimizer"),
                                         kwargs.get("lr_scheduler"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        folder = Path(args.output_dir or ".") / f"{PREFIX}-{state.global_step}"
        # Under torch.distributed only process zero writes the checkpoint, and nothing makes the other
        # ranks wait for it before on_save: they would scan a half-written folder (or none) and decide
        # differently, and a rank that stops alone hangs the others at the next collective. So process
        # zero scans and every rank follows its verdict. Where each rank wrote its own files (DCP, DeepSpeed
        # ZeRO), each rank finds them already and checks them itself: every rank takes the same branch.
        dist = distributed()
        passed: bool | None = None  # None: not scanned, training goes on
        per_rank = dist is not None and wrote_own_files(folder, dist.get_rank())
        if per_rank:
            passed = self._check_ranks(folder, state)  # every rank checks the files it wrote; one all_reduce
        elif state.is_world_process_zero or dist is None:
            passed = self._check(folder, state)
        if dist is not None and not per_rank:
            box = [passed]
            dist.broadcast_object_list(box, src=0)
            passed = box[0]
            if passed is not None and not state.is_world_process_zero:
                self.gate.record(str(folder), passed)
        report = self.reports.get(state.global_step)
        if self.log_metrics and report is not None and state.is_world_process_zero and not per_rank:
            self._pending = verdicts.metrics(report)
            state.log_history.append({**self._pending, "step": state.global_step})
        if passed:
            self._passed.append((state.global_step, str(folder)))
        if passed is not None:
            self._move_back_before_a_loss_jump(state)
            self._protect(args, state)
        if passed is False and self.stop_on_nonfinite:
            control.should_training_stop = True
            self.stopped_at = state.global_step
            if state.is_world_process_zero:
                logger.error(
                    "nandoctor: stopping training at step %d: %s failed the check; last clean checkpoint: %s",
                    state.global_step,
                    folder,
                    self.last_clean or "none",
                )
        if self._rotating and args.should_save:
            self._rotate(args, state)
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        if logs is not None and self.nonfinite_weights_at is None and distributed() is None:
            logged = [(key, logs[key]) for key in ("loss", "grad_norm")
                      if isinstance(logs.get(key), float) and not math.isfinite(logs[key])]
            if logged and kwargs.get("model") is not None:
                self._check_live_weights(state, control, kwargs["model"], logged)
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
        stopped_live = self.stopped_at is not None and self.stopped_at == self.nonfinite_weights_at
        if stopped_live and state.is_world_process_zero \
                and not (Path(args.output_dir or ".") / f"{PREFIX}-{self.stopped_at}").is_dir():
            # (a save_strategy of its own, "best", decides the save the stop asked for: said, since a scan of the
            # run would otherwise pass its newest checkpoint, the last clean one, as a finished run)
            logger.error("nandoctor: training stopped at step %d on NaN/Inf weights and no checkpoint of that state was "
                         "saved (save_strategy %s): the run did not finish; its newest checkpoint on disk is the last "
                         "clean one, %s", self.stopped_at, getattr(args.save_strategy, "value", args.save_strategy),
                         self.last_clean or "none")
        if self._rotating:
            if self._user_limit == 1 and args.should_save:
                self._keep_only_the_resume_point(args, state)  # Trainer's own end-of-training clean-up, skipped
            args.save_total_limit = self._user_limit  # leave the arguments as we found them
            self._rotating = False
        if state.is_world_process_zero and self.reports:
            logger.info(
                "nandoctor: %d checkpoint(s) scanned; last clean: %s; first bad: %s",
                len(self.reports),
                self.last_clean or "none",
                self.first_bad or "none",
            )

    # -- helpers --------------------------------------------------------------------------------

    def _check_live_weights(self, state: TrainerState, control: TrainerControl, model: Any,
                            logged: list[tuple[str, float]]) -> None:
        """A logged loss or grad_norm NaN/Inf: check the model's weights where they live, as the Lightning callback
        does. A trial: grad_norm was NaN from step 13 and, with save_steps=100, training went on to step 100 on NaN
        weights before a save was checked. Single process only (a stop decided on one rank would hang the others)."""
        from nandoctor.api import scan_module

        said = ", ".join(f"{key} {value}" for key, value in logged)
        first = self.nonfinite_loss_at is None
        if first:
            self.nonfinite_loss_at = state.global_step
        report = scan_module(model)
        if not report.nonfinite:
            if first:  # (once: a streak of bad batches is said at its first)
                logger.warning("nandoctor: the logged %s at step %d while the model's weights are finite (a bad batch, "
                               "or an overflow in the forward pass)", said, state.global_step)
            return
        self.nonfinite_weights_at = state.global_step
        stop = self.stop_on_nonfinite and self.stopped_at is None
        logger.error("nandoctor: the logged %s at step %d and the model's weights hold NaN/Inf (%s): no checkpoint saved "
                     "from here on is a resume point; last clean checkpoint: %s%s", said, state.global_step,
                     verdicts.one_line(report, label="live weights"), self.last_clean or "none",
                     "; stopping training (Trainer is asked to save this state: the run's failed newest checkpoint)" if stop else "")
        if stop:
            control.should_training_stop = True
            # (saved, checked and kept as the run's failed newest checkpoint: stopped here without a save, the run
            # would scan healthy afterwards and a gate after training would pass it)
            control.should_save = True
            self.stopped_at = state.global_step

    def _instead(self, args: TrainingArguments, state: TrainerState) -> str:
        clean = self.last_clean or self._last_passing_on_disk(args, state)
        return (f"resume from the last clean one instead: trainer.train(resume_from_checkpoint={clean!r})"
                if clean else "no earlier checkpoint of the run passes the check: start again from the base model")

    def _last_passing_on_disk(self, args: TrainingArguments, state: TrainerState) -> str | None:
        """The newest checkpoint before the resumed step that passes a scan now, for a run saved without this
        callback (no verdicts on disk; only when a resume is refused: training stops anyway)."""
        from nandoctor.api import scan

        try:
            found = checkpoints_in(Path(args.output_dir or "."))
        except OSError:
            return None
        clean = last_passing_before(found, state.global_step,
                                    lambda folder: verdicts.passes(scan(folder, device=self.device), self.fail_on))
        return None if clean is None else str(clean)

    def _refuse_a_failed_resume(self, args: TrainingArguments, state: TrainerState, model: Any, optimizer: Any,
                                scheduler: Any) -> None:
        """A resumed run about to train on from a state that breaks it, raised with ``stop_on_nonfinite``, an error
        otherwise:

        - the checkpoint at the resumed step failed, by its own ``nandoctor.json`` (``resume_from_checkpoint=True``
          takes the newest, often the one that broke), and the weights loaded fail too. Which folder Trainer
          loaded is not handed to callbacks (a repaired copy resumes at the same step), so the weights it loaded
          decide;
        - the optimizer or scheduler loaded holds NaN/Inf where a step uses it (a learning rate, betas, eps, a
          moment), whatever the folder and its verdict: the first step makes every weight NaN (a trial: a
          checkpoint whose only fault was a NaN learning rate was resumed with a warning, its weights passing).
          Trainer hands the callbacks its optimizer and scheduler once their state is loaded.

        Healthy weights and optimizer at a failed step (a repaired copy) resume with a warning; a checkpoint saved
        after a loss jump (``resume_point: false``) is said at ERROR."""
        # (first, on every rank: one collective)
        folder = Path(args.output_dir or ".") / f"{PREFIX}-{state.global_step}"
        broken, bad_weights = self._loaded_state_faults(model, optimizer, scheduler, folder)
        try:
            data = read_json(folder / REPORT_NAME, follow_links=False)
        except (OSError, ValueError):
            data = None  # (no verdict written: the loaded state alone decides)
        run = Path(args.output_dir or ".")
        saved_failed = data is not None and not passed_in(data)
        # what was loaded decides (a repaired copy resumes at the same step); without a model, the saved verdict
        failed = bool(bad_weights) if model is not None else saved_failed
        if failed and saved_failed:
            refuse_failed_resume(folder, data, self._instead(args, state), self.stop_on_nonfinite, run)
        elif failed:  # (a run saved without this callback: no verdict on disk, and a trial trained on from NaN)
            refuse_resume(f"resuming at step {state.global_step} with weights that fail nandoctor's check "
                          f"({first_few(bad_weights, 3)}): training would go on from them; {self._instead(args, state)}",
                          self.stop_on_nonfinite, run)
        elif broken:
            refuse_resume(f"resuming at step {state.global_step} with an optimizer or scheduler state holding NaN/Inf "
                          f"({first_few(broken, 3)}): its first step makes every "
                          f"weight NaN; {self._instead(args, state)}", self.stop_on_nonfinite, run)
        elif saved_failed:
            logger.warning("nandoctor: resuming at step %d, where %s failed its check when it was saved, but the "
                           "weights and optimizer state loaded pass it (a repaired copy, or a failure outside them: "
                           "its nandoctor.json says which)", state.global_step, folder)
        elif isinstance(data, dict) and data.get("resume_point") is False:
            logger.error("nandoctor: resuming at step %d, as %s, which is no resume point (%s); %s",
                         state.global_step, folder, data.get("resume_point_why"), self._instead(args, state))

    def _loaded_state_faults(self, model: Any, optimizer: Any, scheduler: Any,
                             folder: Path | None = None) -> tuple[list[str], list[str]]:
        """The names of what the loaded optimizer and scheduler hold as NaN/Inf (``loaded_training_state``), and of
        the loaded model's weights that fail ``fail_on``, judged within the run as the checkpoint ``folder`` it was
        loaded at would be (weights finite but grown far past the run's first healthy checkpoint are diverged: a
        helper's resume of such a checkpoint trained on at a loss of 32 with no word); agreed by every rank in one
        collective (a sharded model's or optimizer's tensors differ by rank: all stop together, or none does)."""
        from nandoctor.api import scan_module, scan_state_dict

        loaded = loaded_training_state(optimizer, scheduler)
        broken: list[str] = []
        if loaded:
            report = scan_state_dict(loaded)
            # (NaN/Inf, and a variance's negative values: the only exploded ones optimizer state has)
            broken = [report.tensors.refs[i].name for i in verdicts.failing_rows(report, (verdicts.NONFINITE,
                                                                                          verdicts.EXPLODED))]
        bad_weights: list[str] = []
        if model is not None:
            report = scan_module(model)
            bad_weights = [report.tensors.refs[i].name for i in verdicts.failing_rows(report, self.fail_on)]
            if not bad_weights and folder is not None and folder.is_dir() and verdicts.EXPLODED in self.fail_on:
                from functools import partial

                from nandoctor.checkpoint.runcontext import judge_in_run
                from nandoctor.engine import scan

                why = verdicts.diverged_why(judge_in_run(report, folder, partial(scan, device="cpu")))
                bad_weights = [f"every weight, diverged: {why}"] if why else []
        dist = distributed()
        if dist is not None:
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, (broken, bad_weights))
            broken = list(dict.fromkeys(name for pair in everyone for name in (pair or ((), ()))[0]))
            bad_weights = list(dict.fromkeys(name for pair in everyone for name in (pair or ((), ()))[1]))
        return broken, bad_weights

    def _check(self, folder: Path, state: TrainerState) -> bool | None:
        """Scan ``folder``, record and log the verdict: passed, failed, or None when it could not be scanned."""
        try:
            if not folder.is_dir():  # (may raise, e.g. PermissionError: then too, a verdict must be broadcast)
                logger.warning("nandoctor: checkpoint folder %s not found after the save; not scanned", folder)
                return None
        except OSError as exc:
            logger.error("nandoctor: could not scan %s (%s); training goes on", folder, exc)
            return None
        passed, report = self.gate.check(folder, state.global_step, scan=self._scan)
        if report is not None and self.write_report:
            write_json(folder / REPORT_NAME, self.gate.report_json(report))
            self.gate.keep_baseline(folder, report)
        return passed

    def _check_ranks(self, folder: Path, state: TrainerState) -> bool:
        """Every rank checks the files it wrote (verify_saved); the agreed verdict, the same on every rank."""
        result = verify_saved(folder, fail_on=sorted(self.fail_on), device=self.device, target_dtype=self.target_dtype)
        passed = result.weights_ok  # (a config file's values alone: kept as a resume point, as on one process)
        if result.report is not None:
            self.gate.reports[state.global_step] = result.report  # this rank's own files
        self.gate.record(str(folder), passed)
        if state.is_world_process_zero:
            codes = ", ".join(f"rank {r}: {c}" for r, c in enumerate(result.rank_codes))
            (logger.info if passed else logger.warning)(
                "nandoctor: %s %s: each rank checked its own files (exit codes %s)", "PASS" if passed else "FAIL",
                folder, codes)
            if self.write_report:
                data: dict[str, Any] = (self.gate.report_json(result.report) if result.report is not None
                                        else {"error": result.error})
                data["gate"] = {"fail_on": sorted(self.fail_on), "exit_code": result.exit_code, "passed": result.ok,
                                **({"weights_passed": True} if passed and not result.ok else {}),
                                "rank_exit_codes": list(result.rank_codes)}
                write_json(folder / REPORT_NAME, data)
        return passed

    def _scan(self, folder: Path) -> ScanReport:
        return self.gate.scan(folder)

    def _previous_clean(self, args: TrainingArguments) -> str | None:
        """A resumed run: the checkpoints whose ``nandoctor.json`` says they passed (into ``_passed``), and
        the newest of them."""
        try:
            found = checkpoints_in(Path(args.output_dir or "."))
        except OSError:
            return None
        for step, folder in found:
            try:
                data = read_json(folder / REPORT_NAME, follow_links=False)  # (its own file: a link is not followed)
            except (OSError, ValueError):
                continue
            if passed_in(data) and data.get("resume_point") is not False and all(s != step for s, _ in self._passed):
                self._passed.append((step, str(folder)))
        self._passed.sort()
        return self._passed[-1][1] if self._passed else None

    def _tracks_best(self, args: TrainingArguments) -> bool:
        return bool(args.metric_for_best_model) or bool(args.load_best_model_at_end)

    def _protect(self, args: TrainingArguments, state: TrainerState) -> None:
        """Make the next rotation keep ``self.last_clean`` (Trainer's, by pointing best_model_checkpoint at it)."""
        if not self.protect_last_clean or self.last_clean is None or self._tracks_best(args):
            return  # a tracked best: _rotate keeps it
        # rotate_checkpoints always keeps best_model_checkpoint; compared as str(Path(...)).
        state.best_model_checkpoint = str(Path(self.last_clean))

    def _rotate(self, args: TrainingArguments, state: TrainerState) -> None:
        """Trainer's rotation with the newest clean checkpoint protected as well: delete the oldest
        checkpoints until ``save_total_limit`` are left, never the newest, the user's best or the newest clean."""
        import shutil

        limit = self._user_limit or 0
        try:
            found = [str(p) for _, p in checkpoints_in(Path(args.output_dir or "."))]
        except OSError:
            return
        if not found:
            return
        protected = {found[-1]}
        for keep in (state.best_model_checkpoint, self.last_clean, self._unconfirmed_fallback(found),
                     self._before_a_loss_jump(state)):
            if keep is not None:
                protected.add(str(Path(keep)))
        keep_count = max(limit, len(protected & set(found)))
        doomed = [c for c in found if c not in protected][: max(0, len(found) - keep_count)]
        clean = str(Path(self.last_clean)) if self.last_clean else None
        if doomed and clean in found and clean != found[-1] and clean not in self._kept_logged:
            self._kept_logged.add(clean)
            logger.info("nandoctor: keeping the last clean checkpoint %s through save_total_limit rotation", clean)
        for checkpoint in doomed:
            shutil.rmtree(checkpoint, ignore_errors=True)


    def _unconfirmed_fallback(self, found: list[str]) -> str | None:
        """While the newest clean checkpoint is the newest save, no loss has been logged from its weights yet:
        a jump in the next log would make it no resume point. The clean checkpoint before it, then."""
        on_disk = [(step, path) for step, path in self._passed if str(Path(path)) in found]
        if len(on_disk) < 2 or str(Path(on_disk[-1][1])) != found[-1]:
            return None
        return on_disk[-2][1]

    def _clean_before_a_jump(self, state: TrainerState) -> tuple[int, list[str]] | None:
        """Once the loss jumped (the run scan's rule over the live ``log_history``, the log trainer_state.json
        saves: trainlog.py), the first step whose weights may have made it and the clean checkpoints saved
        before it, oldest first; None without a jump."""
        from nandoctor.checkpoint.trainlog import from_log_history

        broken_from = from_log_history("log_history", state.log_history).broken_weights_from
        if broken_from is None:
            return None
        return broken_from, [path for step, path in self._passed if step < broken_from]

    def _before_a_loss_jump(self, state: TrainerState) -> str | None:
        """The newest clean checkpoint before a loss jump: should a later one fail, it is where the run resumes
        (:meth:`_move_back_before_a_loss_jump`), so rotation keeps it. A jump alone fails nothing."""
        found = self._clean_before_a_jump(state)
        return found[1][-1] if found and found[1] else None

    def _move_back_before_a_loss_jump(self, state: TrainerState) -> None:
        """Once a checkpoint failed, a trainer-log loss jump (trainlog.py) says from which step the saved
        weights were already broken, finite as they are: ``last_clean`` is then the newest clean checkpoint
        before it still on disk, as ``nandoctor scan RUN`` names the last healthy one."""
        found = self._clean_before_a_jump(state) if self.first_bad is not None else None
        if found is None:
            return
        from nandoctor.checkpoint.steps import step_of

        broken_from, clean = found
        before = [path for path in clean if Path(path).is_dir()]
        newest = before[-1] if before else None
        was = step_of(Path(self.last_clean)) if self.last_clean is not None else None
        if newest is None and was is not None and was < broken_from:
            newest = self.last_clean  # saved before this session (a resumed run), before the jump
        if self.last_clean == newest:
            return
        self._no_resume_points(broken_from)
        if newest is not None:
            logger.warning("nandoctor: the trainer log's loss jumped: the weights saved from step %d on made it, so "
                           "the last clean checkpoint to resume from is %s", broken_from, newest)
        else:
            logger.warning("nandoctor: the trainer log's loss jumped: the weights saved from step %d on made it, and "
                           "no checkpoint saved before it is left: restart from the base model (with a lower learning "
                           "rate or gradient clipping)", broken_from)
        self.last_clean = newest

    def _no_resume_points(self, broken_from: int) -> None:
        """The checkpoints that passed but were saved from ``broken_from`` on (their weights made the loss jump): their
        ``nandoctor.json`` gets ``"resume_point": false`` and why, so that a resumed run's callback (and a reader of the
        file) does not take one for the last clean checkpoint (a trial: a later callback resumed from a checkpoint
        whose eval loss was 87,360, the file still saying it passed). Its gate stays what its weights got."""
        if not self.write_report:
            return
        why = (f"the trainer log's loss jumped: the weights saved from step {broken_from} on made it "
               "(nandoctor scan of the run names the checkpoint to resume from)")
        for step, path in self._passed:
            if step < broken_from:
                continue
            file = Path(path) / REPORT_NAME
            try:
                data = read_json(file, follow_links=False)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("resume_point") is not False:
                write_json(file, {**data, "resume_point": False, "resume_point_why": why})

    def _keep_only_the_resume_point(self, args: TrainingArguments, state: TrainerState) -> None:
        """``save_total_limit=1``: what Trainer's end-of-training clean-up does (keep only its best), with the
        last clean checkpoint as the one kept, the one before a loss jump, and the user's best too when the run
        tracks one."""
        import shutil

        keep = {str(Path(p)) for p in (self.last_clean, state.best_model_checkpoint if self._tracks_best(args) else None,
                                       self._before_a_loss_jump(state)) if p is not None}
        if not keep:
            return
        try:
            found = [str(p) for _, p in checkpoints_in(Path(args.output_dir or "."))]
        except OSError:
            return
        passed = {str(Path(p)) for _, p in self._passed}
        if found and found[-1] not in passed and found[-1] not in keep:
            # (the run's newest save failed: kept beside the resume point, one over the limit, so that the run's scan
            # and a gate after training see that it broke; deleted, the run would look healthy to both)
            keep.add(found[-1])
            logger.warning("nandoctor: keeping %s, the run's newest checkpoint, which failed the check, beside the last "
                           "clean one %s (save_total_limit=1): the record that the run broke", found[-1], self.last_clean)
        for checkpoint in found:
            if checkpoint not in keep:
                shutil.rmtree(checkpoint, ignore_errors=True)


def loaded_training_state(optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """What a resume loaded into ``optimizer`` and ``scheduler``, as a live scan walks it: the param_groups' settings
    (without their ``params``: the model's weights, checked apart), each parameter's state (moments), and the
    scheduler's ``state_dict()``. Read through the attributes every torch optimizer and its wrappers (accelerate's
    AcceleratedOptimizer) have, never a collective ``state_dict()`` call; empty when there is nothing to read."""
    loaded: dict[str, Any] = {}
    groups = getattr(optimizer, "param_groups", None)
    if isinstance(groups, (list, tuple)):
        state = getattr(optimizer, "state", None)
        loaded["optimizer"] = {
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in groups if isinstance(g, dict)],
            "state": dict(enumerate(state.values())) if isinstance(state, dict) else {},
        }
    if callable(getattr(scheduler, "state_dict", None)):
        # (a scheduler that cannot say its state: the optimizer's rates hold what it set last)
        with contextlib.suppress(Exception):
            loaded["lr_scheduler"] = scheduler.state_dict()
    return loaded


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
