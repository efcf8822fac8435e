"""Run folders: the checkpoints a training run leaves, ordered by step.

A transformers ``Trainer`` run is a folder of ``checkpoint-N`` folders, often with the final model
(``trainer.save_model()``) at its top (checkpoint/finalmodel.py); a Lightning run is a folder of ``.ckpt``
files whose names carry the step (``ModelCheckpoint``'s default ``epoch=E-step=S.ckpt``), maybe with
``last.ckpt`` and a final model file beside them (checkpoint/stepfiles.py). Also the run as a
timeline (:func:`scan_run`): each checkpoint's verdict, the first step the
trainer log (``trainer_state.json``, or a Lightning run's ``metrics.csv``)
logged NaN/Inf, and saves that never finished.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from nandoctor import access
from nandoctor.checkpoint.baseline import (
    BASELINE_NAME,
    INITIAL_WEIGHTS,
    kept_before,
    load_baseline,
    never_trained,
    untrained_jump,
    usable_baseline,
)
from nandoctor.checkpoint.callbacklog import lightning_log
from nandoctor.checkpoint.finalmodel import (
    FINAL,
    final_model,
    final_reasons,
    final_step,
    has_final_model,
    holds_weights,
    looks_like_model,
    loose_files,
)
from nandoctor.checkpoint.incomplete import TRAINER_STATE, incomplete_reasons
from nandoctor.checkpoint.initscales import implied_start, untrained_loss
from nandoctor.checkpoint.layout import BOTH_FORMATS_HINT, unscanned_notes
from nandoctor.checkpoint.megatron import rank_folders
from nandoctor.checkpoint.roles import WEIGHT
from nandoctor.checkpoint.stepfiles import (
    StepFolder,
    file_step_of,
    one_template,
    same_file,
    saved_step,
    step_files_kind,
    step_folder,
    step_template,
)
from nandoctor.checkpoint.stepfiles import is_checkpoint as is_step_checkpoint
from nandoctor.checkpoint.steps import (
    DEEPSPEED_LATEST,
    checkpoints_in,
    deepspeed_tag,
    is_megatron_save,
    pointer_problem,
    resume_pointer,
    step_of,
)
from nandoctor.checkpoint.trainlog import LogSeries, TrainLog, read_series, read_train_log
from nandoctor.errors import EXIT_UNREADABLE, NandoctorError, UnreadablePathError, UnsupportedFormatError
from nandoctor.layers import natural_key
from nandoctor.model import ScanProblem, ScanReport, TensorRef, TensorResults
from nandoctor.wording import first_few, path_word

# The verdict words of a run that is itself ambiguous (RunReport.problems: two folders of one step), whatever its rows
AMBIGUOUS_WORDS = "AMBIGUOUS RUN"
STRAY_FOLDER_HINT = "rename or remove the stray folder"


def duplicate_steps(found: list[tuple[int, Path]]) -> list[str]:
    """One line per step that two folders claim (``checkpoint-300`` and ``checkpoint-0300``): Trainer's
    resume and ``save_total_limit`` rotation read the step with ``int()`` and take whichever they list
    first, so which of them a resume loads (or rotation deletes) is undefined."""
    by_step: dict[int, list[str]] = {}
    for step, path in found:
        by_step.setdefault(step, []).append(path.name)
    return [
        f"{' and '.join(sorted(names))} are all step {step}: Trainer may resume (or rotation delete) either one"
        for step, names in sorted(by_step.items()) if len(names) > 1
    ]


def step_files_in(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every Lightning ``…step=N….ckpt`` file (or sharded ``.ckpt`` folder: stepfiles.is_checkpoint)
    directly inside ``folder``, steps ascending.

    Two files of one step (``epoch=0-step=8.ckpt`` and ``epoch=0-step=8-v1.ckpt``) are both kept, by name.
    """
    run = step_folder(folder)  # (its step files by name, or by the step a {epoch}-only template's file was saved at)
    if run is not None:
        return list(run.steps)
    found = []
    for entry in access.listing(folder):
        step = file_step_of(entry)
        if step is not None and not entry.name.startswith(".") and is_step_checkpoint(entry):  # (a .ckpt folder too)
            found.append((step, entry))
    return one_template(sorted(found))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint's name gives: a ``checkpoint-N`` folder, a file inside one, or a Lightning
    ``…step=N….ckpt`` file; None when its name gives none."""
    path = Path(path)
    if access.is_dir(path):
        return step_of(path)
    from_name = file_step_of(path)
    return from_name if from_name is not None else step_of(path.parent)


@dataclass(frozen=True)
class RunPlace:
    """Where one checkpoint stands in its run: the run folder, the checkpoint's step, the run's kind."""

    run: Path
    step: int  # a final model's or last.ckpt's: one past the newest checkpoint's (every checkpoint comes before it)
    step_files: bool  # the run is a folder of step files (Lightning's .ckpt, a loop's step_N.pt), not of checkpoint-N folders
    final: bool = False  # the target is the run's final model (the weights at the run folder's top, a Lightning final file)

    def siblings(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint of the run, steps ascending."""
        return step_files_in(self.run) if self.step_files else checkpoints_in(self.run)

    @property
    def kind(self) -> str:
        """The run's own naming, for messages: ``checkpoint-N``, ``step-N`` or a Lightning step file."""
        if self.step_files:
            return step_files_kind(self.siblings())
        names = [p.name for _, p in self.siblings()]
        return "step-N" if names and all(n.startswith("step-") for n in names) else "checkpoint-N"


def last_passing_before(saves: Sequence[tuple[int, Path]], before: int | None, passes: Callable[[Path], bool],
                        skip: Path | None = None) -> Path | None:
    """The newest of a run's ``saves`` ((step, path), steps ascending) saved before step ``before`` (any, for None)
    that ``passes``, judged newest first and stopping at the first that does (usually one: the run's healthy saves
    come before); ``skip``: a save never taken (the one refused). A save that cannot be judged (unreadable, or its
    scan raising) is no resume point, and an earlier one may be: passed over. What a refused resume or repair names
    to resume from instead (restore/, the training callbacks)."""
    for step, path in reversed(saves):
        if path == skip or (before is not None and step >= before):
            continue
        try:
            if passes(path):
                return path
        except Exception:  # noqa: BLE001 - (never a crash of the training or the repair that asked)
            continue
    return None


def place_in_run(target: Path) -> RunPlace | None:
    """Where ``target`` stands in a run (what ``--from auto`` and the repair hint go by): a ``checkpoint-N``
    folder (or a file inside one), the final model of a run folder (the folder itself), or a Lightning
    ``…step=N….ckpt`` file, the ``last.ckpt`` a resume loads or the final model file beside them (a Lightning
    run folder stands for its final file); else None."""
    target = access.named_path(target)  # (``.``: the folder whose name says its step)
    target_is_dir = access.is_dir(target)
    if not target_is_dir or is_step_checkpoint(target):  # a file, or a sharded .ckpt folder (FSDP, DeepSpeed)
        stepped = step_folder(target.parent)
        if stepped is not None:
            return _step_file_place(target, stepped)
    elif (stepped := step_folder(target)) is not None:
        return _step_file_place(stepped.final, stepped) if stepped.final is not None else None
    folder = target if target_is_dir else target.parent
    step = step_of(folder)
    if step is None and is_run_folder(folder) and has_final_model(folder):
        found = checkpoints_in(folder)
        return RunPlace(folder, found[-1][0] + 1 if found else 0, False, final=True)
    if step is None and target_is_dir and _saved_into_run(folder):  # (final/, best_model/: models_saved_into)
        found = checkpoints_in(folder.parent)
        return RunPlace(folder.parent, found[-1][0] + 1 if found else 0, False, final=True)
    return None if step is None else RunPlace(folder.parent, step, False)


def _saved_into_run(folder: Path) -> bool:
    """Whether ``folder`` is a model saved into a run folder (a row of its timeline: :func:`models_saved_into`)."""
    try:
        return is_run_folder(folder.parent) and folder in models_saved_into(access.listing(folder.parent))[0]
    except NandoctorError:
        return False


def _step_file_place(file: Path, run: StepFolder) -> RunPlace | None:
    """A file's place in the Lightning run it lies in: a step file by its step; the last or final file after
    every step file (donors may be any step file, the newest included, as for a Trainer run's final model)."""
    after = run.steps[-1][0] + 1
    if file.name in run.unplaced:  # (best.pt: after every step file; a second template's save: at its own step, its
        # donors the timeline's saves before it, never a later one: an adversarial round's ema_step_200.pt took step_300)
        own = file_step_of(file)
        return RunPlace(file.parent, after if own is None or own >= after else own, True, final=True)
    step = next((at for at, path in run.steps if path == file), None)  # (by name, or by its saved step)
    if step is not None:
        return RunPlace(file.parent, step, True)
    if run.final is not None and file.name == run.final.name:
        return RunPlace(file.parent, after, True, final=True)
    if run.last is not None and file.name == run.last.name:
        return RunPlace(file.parent, after, True)
    return None


def _step_file_run(folder: Path, entries: list[Path]) -> bool:
    """A folder of Lightning step files (checkpoint/stepfiles.py)."""
    return step_folder(folder, entries) is not None


# ---------------------------------------------------------------------------
# A run as a timeline: every checkpoint's verdict, the trainer log, incomplete saves.
# ---------------------------------------------------------------------------

_TMP_CHECKPOINT = re.compile(r"^tmp-checkpoint-(\d+)$")  # older Trainer versions saved here, then renamed

# Checkpoint status words (decided by verdict.checkpoint_status), worst first where one checkpoint has several.
INCOMPLETE, UNREADABLE, DIVERGED, POISONED, OVERFLOW, CLEAN = (
    "incomplete", "unreadable", "diverged", "poisoned", "overflow", "clean",
)
HEALTHY_STATUSES = (CLEAN, OVERFLOW)


@dataclass(frozen=True)
class RunCheckpoint:
    step: int
    path: str
    status: str  # incomplete | unreadable | diverged | poisoned | overflow | clean
    report: ScanReport | None  # None when nothing could be scanned (no weights at all)
    incomplete: tuple[str, ...] = ()  # why the save looks half-written
    log: TrainLog | None = None
    growth: float | None = None  # how far the bulk of the weights grew since the previous checkpoint (verdict.growth)
    why: str = ""  # what made it diverged, when it is
    final: bool = False  # the run's final model (the weights at the run folder's top), the newest row
    step_known: bool = True  # False for a final model whose step no trainer_state.json gives
    last: bool = False  # a Lightning run's last.ckpt: what trainer.fit(ckpt_path="last") resumes from
    same_as: str | None = None  # the earlier row whose file this one is (a link to it, or its bytes): not scanned again
    same_how: str | None = None  # "link" (a symlink or hard link) or "copy" (the same bytes)
    baseline_growth: float | None = None  # the same since the run's first healthy checkpoint: what the rule reads
    # a model saved into a folder of the run (``trainer.save_model(out + "/final")``, a best or merged model): final
    # too (it is what a user loads), named by its folder
    saved_into: bool = False
    # a saved-into row that does not decide the exit code: an older save of a second template of a step-file run
    # (optimizer_step_100.pt beside model_step_N.pt), read and judged, its poison a caution as an older row's is
    decides: bool = True
    # False for a file off a step-file run's timeline whose tensors are not the run's model (a loop's data_stats.pt, an
    # optimizer's own save): judged, never the run's first bad checkpoint nor a repair's target (a helper's trial)
    model: bool = True
    # the run folder's file that names this save as the one its framework resumes (DeepSpeed's latest, Megatron's
    # latest_checkpointed_iteration.txt) where that is not the newest save: it decides, as last.ckpt does
    pointed: str = ""
    # a final model whose every weight agrees with an earlier checkpoint's, not the newest one's (the Trainer's
    # load_best_model_at_end saves the best checkpoint's weights as the final model): that checkpoint's name
    weights_of: str | None = None
    # where its trainer log says its weights score worse than a model that guesses uniformly (baseline.untrained_jump:
    # a loss that stands above the untrained one): no resume point, however healthy the weights read
    worse_than_untrained: dict[str, Any] | None = None

    @property
    def max_abs(self) -> float | None:
        """The largest weight magnitude of this checkpoint (one flipped bit can set it)."""
        from nandoctor import verdict

        return None if self.report is None else verdict.max_abs(self.report, "weight")

    @property
    def max_abs_words(self) -> str:
        """:attr:`max_abs` as the run tables print it: ``inf`` where a weight holds +Inf or -Inf, ``nan`` where the
        weights' only non-finite values are NaN (a largest finite magnitude there read as a healthy 0.0874 beside a
        checkpoint full of Inf), else the largest magnitude; "" when not scanned."""
        top, r = self.max_abs, self.report
        if r is None:
            return ""
        tensors, roles = r.tensors, r.tensors.refs.roles
        weights = [i for i in tensors.flagged if roles[i] == "weight"]
        if any(tensors.posinf[i] or tensors.neginf[i] for i in weights):
            return "inf"
        if any(tensors.nan[i] for i in weights):
            return "nan"
        return "" if top is None else f"{top:.3g}"

    @property
    def scale(self) -> float | None:
        """The largest bulk scale of its weight tensors (verdict.weight_scale): a bit flip does not move it."""
        from nandoctor import verdict

        return None if self.report is None else verdict.weight_scale(self.report)

    @property
    def zeroed(self) -> tuple[str, ...]:
        """Its weights all zero that an earlier checkpoint of the run held not all zero (verdict.zeroed_in_run):
        no resume point, whatever the gate says of it."""
        from nandoctor import verdict

        return () if self.report is None else verdict.zeroed_in_run(self.report)[0]

    @property
    def zeroed_weights(self) -> tuple[str, ...]:
        """Its weights found zeroed in any of the three cases (docs/health.md: beside siblings that are not, a head or
        norm alone, or since an earlier checkpoint): damage the default gate fails, so no resume point (a run whose
        newest checkpoint failed ZEROED named it "last healthy")."""
        from nandoctor import verdict

        return () if self.report is None else tuple(t.ref.name for t in verdict.with_finding(self.report, verdict.ZEROED))

    @property
    def health(self) -> str:
        """healthy | poisoned | diverged | unreadable | incomplete."""
        if self.status in HEALTHY_STATUSES:
            return "healthy"
        return self.status

    @property
    def name(self) -> str:
        if self.saved_into:  # ("final/" beside a final model at the run's top, named "final"; a loop's best.pt)
            return Path(self.path).name + ("/" if os.path.isdir(self.path) else "")
        return FINAL if self.final else Path(self.path).name

    @property
    def step_label(self) -> str:
        """The step column's text: "—" for a final model whose step no trainer_state.json gives."""
        return str(self.step) if self.step_known else "—"

    @property
    def clean(self) -> bool:
        return self.status == CLEAN


class Passes:
    """A run's gate verdict (RunReport.ok): truthy when the default gate passes; called with ``fail_on`` for another."""

    __slots__ = ("_run",)

    def __init__(self, run: RunReport) -> None:
        self._run = run

    def __call__(self, fail_on: frozenset[str] | None = None) -> bool:
        return self._run.exit_code(fail_on) == 0

    def __bool__(self) -> bool:
        return self()

    def __eq__(self, other: object) -> bool:
        return bool(self) == other if isinstance(other, bool) else NotImplemented

    def __hash__(self) -> int:
        return hash(bool(self))

    def __repr__(self) -> str:
        return repr(bool(self))


@dataclass(frozen=True)
class RunReport:
    """A run folder scanned checkpoint by checkpoint, oldest first."""

    target: str
    checkpoints: tuple[RunCheckpoint, ...]
    log: TrainLog | None = None  # the longest readable trainer log of the run
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    problems: tuple[str, ...] = ()  # the run itself is ambiguous (two folders of one step): exit 3
    series: LogSeries | None = None  # loss / grad_norm over steps, for charts (checkpoint/trainlog.py)
    untrained_loss: float | None = None  # what the run's model scores untrained (initscales.untrained_loss), if known

    @property
    def newest(self) -> RunCheckpoint | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def last_healthy(self) -> RunCheckpoint | None:
        """The newest checkpoint read completely whose weights are healthy (finite, not exploded, no
        outliers, not grown far past the earlier ones): what to resume from. (``--from auto`` takes donors
        only from healthy checkpoints before the run's first bad one: restore/donors.py.)"""
        healthy = [c for c in self.resume_points() if c.same_as is None]
        return healthy[-1] if healthy else None

    @property
    def broken_weights_from(self) -> int | None:
        """In a run with a bad checkpoint, the step from which the trainer log's loss jump says the saved weights
        were already broken (``TrainLog.broken_weights_from``: finite weights whose loss went from ~5 to
        thousands); None otherwise. A healthy run's log never moves anything."""
        return self._loss_broke_from(self.first_bad is not None)

    def _loss_broke_from(self, broken: bool) -> int | None:
        log = self.log
        if log is None or log.error or not broken:
            return None
        return log.broken_weights_from

    def resume_points(self, broken: bool = False) -> list[RunCheckpoint]:
        """The checkpoints read completely whose weights are healthy and made no jumped loss
        (:attr:`broken_weights_from`), oldest first: what to resume from, and where ``--from auto`` takes
        donors (those before the first bad one: restore/donors.py). ``broken``: the run is known to be broken
        beyond what it holds (a repair's target, left out of its scan), so the loss jump counts anyway."""
        limit = self._loss_broke_from(broken or self.first_bad is not None)
        # (a model saved into a folder of the run is no resume point: a base or a merged model, no training state)
        return [c for c in self.checkpoints if c.report is not None and c.status in HEALTHY_STATUSES
                and not c.saved_into and (limit is None or not c.step_known or c.step < limit) and not c.zeroed_weights
                and c.worse_than_untrained is None]

    last_clean = last_healthy  # the name before health findings: it now means the last *healthy* checkpoint

    def last_healthy_under(self, fail_on: frozenset[str] | None = None) -> RunCheckpoint | None:
        """:attr:`last_healthy` as a run judged under the gate ``fail_on`` names it: the same under every gate, since
        the default one fails every finding (zeroed weights too) and a shorter list fails fewer, while a resume point
        is judged by its weights (zeroed ones are none, whatever the gate: :attr:`RunCheckpoint.zeroed_weights`). Kept
        for the reports, which each ask it of the gate in use."""
        return self.last_healthy

    @property
    def repair_target(self) -> RunCheckpoint | None:
        """The newest checkpoint read completely with a few poisoned tensors: what a repair can fix (the file
        itself, never a row that is the same file as an earlier one)."""
        bad = [c for c in self.checkpoints if c.report is not None and c.status == POISONED and c.same_as is None]
        return bad[-1] if bad else None

    @property
    def repair_targets(self) -> tuple[RunCheckpoint, ...]:
        """What a repair must fix for the run to pass: every deciding row that is poisoned (the final model and a
        Lightning ``last.ckpt`` each decide the exit code), else :attr:`repair_target`."""
        targets: list[RunCheckpoint] = []
        for c in self.deciding:
            if c.report is None or c.status != POISONED:
                continue
            if c.same_how == "link":  # a link to a step file: that file is what to repair (the link follows it)
                c = next((o for o in self.checkpoints if o.name == c.same_as and o.same_as is None), c)
            if all(c is not t for t in targets):
                targets.append(c)
        return tuple(targets) or ((self.repair_target,) if self.repair_target is not None else ())

    def auto_donors_for(self, target: RunCheckpoint) -> bool:
        """Whether ``repair TARGET --from auto`` finds a donor: a healthy checkpoint before ``target`` and
        before the run's first bad one (restore/donors.py applies the same rule). By position, not step:
        the final model may share its step with the newest checkpoint and still comes after it."""
        first_bad, usable = self.first_bad, {id(c) for c in self.resume_points()}
        bad = [target.report.tensors.refs.names[i] for i in target.report.tensors.unhealthy_rows()] \
            if target.report is not None else []
        for c in self.checkpoints:
            if c is target or c is first_bad:
                return False
            if id(c) in usable and _holds_any(c, bad):
                return True
        return False

    @property
    def first_bad(self) -> RunCheckpoint | None:
        """The oldest checkpoint whose weights are poisoned or diverged, or unhealthy (NaN/Inf, exploded, outliers) in
        a checkpoint that is unreadable in another part (a truncated optimizer.pt beside NaN weights, a storage failing
        its CRC-32 beside an exploded one), or whose tensor names changed (a renamed tensor loads as missing), or whose
        weights are zeroed (:attr:`RunCheckpoint.zeroed_weights`): training or its files broke before it."""
        from nandoctor.verdict import NAMES_KIND

        return next((c for c in self.checkpoints if c.report is not None and c.model and (
            c.status in (POISONED, DIVERGED) or (c.status in HEALTHY_STATUSES and bool(c.zeroed_weights))
            or (c.status == UNREADABLE and (
                bool(c.report.unhealthy_tensors) or any(p.kind == NAMES_KIND for p in c.report.errors))))), None)

    @cached_property
    def deciding(self) -> tuple[RunCheckpoint, ...]:
        """The rows that decide the exit code: what gets loaded. The final model (what a user ships) and a
        Lightning run's last.ckpt (what ``trainer.fit(ckpt_path="last")`` resumes from) where the run has
        them, else the newest checkpoint (what a resume or a deploy would load); docs/cli.md. Saves after every
        loaded row, and written after them, decide too: the run went on past what would be loaded, and how it ended
        counts (a Lightning callback's ``nandoctor-stopped-step=N.ckpt`` after a clean ``last.ckpt`` passed the
        gate). Written before them (a run resumed from ``last.ckpt`` into the same folder: the abandoned attempt's
        later steps) they do not."""
        # (a model saved into a folder of the run decides beside them, never in their place: file times say nothing
        # of when it was saved against the checkpoints, a copy, a deleted optimizer.pt or a rotation moves them)
        saved = tuple(c for c in self.checkpoints if c.saved_into and c.decides)
        loaded = [i for i, c in enumerate(self.checkpoints) if (c.final and not c.saved_into) or c.last or c.pointed]
        if not loaded:
            saves = [c for c in self.checkpoints if not c.saved_into]
            return (*saved, *saves[-1:])  # (first: of equal verdicts the run's own newest row is named)
        since = max(_row_written(self.checkpoints[i]) for i in loaded)
        # (saves written after them that are newer than every save written before: a run that went on after
        # save_model(), whose checkpoint-35 is still being written, decided nothing, the final model's folder time
        # moving with it; a checkpoint copied later by a plain cp is no newer than the saves beside it)
        others = [c for c in self.checkpoints if not (c.final or c.last)]
        written = {id(c): _row_written(c) for c in others}
        newest_before = max((c.step for c in others if written[id(c)] <= since), default=-1)
        # (no save written before the loaded ones: their order in time says nothing, a copy or a download that wrote
        # the top-level files first; the loaded rows decide alone, as before)
        # (a save that is a loaded row's very file is no save after it: timm writes last.pth.tar, then copies it to
        # checkpoint-9.pth.tar, which "went on past what would be loaded", a helper's run said)
        copies = {self.checkpoints[i].same_as for i in loaded} - {None}
        later = tuple(c for c in others if written[id(c)] > since and c.step > newest_before and c.name not in copies
                      ) if newest_before >= 0 else ()
        return (*saved, *(self.checkpoints[i] for i in loaded), *later)

    def decider(self, fail_on: frozenset[str] | None = None) -> RunCheckpoint | None:
        """The deciding row whose exit code is the run's: the worst of them; of equals, the newest."""
        rows = self.deciding
        if not rows:
            return None
        codes = [_row_code(c, fail_on) for c in rows]
        worst = max(codes)
        return rows[max(i for i, code in enumerate(codes) if code == worst)]

    def exit_code(self, fail_on: frozenset[str] | None = None) -> int:
        """The worst of the deciding rows (:attr:`deciding`); 3 when the run itself is ambiguous or empty."""
        decider = self.decider(fail_on)
        if self.problems or decider is None:
            return EXIT_UNREADABLE
        return _row_code(decider, fail_on)

    @property
    def ok(self) -> Passes:
        """Whether the run passes: true or false as it stands (``if not run.ok:``, the default gate, as a
        ScanReport's ``ok`` reads), and callable with a gate (``run.ok(fail_on)``). It was a method only, and a fresh
        user's ``if not run.ok:`` (a bound method: always true) never fired on a poisoned run."""
        return Passes(self)

    @property
    def verdict(self) -> str:
        return self.verdict_under()

    def verdict_under(self, fail_on: frozenset[str] | None = None) -> str:
        """The deciding row's verdict words under ``fail_on`` (the default gate when None); AMBIGUOUS_WORDS for a
        run that is itself ambiguous (exit 3 whatever its rows: a trial saw "PASS CLEAN" with exit code 3)."""
        if self.problems:
            return AMBIGUOUS_WORDS
        decider = self.decider(fail_on)
        return "EMPTY" if decider is None else row_verdict(decider, fail_on)

    def headline_under(self, fail_on: frozenset[str] | None = None) -> str:
        """:meth:`verdict_under` with the health case, as every headline says it (``NON-FINITE (POISONED)``: the
        console's last line, Markdown's heading, the HTML box, as --quiet)."""
        decider = self.decider(fail_on)
        if self.problems or decider is None:
            return self.verdict_under(fail_on)
        return row_verdict(decider, fail_on, with_case=True)

    def reported_only(self, fail_on: frozenset[str] | None = None) -> bool:
        """Whether the run passes with something to look at: findings only reported (the deciding row's ZEROED), a
        poisoned or diverged checkpoint before it (:meth:`bad_behind`), or a loss jump no checkpoint fails for
        (:attr:`loss_jump_unconfirmed`), a loss that never came near a trained model's (:attr:`never_trained`): a
        headline's ⚠ PASS."""
        from nandoctor import verdict as verdicts

        decider = self.decider(fail_on)
        if self.problems or decider is None or decider.report is None or decider.status == INCOMPLETE:
            return False
        decided = verdicts.judge(decider.report, verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on)
        return decided.exit_code == 0 and (verdicts.cautioned(decider.report, decided) or bool(self.bad_behind(fail_on))
                                           or self.loss_jump_unconfirmed or self.never_trained is not None
                                           or self.unchanged is not None)

    @property
    def loss_jump_unconfirmed(self) -> bool:
        """The trainer log's loss jumped and stayed up while no checkpoint's weights fail for it: the run warns to look
        at it before using the checkpoints saved after the jump (a passing run then reads ⚠ PASS, not ✓)."""
        log = self.log
        return log is not None and log.error is None and log.loss_jump_said and self.broken_weights_from is None

    @cached_property
    def unchanged(self) -> tuple[str, str] | None:
        """(the first, the newest) of three or more saves of the run whose model weights all agree (every weight
        tensor's largest magnitude, zero count and bulk, and the first's and newest's weight files byte for byte): the
        run did not train (a real-training trial's run at
        learning rate 0 saved five byte-identical models and read ✓ CLEAN without a word); None otherwise."""
        saves = [c for c in self.checkpoints if not c.final and not c.last and c.same_as is None and c.step_known
                 and c.report is not None and c.status in HEALTHY_STATUSES]
        if len(saves) < 3 or len(saves) != sum(1 for c in self.checkpoints if not c.final and not c.last
                                               and c.same_as is None and c.step_known):
            return None
        first = _census(saves[0].report, weights_only=True)  # type: ignore[arg-type]
        if not first or not all(_census(c.report, weights_only=True) == first for c in saves[1:]):  # type: ignore[arg-type]
            return None
        # (the census is evidence, the bytes proof: a pure-bf16 run's Adam steps moved 84 % of its elements and no
        # tensor's largest one, a false-alarm hunt's "did not train")
        return (saves[0].name, saves[-1].name) if _same_weight_files(saves[0], saves[-1]) else None

    @property
    def never_trained(self) -> dict[str, Any] | None:
        """Where every checkpoint passes but the trainer log's last loss is still ``UNTRAINED_MULTIPLE`` times what
        an untrained model scores: that loss as a jump from the untrained one (baseline.untrained_jump), which a
        scan of the newest checkpoint alone cautions of too (a real-training trial: a fine-tune at lr 1 from a
        trained base, loss 35 where untrained is 4.85, read ✓ CLEAN in the run and ⚠ alone); None otherwise."""
        if self.first_bad is not None or self.loss_jump_unconfirmed:
            return None
        return untrained_jump(self.log, self.untrained_loss)

    def bad_behind(self, fail_on: frozenset[str] | None = None) -> list[RunCheckpoint]:
        """Where the run passes: its checkpoints before the deciding one that are poisoned or diverged (a new user's
        run passed ✓ with its checkpoint-30 poisoned and checkpoint-40 healthy, and no word on checkpoint-30, which
        a user picking the "best" checkpoint would load: generate died on it). [] where the run fails."""
        decider = self.decider(fail_on)
        if decider is None or self.exit_code(fail_on) != 0:
            return []
        return [c for c in self.checkpoints if c is not decider and c.same_as is None and c.status in (POISONED, DIVERGED)
                and (not c.final or not c.decides) and not c.last]


def _holds_any(donor: RunCheckpoint, names: list[str]) -> bool:
    """Whether ``donor`` holds one of the tensors ``names`` (by their last three name parts: a donor's wrapper prefix
    may differ), or ``names`` is empty: a merged LoRA model saved into a run of adapter checkpoints has no donor in
    it, and was told to repair with --from auto (a trial), which then found none."""
    if not names or donor.report is None:
        return True
    held = {_tail(n, 3) for n in donor.report.tensors.refs.names}
    return any(_tail(n, 3) in held for n in names)


def row_verdict(c: RunCheckpoint, fail_on: frozenset[str] | None = None, with_case: bool = False) -> str:
    """One row's verdict words (under ``fail_on``, its report's own when None): ``INCOMPLETE`` for a
    half-written save, ``(DIVERGED)`` added; ``with_case``: the health case too, as a headline says it
    (``NON-FINITE (POISONED)``: verdict.words_with_case)."""
    from nandoctor import verdict as verdicts

    if c.status == INCOMPLETE or c.report is None:
        return "INCOMPLETE"
    decided = (c.report.judgement if fail_on is None and c.report.judgement is not None
               else verdicts.judge(c.report, verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on))
    words = verdicts.words_with_case(decided) if with_case else decided.words
    return words + (" (DIVERGED)" if c.status == DIVERGED and "DIVERGED" not in words else "")


ZEROED_WORDS = "zeroed"  # a healthy row's words where it holds weights zeroed since an earlier checkpoint


def status_words(c: RunCheckpoint) -> str:
    """A row's status as reports show it: ``c.status``, except an unreadable row whose problems are all of one other
    kind, named for it (``not loadable``: every file read, but the folder would not load as it is), and a healthy
    row holding weights zeroed since an earlier checkpoint (``zeroed``: no resume point, :attr:`RunCheckpoint.zeroed`;
    a review found Markdown and HTML calling it clean beside the console's ⚠ zeroed)."""
    from nandoctor import verdict as verdicts

    if c.status in HEALTHY_STATUSES and c.zeroed_weights:  # (those zeroed since an earlier checkpoint among them)
        return ZEROED_WORDS
    if c.status == UNREADABLE and c.report is not None:
        kinds = {p.kind for p in verdicts.weight_errors(c.report)}
        if len(kinds) == 1 and verdicts.UNREADABLE_KIND not in kinds:
            return verdicts.PROBLEM_WORDS.get(kinds.pop(), UNREADABLE).lower()
    return c.status


def _row_code(c: RunCheckpoint, fail_on: frozenset[str] | None) -> int:
    """One row's exit code: its report's, 3 for a save that is half-written or had nothing to scan."""
    from nandoctor import verdict as verdicts

    if c.report is None or c.status == INCOMPLETE:
        return EXIT_UNREADABLE
    return verdicts.exit_code(c.report, verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on)


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """A folder of ``checkpoint-N`` (or ``step-N``) folders, or of Lightning ``…step=N….ckpt`` files.

    Weights at its top beside ``checkpoint-N`` folders are the run's final model (``trainer.save_model()``):
    still a run, whose timeline ends with a ``final`` row (checkpoint/finalmodel.py). A Lightning folder is a
    run with two or more step files, or one beside ``last.ckpt`` or a final model file
    (checkpoint/stepfiles.py).
    """
    folder = Path(path)
    if not access.is_dir(folder):
        return False
    try:
        entries = access.listing(folder)
    except UnreadablePathError:
        return False  # opened as one checkpoint, whose scan says the folder cannot be read
    if _step_file_run(folder, entries):
        return True
    if holds_weights(entries) and not checkpoints_in(folder):
        return False  # a model with stray tmp-checkpoint folders at most: one checkpoint, not a run
    return any((step_of(e) is not None or _TMP_CHECKPOINT.match(e.name)) and access.is_dir(e) for e in entries) \
        or bool(checkpoints_in(folder))  # (accelerate's project folder: its checkpoints in checkpoints/)


def newest_checkpoint(folder: Path) -> Path | None:
    """A run folder's newest checkpoint, as its timeline orders them: the last ``checkpoint-N`` folder by step,
    else the last Lightning step file; None when it holds neither."""
    steps = checkpoints_in(folder) or step_files_in(folder)
    return steps[-1][1] if steps else None


def one_checkpoint_in(path: Path) -> Path | None:
    """What a command that reads one checkpoint reads for ``path``: ``path`` itself, or a run folder's final
    model (as ``scan`` judges a run by it); None for a run folder without one (:func:`run_folder_error`)."""
    return final_model(path) if is_run_folder(path) else path


def run_folder_error(folder: Path, hint: Callable[[str], str], what: str = ", not one checkpoint") -> UnsupportedFormatError:
    """The refusal of a run folder where one checkpoint is asked for; ``hint`` is given the newest checkpoint
    (quoted for a shell), so that it suggests the very command with that checkpoint in the folder's place."""
    newest = newest_checkpoint(folder)
    return UnsupportedFormatError(
        f"{folder}: a training run folder (checkpoint-N folders or Lightning step files inside){what}",
        hint(path_word(newest) if newest is not None else "CHECKPOINT"),
    )


def timeline_folders(root: Path) -> list[Path]:
    """The ``checkpoint-N`` and ``tmp-checkpoint-N`` folders of a run folder, and the models saved into it (set aside
    or not: ``final/``, ``final-bad/``, a repair not yet in place): its timeline's rows and what lies beside them (a
    repair of its final model leaves them out of the copy; a review's copied a poisoned final/ into --out)."""
    entries = access.listing(root)
    saved, set_aside = models_saved_into(entries)
    return [p for _, p in checkpoints_in(root)] + [
        e for e in entries if _TMP_CHECKPOINT.match(e.name) and access.is_dir(e)
    ] + saved + set_aside


def _census(report: ScanReport, weights_only: bool = False) -> dict[str, tuple[Any, ...]]:
    """What the scan measured of each tensor by name (shape, largest magnitude, zeros, bulk, NaN/Inf; ``weights_only``:
    of the model weights alone, not an optimizer's state): equal for two reports of the same weights, and for two
    training steps' almost never (every update moves some largest value)."""
    t = report.tensors
    rows = zip(t.refs.names, t.refs.roles, (tuple(s) for s in t.refs.shapes), t.max_abs, t.zeros, t.bulk_scale, t.nan,
               t.posinf, t.neginf)
    return {name: tuple(row) for name, role, *row in rows if not weights_only or role == "weight"}


def _two_runs(checkpoints: list[RunCheckpoint]) -> list[str]:
    """A note where the checkpoints' trainer logs begin with different losses: a log_history grows from the run's
    start in every save (a resume reloads it), so two beginnings are two training runs written into one folder (a
    trial: a second run at lr 1e2 overwrote checkpoint-10 to -40 of a healthy one, whose checkpoint-50 decided)."""
    begins: dict[float, list[str]] = {}
    for c in checkpoints:
        if not c.final and not c.last and c.same_as is None and c.log is not None and c.log.error is None \
                and c.log.first_loss is not None and c.log.source.endswith(TRAINER_STATE):
            begins.setdefault(c.log.first_loss, []).append(c.name)
    if len(begins) < 2:
        return []
    groups = sorted(begins.items(), key=lambda item: checkpoints.index(next(c for c in checkpoints
                                                                             if c.name == item[1][0])))
    said = "; ".join(f"{first_few(names, 3)} from loss {loss:.4g}" for loss, names in groups)
    return [f"the trainer logs begin differently ({said}): more than one training run wrote into this folder, and each "
            "row is judged as it is; resume_from_checkpoint=True takes the highest step, whichever run it is from"]


def _same_weight_files(first: RunCheckpoint, last: RunCheckpoint) -> bool:
    """Whether every file of ``first`` holding a model weight is byte-identical to ``last``'s file of that name (a
    save that keeps its optimizer state or step in the same file, a Lightning .ckpt, never is: no claim then)."""
    import filecmp

    assert first.report is not None
    refs = first.report.tensors.refs
    held = {Path(refs.files[i]).relative_to(first.path) for i in range(len(refs)) if refs.roles[i] == "weight"
            and Path(refs.files[i]).is_relative_to(first.path)}
    try:
        return bool(held) and all(filecmp.cmp(Path(first.path) / name, Path(last.path) / name, shallow=False)
                                  for name in held)
    except OSError:
        return False


def _same_weights(census: dict[str, tuple[Any, ...]], save: RunCheckpoint) -> bool:
    """Whether ``save`` holds every tensor of a final model's ``census`` as it is (a checkpoint holds its optimizer
    state besides)."""
    theirs = _census(save.report) if save.report is not None else {}
    return all(theirs.get(name) == row for name, row in census.items())


def _earlier_weights(checkpoints: list[RunCheckpoint]) -> tuple[list[RunCheckpoint], list[str]]:
    """``checkpoints`` with each final model that holds an earlier checkpoint's weights, not the newest one's, marked
    (``weights_of``), and a note for it: a real-training trial's load_best_model_at_end run read "last healthy: final"
    of a model byte-identical to its checkpoint-10, scoring 4.24 where checkpoint-40 scored 2.14, and said nothing."""
    saves = [c for c in checkpoints if not c.final and not c.last and c.same_as is None and c.report is not None
             and c.step_known]
    if len(saves) < 2:
        return checkpoints, []
    marked, notes = [], []
    for c in checkpoints:
        if c.final and c.report is not None and c.same_as is None and c.report.tensors.refs.names:
            census = _census(c.report)
            match = next((s for s in reversed(saves) if _same_weights(census, s)), None)
            if match is not None and match is not saves[-1] and _same_weight_files(c, match):  # (bytes, not census only)
                c = dataclasses.replace(c, weights_of=match.name)
                notes.append(f"{c.name}: the weights of {match.name}, not of the newest {saves[-1].name} (the same "
                             "bytes): a trainer that loads its best checkpoint at the end (load_best_model_at_end) saves "
                             "those")
        marked.append(c)
    return marked, notes


def _pointed(root: Path, checkpoints: list[RunCheckpoint]) -> list[RunCheckpoint]:
    """``checkpoints`` with the save the run folder's resume pointer names (steps.resume_pointer) marked, where it is
    not the newest: DeepSpeed and Megatron resume what it names (a helper's trial: latest set back to the healthy
    global_step200 as the next steps said, and the run still failed on the abandoned global_step300)."""
    pointer = resume_pointer(root)
    if pointer is None or not checkpoints or Path(checkpoints[-1].path).name == pointer[1]:
        return checkpoints
    return [dataclasses.replace(c, pointed=pointer[0]) if Path(c.path).name == pointer[1] and not c.final else c
            for c in checkpoints]


def _expected_ranks(ranks: dict[Path, frozenset[str]]) -> dict[Path, frozenset[str]]:
    """The Megatron rank folders each iteration (``ranks``: its rank folders, in step order) should hold: its previous
    iteration's, where the next one (if any) holds them too. A run resharded to fewer ranks (TP 4, then 2) changes its
    grid from one save on, and the saves after it agree with each other: no rank is missing there (a review: TP 4 to
    2 made the newest INCOMPLETE)."""
    order = list(ranks)
    expected = {}
    for at, folder in enumerate(order):
        held = ranks[order[at - 1]] - ranks[folder] if at else frozenset()
        expected[folder] = held & ranks[order[at + 1]] if at + 1 < len(order) else held
    return expected


def _missing_files(checkpoints: list[RunCheckpoint]) -> list[str]:
    """Notes for a ``checkpoint-N`` folder that lacks a file every other one of the run holds (an
    ``optimizer.pt``, ``scheduler.pt``): its weights may be fine, but ``resume_from_checkpoint`` from it starts
    a fresh optimizer or schedule. Only where at least two other folders agree."""
    # (Lightning step files each hold one file of their own name: no name is common to them, so none is missing)
    folders = [(c, {Path(f).name for f in c.report.files}) for c in checkpoints
               if c.report is not None and not c.report.errors and not c.final and not c.last and c.same_as is None]
    if len(folders) < 3:
        return []
    held = Counter(name for _, names in folders for name in names)
    notes = []
    for c, names in folders:
        missing = sorted(n for n, count in held.items() if count == len(folders) - 1 and n not in names)
        if missing:
            what = sorted({next((said for start, said in _WITHOUT if n.startswith(start)), "without that file")
                           for n in missing})
            notes.append(f"{c.name} lacks {', '.join(missing)}, which every other checkpoint of the run holds: "
                         f"resume_from_checkpoint from it would start {' and '.join(what)}")
    return notes


# What resuming without a Trainer checkpoint's file starts with, by the start of its name.
_WITHOUT = (("optimizer", "with a fresh optimizer"), ("scheduler", "with a fresh learning-rate schedule"),
            ("rng_state", "with other random states"), ("scaler", "with a fresh loss scale"))


def zeroed_since(report: ScanReport, earlier: list[tuple[str, ScanReport]]) -> dict[str, Any] | None:
    """The weights all zero in ``report`` that were not all zero in an ``earlier`` checkpoint of its run ((name,
    report) of the previous checkpoint read and of the run's first healthy one), and the first checkpoint that
    says so: ``{"names": [...], "checkpoint": name}``, the run context's ``zeroed_since`` (verdict.ZEROED_SINCE)
    that makes them ``zeroed``; None when there are none. Training never zeroes a whole tensor; a broken copy, a
    failed write or a conversion does, and a zeroed ``lm_head`` or norm puts the loss back at uniform."""
    from nandoctor import verdict

    found = [(checkpoint, verdict.newly_zero(report, before)) for checkpoint, before in earlier]
    names = sorted({name for _, newly in found for name in newly})
    if not names:
        return None
    return {"names": names, "checkpoint": next(checkpoint for checkpoint, newly in found if newly)}


_NAMED = 5  # tensor names quoted in a message; the rest counted


# a checkpoint's model weights: name -> (dtype, shape, file, the elements it views in a torch file)
Weights = dict[str, tuple[str, tuple[int, ...], str, Any]]


def _weights_by_name(report: ScanReport) -> Weights:
    """The model weights of ``report``: name → (dtype, shape, file, what it views: weight_entry)."""
    refs = report.tensors.refs
    return {name: weight_entry(refs[i]) if not refs.files[i].endswith(".safetensors")
            else (refs.dtypes[i], refs.shapes[i], refs.files[i], None)
            for i, name in enumerate(refs.names) if refs.roles[i] == "weight"}


def weight_entry(ref: TensorRef) -> tuple[str, tuple[int, ...], str, Any]:
    """(dtype, shape, file, the elements it views) of a weight: two names of a torch file that view the same
    elements (tied weights saved as one storage) have the same last item; a safetensors tensor is its own (None)."""
    return ref.dtype, ref.shape, ref.file, None if ref.file.endswith(".safetensors") else ref.elements_key


def _tied_copy(name: str, held: dict[str, Any], others: list[Weights]) -> bool:
    """Whether ``name``, which ``held`` lacks and ``others`` (neighbours) hold, is a tied copy of a tensor ``held``
    holds: a safetensors save keeps one of them, a torch file both names (a safetensors file that holds both holds
    two tensors: untied). Known by a neighbour's torch file viewing both names in one storage (BERT's
    ``cls.predictions.decoder.bias``, RoBERTa's ``lm_head.decoder.*``: any pair), else by checkpoint/ties.py's pairs."""
    from nandoctor.checkpoint.ties import tie_candidates

    for names in others:
        viewed = names.get(name, (None,) * 4)[3]
        if viewed is not None and any(other in held and entry[3] == viewed for other, entry in names.items()
                                      if other != name):
            return True

    parts = name.split(".")  # (under any wrapper prefix: module., base_model.model., state_dict.)
    partners = {p for i in range(len(parts)) for p in tie_candidates(".".join(parts[i:]))}
    if not partners or any(names[name][2].endswith(".safetensors") for names in others if name in names):
        return False
    return any(other == p or other.endswith("." + p) for other in held for p in partners)


def renamed_tensors(checkpoints: list[RunCheckpoint]) -> list[RunCheckpoint]:
    """``checkpoints`` with a problem (exit 3, ``verdict.NAMES_KIND``) on each one whose model tensor names differ
    from its neighbours': it lacks a name both neighbours hold, or it holds a name no other checkpoint of the run
    holds while a neighbour holds, under a name it lacks that two other checkpoints hold, a tensor of the same
    dtype and shape. A run's model never changes its tensor names between saves; a flipped bit in a
    safetensors header does (``lm_head.weight`` read as ``lm_hfad.weight``: from_pretrained reports
    ``lm_head.weight`` missing and initialises it afresh). Conservative: a tied copy saved once is not missing,
    a tensor added or dropped from some save on moves no neighbour, and of two checkpoints alone neither is
    blamed. The final model and a Lightning last.ckpt are not compared (their own naming)."""
    from nandoctor import verdict

    compared = [(i, c.report) for i, c in enumerate(checkpoints) if c.report is not None and not c.report.errors
                and not c.final and not c.last and c.same_as is None and c.status != INCOMPLETE]
    if all(r.tensors.refs.names == compared[0][1].tensors.refs.names for _, r in compared):
        return checkpoints  # (every checkpoint the same names in the same order: the usual run, one C compare each)
    rows = [i for i, _ in compared]
    found = names_changed([_weights_by_name(r) for _, r in compared], [checkpoints[i] for i in rows])
    out = list(checkpoints)
    for k, problem in found.items():
        c = checkpoints[rows[k]]
        report = c.report
        assert report is not None
        fail_on = report.judgement.fail_on if report.judgement is not None else verdict.DEFAULT_FAIL_ON
        report = verdict.judged(dataclasses.replace(report, errors=(*report.errors, problem)), fail_on)
        out[rows[k]] = dataclasses.replace(c, report=report, status=UNREADABLE, why="")
    return out




def names_changed(weights: list[Weights], checkpoints: list[RunCheckpoint]) -> dict[int, ScanProblem]:
    """The problem (``verdict.NAMES_KIND``) of each of a run's checkpoints, in step order, whose model tensor names
    differ from its neighbours' (:func:`renamed_tensors` says which): ``weights[k]`` are ``checkpoints[k]``'s, and
    a checkpoint needs its ``name`` and ``path``."""
    from nandoctor import verdict

    held = Counter(name for names in weights for name in names)
    first_at: dict[str, int] = {}
    last_at: dict[str, int] = {}
    for k, names in enumerate(weights):
        for name in names:
            first_at.setdefault(name, k)
            last_at[name] = k
    found: dict[int, ScanProblem] = {}
    for k, mine in enumerate(weights):
        neighbours = [(checkpoints[j].name, weights[j]) for j in (k - 1, k + 1) if 0 <= j < len(weights)]
        lacked = set(neighbours[0][1]).intersection(neighbours[1][1]) - mine.keys() if len(neighbours) == 2 else set()
        unexpected = sorted(n for n in mine if held[n] == 1)
        # A name held on one side of this checkpoint only (the run's first, or its newest, whose names the saves
        # after or before it all changed) is a renaming that starts there, told from damage by its form: a flipped
        # bit in a header changes one character of a name, a rename (torch.compile's _orig_mod., pruning's
        # weight_orig, DDP's module.) more (a trial: a run's first checkpoint, the only one that loads into the
        # plain model, was TENSOR NAMES CHANGED)
        pairs = [(m, u) for _, names in neighbours for m in sorted(names.keys() - mine.keys()) if held[m] >= 2
                 for u in unexpected if names[m][:2] == mine[u][:2]
                 and (first_at[m] < k < last_at[m] or _one_character_apart(m, u))]
        others = [names for _, names in neighbours]
        missing = sorted({m for m in lacked | {m for m, _ in pairs} if not _tied_copy(m, mine, others)})
        if not missing:
            continue
        c = checkpoints[k]
        holders = " and ".join(name for name, names in neighbours if missing[0] in names)
        message = f"{first_few(missing, _NAMED)} missing, which {holders} {'hold' if ' and ' in holders else 'holds'}" + (
            f"; {first_few(unexpected, _NAMED)} held by no other checkpoint of the run" if unexpected else "")
        file = mine[unexpected[0]][2] if unexpected else c.path
        found[k] = ScanProblem(file, message, _renamed_hint(c, missing, pairs, mine, holders.split(" and ")[0]),
                               kind=verdict.NAMES_KIND)
    return found


def _one_character_apart(a: str, b: str) -> bool:
    """The same length, one character different: what one flipped bit makes of a name."""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def _renamed_hint(c: RunCheckpoint, missing: list[str], pairs: list[tuple[str, str]],
                  mine: Weights, holder: str) -> str:
    """What to do about a checkpoint whose tensor names changed: rename a tensor back (a safetensors file: the
    bytes under the wrong name are the tensor's, one flipped bit in the header renamed it), or restore the file."""
    from nandoctor.checkpoint.renaming import rename_back_command, renamed_words

    load = f"from_pretrained would initialise {missing[0]} afresh (random values where the trained ones were), and `nandoctor repair` " \
           "restores values, not names"
    renames = {m: u for m, u in pairs if m in missing}
    if len(renames) == len(missing) and len(set(renames.values())) == len(renames):
        file = mine[next(iter(renames.values()))][2]
        if file.endswith(".safetensors") and all(mine[u][2] == file for u in renames.values()):
            return (f"{load}: the tensor{'s are' if len(renames) > 1 else ' is'} there under another name (same dtype and "
                    f"shape; a flipped bit in the header renames one): rename {renamed_words(renames)} with "
                    f"{rename_back_command(file, renames)} and scan again")
    return (f"{load}: restore {c.name}'s weight files from a good copy (a backup, or where it was saved), or resume "
            f"from {holder}")


def _row_written(c: RunCheckpoint) -> float:
    """When a row's save was written: a final model at the run folder's top by its weight files (the folder's own
    time moves whenever a checkpoint folder is made in it), any other by its path (:func:`_written`)."""
    if c.pointed:  # (named since: a user who set latest back to a healthy save wrote it after the later saves)
        return max(_written(c.path), _written(str(Path(c.path).parent / c.pointed)))
    if c.final and not c.saved_into and os.path.isdir(c.path):
        try:
            files = [e for e in access.listing(Path(c.path)) if holds_weights([e])]
        except NandoctorError:
            files = []
        if files:
            return max(_written(str(f)) for f in files)
    return _written(c.path)


def _written(path: str) -> float:
    """When the save at ``path`` was written (its modification time; a link's target's); -inf when it cannot be
    told (gone, or behind a folder no one may search: never later than anything; its row says why)."""
    try:
        found = access.status(path)
    except UnreadablePathError:
        return float("-inf")
    return found.st_mtime if found is not None else float("-inf")


def checkpoint_name(target: str | os.PathLike[str]) -> str:
    """The name a run knows the checkpoint at ``target`` by: its ``checkpoint-N`` folder for a file inside one
    (``checkpoint-300/model.safetensors``), else its own (a folder, a Lightning step file); ``.`` named too."""
    path = access.named_path(target)
    folder = path.parent
    return folder.name if not access.is_dir(path) and step_of(folder) is not None else path.name


def loss_broke_before(log: TrainLog | None, step: int) -> int | None:
    """The step from which the trainer log's loss jump says the saved weights were already broken
    (TrainLog.broken_weights_from), when the checkpoint at ``step`` was saved from then on; else None."""
    if log is None or log.error:
        return None
    start = log.broken_weights_from
    return start if start is not None and step >= start else None


# A jump at the log's last entry (none after it to confirm it) this many times the early loss: with the weights'
# growth it is diverged (a trial's run logged at its saves, so the jump was always the last entry: 68x); said as a
# caution on its own only as TrainLog.loss_jump_said says (a batch-size-1 log's last entry may be a rare example)
LOSS_JUMP_AT_LAST = 10.0


def loss_jump_at(log: TrainLog | None, step: int) -> dict[str, Any] | None:
    """``{step, loss, early_loss, sustained}`` where the trainer log's loss jumped before the save at ``step``
    (loss_broke_before) and stayed up (TrainLog.loss_jump_sustained), or jumped ``LOSS_JUMP_AT_LAST`` times at its
    last entry, which no later one can confirm (a trial: one update at 3e4 times the loss, logged 13,000x its early
    loss, and saved); None otherwise. The verdict reads it with the weights' growth (verdict.diverged_why), and as a
    caution where the run's reports warn of it too (TrainLog.loss_jump_said: verdict.loss_jump_caution)."""
    if log is None or loss_broke_before(log, step) is None or log.loss_jump is None:
        return None
    loss, early = log.loss_jump
    last = not log.loss_jump_confirmed and log.loss_jump_step == log.last_step
    if not (log.loss_jump_sustained or (last and early > 0 and loss >= LOSS_JUMP_AT_LAST * early)):
        return None
    return {"step": log.loss_jump_step, "loss": loss, "early_loss": early, "sustained": log.loss_jump_said}


def jump_before_save(log: TrainLog | None, later: TrainLog | None, step: int) -> tuple[dict[str, Any] | None,
                                                                                  TrainLog | None]:
    """(:func:`loss_jump_at` for the save at ``step``, the log that says it): by the save's own ``log``, or by
    ``later`` (the run's log as its newest save or metrics.csv holds it) where that confirms a jump the save's own log
    ends in or does not reach. Whether a jump before the save stayed up is for the logs after it to say: a Lightning
    save logs the loss of its own weights at its own step, after the save, so the save at the jump read healthy in the
    run scan while a scan of it alone, which reads the later log, read DIVERGED (a trial at lr 2, warmed up)."""
    jump = loss_jump_at(log, step)
    confirmed = loss_jump_at(later, step) if later is not None and later is not log else None
    if confirmed is not None and (jump is None or not jump["sustained"]):
        return confirmed, later
    return jump, log


def log_broke_by(log: TrainLog | None, step: int) -> int | None:
    """The trainer log's first NaN/Inf loss or grad_norm step when it is at or before ``step``, else None."""
    first = None if log is None or log.error else log.nonfinite_from
    return first if first is not None and first <= step else None


@dataclass(frozen=True)
class _Row:
    """A timeline row to scan: a checkpoint (maybe a tmp- one), a Lightning run's last file, or the final model."""

    step: int
    path: Path
    tmp: bool = False
    kind: str = ""  # "", "last", "final" or "saved" (a model saved into a folder of the run: models_saved_into)
    step_known: bool = True
    aside: bool = False  # a step-file run's file off its timeline (stepfiles.StepFolder.unplaced)
    decides: bool = True  # (not for an older save of a second template: RunCheckpoint.decides)


def models_saved_into(entries: list[Path]) -> tuple[list[Path], list[Path]]:
    """The folders among a run folder's ``entries`` that hold a model at their top but are no checkpoint of the
    timeline (``trainer.save_model(out + "/final")``, ``best_model/``, a merged LoRA model): each a row of the run
    that decides its exit code, as the final model at the run's top does (a trial: NaN in ``final/`` passed CLEAN,
    never read, with no word of it). Second, the model folders set aside (:func:`_set_aside`), which a note names."""
    out: list[Path] = []
    aside: list[Path] = []
    # (a DeepSpeed save folder's save under a tag of its own, save_checkpoint(tag="best"), that latest names: what
    # load_checkpoint loads, a helper's NaN there passed unread)
    tag = deepspeed_tag(entries[0].parent) if any(e.name == DEEPSPEED_LATEST for e in entries) else None
    for entry in entries:
        if (entry.name.startswith((".", "checkpoint-")) or entry.name.endswith(".ckpt") or _TMP_CHECKPOINT.match(entry.name)
                or step_of(entry) is not None or not access.is_dir(entry, refused=False)):
            continue
        try:
            inner = access.listing(entry)
        except NandoctorError:
            continue
        if holds_weights(inner) and (looks_like_model(inner) or entry.name == tag):
            (aside if _set_aside(entry) else out).append(entry)
    return sorted(out), sorted(aside)


# (hints.put_in_place's names: -bad, or -bad-2 … where taken; bad-checkpoint-N for a Trainer checkpoint)
_SET_ASIDE_NAME = re.compile(r"-bad(?:-\d+)?$|^bad-checkpoint-\d+(?:-\d+)?$")
# transformers' Trainer finds the checkpoints it rotates (save_total_limit) with the glob checkpoint-* and reads each
# one's step with this pattern: a checkpoint-30-bad/ or checkpoint-30-copy/ in the run counts as a save of step 30
_TRAINER_ROTATES = re.compile(r".*checkpoint-([0-9]+)")


def is_trainer_checkpoint(folder: Path) -> bool:
    """A Trainer ``checkpoint-N`` folder by name (not accelerate's ``checkpoint_N``, torchtitan's ``step-N`` …)."""
    return folder.name.startswith("checkpoint-") and step_of(folder) is not None


def _set_aside(folder: Path) -> bool:
    """A folder the repair's next steps name, not the model a run loads: a bad one moved aside (``final-bad``,
    ``final-bad-2``), or a
    repair not yet put in place (its proof names another folder that still exists). A repair moved in place names
    itself (the folder it was written for): a row again."""
    if _SET_ASIDE_NAME.search(folder.name):
        return True
    from nandoctor.checkpoint.hashes import PROOF_NAME
    from nandoctor.checkpoint.jsonfiles import read_json

    try:
        source = read_json(folder / PROOF_NAME).get("source") if (folder / PROOF_NAME).is_file() else None
    except (OSError, ValueError, AttributeError, NandoctorError):
        return False
    return isinstance(source, str) and os.path.abspath(source) != os.path.abspath(folder) and os.path.isdir(source)


def _newest_log(rows: list[_Row]) -> TrainLog | None:
    """The trainer log of the newest row that has a trainer_state.json: the run's log to its last save."""
    newest = next((r.path / TRAINER_STATE for r in reversed(rows) if os.path.isfile(r.path / TRAINER_STATE)), None)
    return read_train_log(newest) if newest is not None else None


def _step_file_rows(run: StepFolder, below_step: int | None) -> list[_Row]:
    """A Lightning run's rows: its step files; then (not with ``below_step``) last.ckpt, placed by the step it
    was saved at (after the step files of that step; after all of them when it cannot be read), and the
    final model after everything, with its own step where that is at or after the newest step file's."""
    rows = [_Row(step, p) for step, p in run.steps if below_step is None or step < below_step]
    if below_step is not None:
        return rows
    newest = run.steps[-1][0]
    if run.last is not None:
        own = saved_step(run.last)
        at = sum(1 for r in rows if own is not None and r.step <= own) if own is not None else len(rows)
        rows.insert(at, _Row(newest if own is None else own, run.last, kind="last", step_known=own is not None))
    # Weight files with no step to place them by (best.ckpt, a loop's best.pt or checkpoint_best.pt, ultralytics'
    # best.pt, two final candidates, an older last file): rows of their own, read and judged beside the deciding one,
    # never resume points (an adversarial round: NaN in each was named in a note, "scan them on their own", and the
    # run passed with a check)
    folder = run.steps[0][1].parent
    placed = {name: (file_step_of(folder / name), step_template(folder / name)) for name in run.unplaced}
    newest_of: dict[str, int] = {}  # a second template's newest step: that save decides, its older ones do not
    for step, template in placed.values():
        if step is not None:
            newest_of[template] = max(step, newest_of.get(template, step))
    for name in sorted(run.unplaced, key=natural_key):  # (ema_5 before ema_10)
        step, template = placed[name]
        older = step is not None and step < newest_of[template]
        rows.append(_Row(newest, folder / name, kind="saved", step_known=False, aside=True, decides=not older))
    if run.final is not None:
        own = saved_step(run.final)
        known = own is not None and own >= newest
        rows.append(_Row(own if own is not None and known else newest, run.final, kind="final", step_known=known))
    return rows


def _holds_the_model(report: ScanReport, names: set[str]) -> bool:
    """Whether ``report`` holds weights, at least half of them named as the timeline's save's weights ``names`` are (by
    their last two name parts: a container's or wrapper's prefix, ``model.``, ``ema.``, ``module.``, may differ)."""
    own = [_tail(n) for n in _weight_names(report)]
    known = {_tail(n) for n in names}
    return bool(own) and 2 * sum(1 for n in own if n in known) >= len(own)


def _weight_names(report: ScanReport) -> list[str]:
    refs = report.tensors.refs
    return [name for name, role in zip(refs.names, refs.roles) if role == WEIGHT]


def _tail(name: str, parts: int = 2) -> str:
    """The last ``parts`` parts of a dotted tensor name (what a wrapper's prefix leaves the same)."""
    return ".".join(name.split(".")[-parts:])


def _same_as(row: _Row, done: list[RunCheckpoint]) -> tuple[RunCheckpoint, str] | None:
    """The earlier row of a Lightning run whose file ``row``'s file is (a link to it, or a byte-identical
    copy, as ``save_last`` often writes), newest first: then ``row`` is that row again, not a second save."""
    for earlier in reversed(done):
        if earlier.report is None or earlier.same_as is not None or earlier.final:
            continue
        if row.step_known and earlier.step != row.step:
            continue  # the same bytes hold the same global_step
        how = same_file(row.path, Path(earlier.path))
        if how is not None:
            return earlier, how
    return None


def unreadable_report(path: Path, exc: UnreadablePathError) -> ScanReport:
    """The judged report of a checkpoint the file system would not show: no tensors, one problem (exit 3)."""
    from nandoctor import verdict

    problem = ScanProblem(exc.path, exc.reason, exc.hint)
    return verdict.judged(ScanReport(str(path), (), TensorResults.of(()), (), errors=(problem,)))


def scan_run(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    both_formats: bool = False,
    scan_one: Callable[..., ScanReport] | None = None,
    below_step: int | None = None,
) -> RunReport:
    """Scan every ``checkpoint-N`` (and half-written ``tmp-checkpoint-N``) folder of a run, oldest first,
    then the final model at the run folder's top where there is one (not with ``below_step``). A Lightning
    run: its step files, its last.ckpt and its final model file (checkpoint/stepfiles.py). Models saved into
    folders of a run (``final/``, ``best_model/``: :func:`models_saved_into`) are rows too, before the top one."""
    import time

    started = time.perf_counter()
    root = Path(path)
    if scan_one is None:
        from nandoctor.engine import scan
    scan_checkpoint: Callable[..., ScanReport] = scan if scan_one is None else scan_one
    step_run = step_folder(root)
    stepped = step_run is not None
    rows = [] if step_run is None else _step_file_rows(step_run, below_step)
    if step_run is None:
        rows = [_Row(step, p) for step, p in checkpoints_in(root)]
    entries = access.listing(root)
    for entry in entries:
        match = _TMP_CHECKPOINT.match(entry.name)
        if not stepped and match and access.is_dir(entry):
            rows.append(_Row(int(match.group(1)), entry, tmp=True))
    if not stepped:
        rows.sort(key=lambda r: (r.step, r.tmp, r.path.name))
        if below_step is not None:  # repair's --from auto: only the checkpoints before its target
            rows = [r for r in rows if r.step < below_step]
    # (lenient: a checkpoint folder that cannot be read is its row's problem, reported by its scan)
    with_state = sum(1 for r in rows if os.path.isfile(r.path / TRAINER_STATE))
    # The final model (checkpoint/finalmodel.py) comes after every checkpoint, whatever step its state gives
    newest_step = rows[-1].step if rows else 0
    final_at = final_step(root)
    final_known = final_at is not None and final_at >= newest_step
    saved, set_aside = models_saved_into(entries)
    if step_run is not None:  # (a Lightning version folder's checkpoints/ is its timeline, no model saved into it)
        saved = [folder for folder in saved if folder != step_run.folder]
    if below_step is None:
        for folder in saved:
            at = final_step(folder)
            known = at is not None and at >= newest_step
            rows.append(_Row(at if at is not None and known else newest_step, folder, kind="saved", step_known=known))
    if below_step is None and not stepped and has_final_model(root):
        rows.append(_Row(final_at if final_at is not None and final_known else newest_step, root, kind="final",
                         step_known=final_known))
    elif below_step is None and not stepped:  # (torch files at the top that are no model: rows of their own)
        rows += [_Row(newest_step, file, kind="saved", step_known=False, aside=True) for file in loose_files(root)]
    # A Lightning run's trainer log is its CSVLogger's metrics.csv near the checkpoints (else the losses the training
    # callback judged its saves with, kept in its nandoctor.json: callbacklog.py), read once; each file gets the rows
    # logged before its save, as a checkpoint-N folder's trainer_state.json holds them
    # (the folder of the saves: a version folder's checkpoints/, where the callback keeps its files)
    saves = root if step_run is None else step_run.folder
    metrics = lightning_log(saves, csv_near=root) if stepped else None
    later_log = metrics.train_log() if metrics is not None else _newest_log(rows)  # (confirms a jump: jump_before_save)

    # Lightning keeps two files of one step by name (``-v1``); two checkpoint-N folders of one step are ambiguous
    problems = [] if stepped else duplicate_steps(checkpoints_in(root))
    pointer = None if stepped else pointer_problem(root, {p.name for p in timeline_folders(root)})
    if pointer is not None:
        problems.append(pointer)
    notes = [f"{p}; {STRAY_FOLDER_HINT}" for p in problems]
    if step_run is not None:  # (epoch=3.ckpt, best.pt: rows of their own, _step_file_rows)
        notes += [*step_run.notes, *unscanned_notes(step_run.folder)]  # (each row is one file: the folder's data
        # files said here)
    else:  # (checkpoint-best/: a Trainer-like name without a step, to be scanned on its own)
        others = sorted(
            e.name for e in entries
            if e.name.startswith("checkpoint-") and step_of(e) is None and access.is_dir(e)
        )
        if others:
            notes.append(f"not part of the timeline (not named checkpoint-<step>): {', '.join(others[:5])}"
                         + (" …" if len(others) > 5 else "") + "; scan them on their own")
        rotated = [name for name in others if _TRAINER_ROTATES.match(name)]
        if rotated and any(is_trainer_checkpoint(p) for _, p in checkpoints_in(root)):
            notes.append(f"transformers' Trainer counts {first_few(rotated, 3)} among the checkpoints its "
                         "save_total_limit rotation keeps (it lists checkpoint-* and reads the step in the name): a "
                         "later save may delete a healthy checkpoint and keep them; move them out of the run folder")
    if set_aside:
        notes.append(f"not part of the timeline: {', '.join(p.name + '/' for p in set_aside[:5])}"
                     f"{' …' if len(set_aside) > 5 else ''} (a model moved aside as bad, or a repair not yet put in "
                     "place); scan them on their own")

    from nandoctor import verdict as verdicts

    done_before = 0
    from_start: list[str] = []  # the rows measured against the initial weights (said in one note after the rows)
    fell = kept_by = ""
    checkpoints: list[RunCheckpoint] = []
    healthy: dict[str, float] | None = None  # the first healthy checkpoint's verdict.tensor_scales: the baseline
    newest = next((r.path for r in reversed(rows) if r.path is not root), None)
    kept = kept_before(saves, (r.step for r in rows if r.step_known), newest)  # a baseline rotation took away
    # the initial weights' is each row's own to use, by that row's log (baseline.usable_baseline): the loss may have
    # fallen up to one save and jumped after it
    initial = kept if kept is not None and kept.checkpoint == INITIAL_WEIGHTS else None
    if initial is not None:
        kept = None
    # without the callback's, the start a model's config implies (initscales.py), taken at the first row scanned
    implied = initial is None and kept is None
    untrained: float | None = None
    if kept is not None:
        healthy = kept.scales
        notes.append(f"growth measured since {kept.checkpoint} (step {kept.step}), the run's first healthy checkpoint, "
                     f"which is gone: its scales were kept in {BASELINE_NAME} by the training callback")
    elif (ignored := load_baseline(saves)[1]) is not None:
        notes.append(ignored)  # a file at its name that is no baseline (a link, a FIFO, a number out of range)
    previous: dict[str, float] = {}
    # (name, report) of the previous checkpoint read and of the first healthy one: a weight all zero in a later
    # checkpoint that was not in them is zeroed (zeroed_since)
    earlier: list[tuple[str, ScanReport]] = []
    first_healthy: list[tuple[str, ScanReport]] = []
    newest_log: TrainLog | None = None  # the last row's log: a final model without its own trainer_state.json has it
    timeline_names: set[str] = set()  # the tensor names of the timeline's first save read: its model's
    from nandoctor.engine import watch_budget

    # Megatron's rank folders of each iteration: one the others hold is missing where an iteration lacks it
    ranks = _expected_ranks({row.path: rank_folders(row.path) for row in rows
                             if row.path is not root and is_megatron_save(row.path)})
    with watch_budget():  # (one short wait for saves still being written, shared by every row)
        for row in rows:
            step, folder = row.step, row.path
            is_final, is_last = row.kind in ("final", "saved"), row.kind == "last"
            same = _same_as(row, checkpoints) if stepped and row.kind else None
            if same is not None:  # last.ckpt linked to (or copied from) a step file: that row again, not scanned twice
                original, how = same
                checkpoints.append(dataclasses.replace(
                    original, path=str(folder), final=is_final, last=is_last, growth=None, same_as=original.name,
                    same_how=how))
                continue
            if folder is root:
                reasons = final_reasons(root)
            else:
                reasons = incomplete_reasons(folder, expect_trainer_state=with_state > 0 and not row.kind,
                                             expect_ranks=ranks.get(folder, frozenset()))
            if row.tmp:
                reasons.insert(0, "a tmp-checkpoint folder: the save was never renamed into place")
            report = None
            offset = done_before

            def forward(done: int, total: int, file: str, offset: int = offset) -> None:
                if progress:
                    progress(offset + done, offset + total, file)

            try:
                kwargs: dict[str, Any] = {"device": device, "progress": forward, "both_formats": both_formats}
                if target_dtype is not None:
                    kwargs["target_dtype"] = target_dtype
                report = scan_checkpoint(folder, **kwargs)
                done_before += report.bytes_scanned
            except UnreadablePathError as exc:  # the file system will not show it: this row's problem, not the run's
                report = unreadable_report(folder, exc)
            except NandoctorError as exc:
                if not reasons:  # a folder that is complete but unreadable as a whole: keep the reason
                    reasons.append(exc.message)
            if row.aside and report is not None and report.errors and all(
                    p.kind == verdicts.EMPTY_KIND for p in report.errors):
                # (a file off the timeline that holds no tensors, a loop's torch.save(args): no checkpoint, a note)
                notes.append(f"{folder.name}: holds no tensors, so it is no checkpoint of the run")
                continue
            state = folder / TRAINER_STATE
            log = (read_train_log(state) if os.path.isfile(state)
                   else metrics.train_log(step) if metrics is not None else None)
            if log is None and is_final:  # (save_model() without save_state(): the newest checkpoint's log runs to the end)
                log = newest_log
            elif log is not None:
                newest_log = log
            zeroed = zeroed_since(report, earlier) if report is not None and earlier else None
            if report is not None and zeroed is not None:  # a weight all zero that an earlier checkpoint held not all zero
                report = verdicts.with_run_context(report, {verdicts.ZEROED_SINCE: zeroed})
            if untrained is None and report is not None and folder is not root:
                holder = folder if access.is_dir(folder, refused=False) else folder.parent
                untrained = untrained_loss(holder)
                initial = implied_start(holder, report) if implied and initial is None else initial
            # (the implied start is a guess: a healthy checkpoint on disk, once there is one, is the baseline instead)
            guessed = implied and healthy is not None
            baseline = (initial.scales if initial is not None and not guessed and usable_baseline(initial, log, untrained)
                        else healthy)
            if baseline is not None and baseline is not healthy:
                from_start.append(checkpoint_name(folder))
                # (a LoRA adapter's start is PEFT's own init, not a config's: a trial's LoRA run was told otherwise)
                drawn = "config.json's initializer_range" if initial is not None and initial.guessed else "PEFT's default LoRA init"
                kept_by = (f"as {drawn} draws them: no training callback kept the weights at step 0"
                           if implied else f"the training callback kept their scales in {BASELINE_NAME}")
                # (a guessed start is used only for a loss that stands above an untrained model's; a seen one wherever
                # the loss did not fall by a third, a fine-tune's from a trained model's loss too: said as it is, a
                # false-alarm hunt; a new user read "no checkpoint is a healthy baseline" beside a PASS as an alarm: it
                # is a method)
                fell = ("stood above an untrained model's loss" if initial is not None and initial.guessed
                        else "had not come down yet (to two thirds of its first value, or within 4x of an untrained "
                             "model's loss)")
            # (with it, a smaller growth is diverged: verdict.diverged_why)
            jump, jumped_in = jump_before_save(log, later_log, step)
            broke_from = loss_broke_before(jumped_in, step)
            if jump is None and initial is not None and baseline is initial.scales:
                jump = never_trained(initial, log, untrained, later_log)  # (a loss that never came near a trained model's)
                broke_from = 0 if jump is not None else broke_from
            status, why = verdicts.checkpoint_status(report, bool(reasons), baseline, log_broke_by(log, step), jump)
            if report is not None and status == DIVERGED and report.health != DIVERGED:
                # diverged by its growth since the first healthy checkpoint: the report carries that growth, as a
                # standalone scan's run context does, so its verdict, exit code and --quiet line say so too
                grown = verdicts.growth(report, baseline or {})
                assert grown is not None
                report = verdicts.with_run_context(report, {"growth": grown.to_json()} if jump is None else {
                    "growth": grown.to_json(), "loss_jump": jump, verdicts.LOSS_BROKE_FROM: broke_from})
            # a file off the timeline decides where it holds the run's model (best.pt, an EMA copy: most of its tensors
            # named as a step file's); one that does not (a loop's data_stats.pt, an optimizer's own save) is read and
            # judged, its poison a caution, as an older row's is
            # (one that could not be read holds what it holds: it is judged as the model, as a step file would be)
            model = not row.aside or report is None or bool(reasons) or bool(verdicts.weight_errors(report)) or \
                _holds_the_model(report, timeline_names)
            checkpoint = RunCheckpoint(step, str(folder), status, report, tuple(reasons), log, None, why, is_final,
                                       step_known=row.step_known, last=is_last, saved_into=row.kind == "saved",
                                       decides=row.decides and model, model=model,
                                       worse_than_untrained=untrained_jump(log, untrained, later_log))
            if report is not None and not row.aside and not timeline_names:
                timeline_names = set(_weight_names(report))
            if report is not None and is_final:  # (what it left unread is said for the run, not only in its report)
                notes += [f"{checkpoint.name}: {note}" for note in report.notes if BOTH_FORMATS_HINT in note]
            scales = {} if report is None else verdicts.tensor_scales(report)
            # shown: the growth since the previous checkpoint, and since the first healthy one (the rule's); a file off
            # the timeline (an optimizer's save, an epoch's beside the steps') has no place to grow from
            if report is not None and scales and not row.aside:
                since_previous, since_healthy = verdicts.growth(report, previous), verdicts.growth(report, baseline or {})
                checkpoint = dataclasses.replace(
                    checkpoint, growth=since_previous.factor if since_previous else None,
                    baseline_growth=since_healthy.factor if since_healthy else None)
                previous = scales
            if report is not None:
                earlier = [(checkpoint.name, report), *(h for h in first_healthy if h[1] is not report)]
            if status in HEALTHY_STATUSES and scales and healthy is None:
                healthy = scales  # the rule's baseline: the run's first healthy checkpoint
            if status in HEALTHY_STATUSES and report is not None and not first_healthy:
                first_healthy = earlier[:1]  # (also where a kept baseline stands for a checkpoint rotated away)
            checkpoints.append(checkpoint)

    if from_start:
        # (the rows it holds for, named: a new user's healthy run, loss 4.85 to 1.54, read "the trainer log's loss has
        # not come down yet, so no checkpoint stands for trained weights" beside its PASS, true of its first save only)
        some = len(from_start) < sum(1 for c in checkpoints if c.same_as is None and c.report is not None)
        notes.append(f"growth is measured against the weights the run started from (step 0), not against a checkpoint, "
                     f"for {first_few(from_start, 3)}: the trainer log's loss {fell} when "
                     f"{'it was' if len(from_start) == 1 else 'they were'} saved, so no "
                     f"{'earlier ' if some else ''}checkpoint stands for trained weights ({kept_by})")
    notes += _missing_files(checkpoints)
    checkpoints, said = _earlier_weights(checkpoints)
    notes += said + _two_runs(checkpoints)
    checkpoints = _pointed(root, checkpoints)
    checkpoints = renamed_tensors(checkpoints)
    logs = [c.log for c in checkpoints if c.log is not None and c.log.error is None]
    final_state = root / TRAINER_STATE  # trainer.save_state() at the end of training writes one here
    if final_state.is_file():
        top_log = read_train_log(final_state)
        if top_log.error is None:
            logs.append(top_log)
    run_log = max(logs, key=lambda g: g.last_step or -1) if logs else None
    if metrics is not None:  # every row, also those logged after the newest save
        run_log, series = metrics.train_log() or run_log, metrics.series()
    else:
        series = read_series(root, run_log.source if run_log else None)
    return RunReport(str(path), tuple(checkpoints), run_log, tuple(notes), time.perf_counter() - started,
                     problems=tuple(problems), series=series, untrained_loss=untrained)
