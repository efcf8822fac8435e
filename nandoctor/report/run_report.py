"""RunReport → a rich timeline (one row per checkpoint) and → JSON (the ``run`` schema in docs/json.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.runs import (
    AMBIGUOUS_WORDS,
    CLEAN,
    DIVERGED,
    HEALTHY_STATUSES,
    INCOMPLETE,
    OVERFLOW,
    POISONED,
    STRAY_FOLDER_HINT,
    UNREADABLE,
    ZEROED_WORDS,
    RunCheckpoint,
    RunReport,
    TrainLog,
    row_verdict,
    status_words,
)
from nandoctor.checkpoint.steps import (
    DEEPSPEED_LATEST,
    MEGATRON_TRACKER,
    POINTER_HINT,
    is_accelerate_save,
    megatron_tracker_text,
    resume_pointer,
)
from nandoctor.hints import AUTO, base_model_steps, repair_command, repair_command_for
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport
from nandoctor.report.rich_report import human_bytes, safe
from nandoctor.wording import first_few, path_word

POINTER_FILES = (DEEPSPEED_LATEST, MEGATRON_TRACKER)  # (a run problem of its resume pointer begins with its file)

_STYLE = {CLEAN: "green", OVERFLOW: "yellow", POISONED: "red", DIVERGED: "bold red", UNREADABLE: "red",
          INCOMPLETE: "yellow"}
_WORD = {CLEAN: "✓ healthy", OVERFLOW: "! overflow risk", POISONED: "✗ poisoned", DIVERGED: "✗ diverged",
         UNREADABLE: "✗ unreadable", INCOMPLETE: "… incomplete"}


def status_word(c: RunCheckpoint, broken_from: int | None = None) -> str:
    """A row's status for the timeline's ``weights`` column, marked (runs.status_words: ``✗ not loadable``); a healthy
    row saved after the step from which the trainer log's loss says the weights were broken (``broken_from``:
    RunReport.broken_weights_from) is ``⚠ healthy``: no resume point (a helper's trial: the rows after a loss jump
    read ✓ while the line under the table said none of them was one)."""
    words = status_words(c)
    if c.status == CLEAN and broken_from is not None and c.step_known and not c.saved_into and c.step >= broken_from:
        return "⚠ healthy"
    if c.status == CLEAN and c.worse_than_untrained is not None:  # (no resume point: untrained_lines says why)
        return "⚠ healthy"
    if words == ZEROED_WORDS:  # (explanations() says which and since when)
        return "⚠ zeroed"
    return _WORD[c.status] if words == c.status else f"✗ {words}"


def log_words(log: TrainLog | None) -> str:
    """A checkpoint's trainer log in a few words: where it broke, or how far it is finite."""
    if log is None:
        return "—"
    if log.error:
        return "unreadable"
    parts = []
    if log.skipped_steps:  # (fp16 loss scaling's skipped steps, or one applied step: no break of the log)
        parts.append(f"{'/'.join(log.first_nonfinite_keys)} NaN/Inf at {log.first_nonfinite_step}, finite after")
    elif log.nonfinite_from is not None and log.nonfinite_from != log.first_nonfinite_step:
        parts.append(f"NaN/Inf at {log.nonfinite_from}")
    elif log.first_nonfinite_step is not None:
        parts.append(f"{'/'.join(log.first_nonfinite_keys)} NaN/Inf at {log.first_nonfinite_step}")
    if log.first_zero_loss_step is not None:
        parts.append(f"loss 0.0 at {log.first_zero_loss_step}")
    if parts:
        return "; ".join(parts)
    return f"finite to {log.last_step}" if log.last_step is not None else "empty"


def _log_cell(log: TrainLog | None) -> Text:
    style = "dim" if log is None or log.suspicious_step is None else "red"
    return Text(log_words(log), style="yellow" if log is not None and log.error else style)


# Below this width the timeline folds +Inf/-Inf into one NaN/Inf column and drops step (the names
# carry it) and growth: at 80 columns eleven columns cut every checkpoint name to "checkp…".
_NARROW = 120


# Below the narrow layout's own width, its number columns go too, the least needed first, each said in the lines under
# the table instead (a review: at 50-60 columns rich cut 1.01e+04 to "1." and nan to "na", which read as normal)
_DROPPABLE = ("max |w|", "NaN/Inf", "bad")


def _timeline(run: RunReport, width: int = 160) -> tuple[Table, tuple[str, ...]]:
    """The timeline table, and the narrow layout's number columns left out of it for the width (:data:`_DROPPABLE`:
    :func:`_details` says them under it)."""
    with_overflow = any(c.report is not None and verdicts.target_dtype(c.report) for c in run.checkpoints)
    narrow = width < _NARROW
    table = Table(title="Timeline", title_justify="left", show_edge=False, header_style="bold")
    if narrow:
        columns = ["checkpoint", "weights", "bad", "NaN/Inf", "max |w|"]
    else:
        columns = ["step", "checkpoint", "weights", "bad tensors", "NaN", "+Inf", "-Inf", "max |w|", "growth"]
    if with_overflow:
        columns.append("overflow")
    if not narrow:  # narrow: printed under the table, one line per checkpoint (_details)
        columns += ["bad layers", "trainer log"]
    rows: list[list[Text | str]] = []
    for c in run.checkpoints:
        r = c.report
        word = status_word(c, run.broken_weights_from)
        style = "yellow" if word.startswith("⚠") else _STYLE[c.status]
        row: list[Text | str] = ([] if narrow else [c.step_label]) + [Text(safe(c.name)), Text(word, style=style)]
        if c.same_as is not None:  # the same file as a row above: its counts are said once, there
            row += [""] * (3 if narrow else 6) + ([""] if with_overflow else [])
            if not narrow:
                row += [Text(safe(same_words(c)), style="dim"), ""]
            rows.append(row)
            continue
        if r is None:
            row += [""] * (3 if narrow else 6) + ([""] if with_overflow else [])
        else:
            row.append(f"{len(r.unhealthy_tensors)}/{len(r.tensors)}")
            if narrow:
                row.append(f"{r.nan + r.posinf + r.neginf:,}")
            else:
                row += [f"{r.nan:,}", f"{r.posinf:,}", f"{r.neginf:,}"]
            row.append(c.max_abs_words)
            if not narrow:
                row.append(Text("" if c.growth is None else f"×{c.growth:.3g}",
                                style="red" if c.growth is not None and c.growth >= 32 else ""))
            if with_overflow:
                row.append(f"{verdicts.overflow_count(r):,}")
        if not narrow:
            row.append(Text(safe(_ranges(c))))
            row.append(_log_cell(c.log))
        rows.append(row)
    folding = ("bad layers", "trainer log")
    widths = [max([len(column), *(Text(cell).cell_len if isinstance(cell, str) else cell.cell_len
                                  for cell in (row[k] for row in rows))]) for k, column in enumerate(columns)]
    dropped: list[str] = []
    for column in _DROPPABLE if narrow else ():
        if sum(widths) + 3 * (len(widths) - 1) <= width:
            break
        k = columns.index(column)
        del columns[k], widths[k]
        rows = [row[:k] + row[k + 1:] for row in rows]
        dropped.append(column)
    for k, column in enumerate(columns):
        numeric = column in ("step", "NaN", "+Inf", "-Inf", "NaN/Inf", "bad", "bad tensors", "overflow", "max |w|",
                             "growth")
        # Names and numbers are never cut or broken (a narrow terminal showed checkpoint-10000 as "checkpoint-1000",
        # beside the real one): their columns are as wide as their longest cell; only the free-text columns fold.
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column not in folding,
                         overflow="fold", min_width=None if column in folding else widths[k])
    for row in rows:
        table.add_row(*row)
    return table, tuple(dropped)


def _ranges(c: RunCheckpoint) -> str:
    if c.report is None or c.same_as is not None:
        return ""
    return ", ".join(x.label for x in bad_ranges(c.report.layers))


def same_words(c: RunCheckpoint) -> str:
    """What a row that is an earlier row's file says instead of its counts: ``a link to epoch=0-step=12.ckpt``."""
    return f"{'a link to' if c.same_how == 'link' else 'the same bytes as'} {c.same_as}"


def decides_words(run: RunReport, decider: RunCheckpoint) -> str:
    """Which rows decide the run's exit code, in words (docs/cli.md)."""
    if decider.saved_into:  # (a model saved into a folder of the run, or a file off a step-file run's timeline)
        what = "a model saved into the run" if decider.name.endswith("/") else "a file off the run's timeline"
        return f"{decider.name}, {what}, decides the exit code beside its checkpoints"
    if decider.pointed:
        return f"{decider.name} decides the exit code: {decider.pointed} names it, what a resume loads"
    final = any(c.final and not c.saved_into for c in run.checkpoints)
    last = next((c for c in run.checkpoints if c.last), None)
    if (final or last is not None) and not (decider.final or decider.last) and _after_loaded(run, decider):
        # (a save after them: RunReport.deciding)
        loaded = "the final model" if last is None else last.name if not final else f"the final model and {last.name}"
        return f"{decider.name}, saved after {loaded}, decides the exit code: the run went on past what would be loaded"
    if final and last is not None:
        return f"the final model and {last.name} decide the exit code, the worse of them"
    if last is not None:
        resumes = 'what ckpt_path="last" resumes' if last.name.endswith(".ckpt") else "the run's newest save"
        return f"{last.name}, {resumes}, decides the exit code"
    return "the final model decides the exit code" if decider.final else "the newest checkpoint decides the exit code"


def _after_loaded(run: RunReport, decider: RunCheckpoint) -> bool:
    """Whether ``decider`` decides as a save made after the final model or last.ckpt (RunReport.deciding), not as the
    run's newest checkpoint beside a model saved into it."""
    loaded = [c for c in run.deciding if (c.final and not c.saved_into) or c.last]
    return bool(loaded) and decider not in loaded


def _details(run: RunReport, console: Console, dropped: tuple[str, ...] = ()) -> None:
    """The narrow timeline's last two columns, and its number columns ``dropped`` for the width, as lines under it
    (names, numbers and layer ranges are never cut)."""
    for c in run.checkpoints:
        if c.same_as is not None:
            console.print(Text(f"  {safe(c.name)}: {safe(same_words(c))}", style="dim"))
            continue
        parts = [f"{column} {value}" for column, value in _dropped_values(c, dropped) if value]
        ranges = _ranges(c)
        if ranges:
            parts.append(f"bad layers {safe(ranges)}")
        log = _log_cell(c.log) if c.log is not None and (c.log.error or c.log.suspicious_step is not None) else None
        if log is not None:
            parts.append(f"trainer log {log.plain}")
        if parts:
            console.print(Text(f"  {safe(c.name)}: " + "; ".join(parts), style=_STYLE[c.status]))


def _dropped_values(c: RunCheckpoint, dropped: tuple[str, ...]) -> list[tuple[str, str]]:
    """(column, its cell) of row ``c`` for the narrow timeline's ``dropped`` number columns, in the table's order."""
    r = c.report
    if r is None:
        return []
    cells = {"bad": f"{len(r.unhealthy_tensors)}/{len(r.tensors)}", "NaN/Inf": f"{r.nan + r.posinf + r.neginf:,}",
             "max |w|": c.max_abs_words}
    return [(column, cells[column]) for column in _DROPPABLE[::-1] if column in dropped]


def one_line(run: RunReport, fail_on: frozenset[str] | None = None) -> str:
    """``--quiet`` for a run: the deciding row's line (the newest checkpoint's, the final model's or
    last.ckpt's) plus last clean / first bad."""
    fail_on = verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on
    newest = run.decider(fail_on)
    if run.problems:
        head = f"FAIL {AMBIGUOUS_WORDS} {run.target}: {'; '.join(run.problems)}"
    elif newest is None:
        head = f"FAIL EMPTY {run.target}: no checkpoints"
    elif newest.report is None or newest.status == INCOMPLETE:
        head = f"FAIL INCOMPLETE {newest.path}: {'; '.join(newest.incomplete) or 'not scanned'}"
    else:
        head = verdicts.one_line(newest.report, fail_on, label=newest.path)
    last = run.last_healthy_under(fail_on)
    tail = [
        f"last healthy: {last.name if last else 'none'}",
        f"first bad: {run.first_bad.name if run.first_bad else 'none'}",
    ]
    behind = run.bad_behind(fail_on)
    if behind:  # (a passing run's earlier poisoned or diverged checkpoints, as the console's "but" line says them)
        tail.append(f"but {bad_behind_words(behind)}")
    if run.log and run.log.suspicious_step is not None:
        tail.append(f"trainer log broke at step {run.log.suspicious_step}")
    else:
        if run.log and run.log.skipped_steps:
            tail.append(f"trainer log: {skipped_words(run.log)}")
        if run.log and run.log.loss_jump_said and run.broken_weights_from is None:
            tail.append(_loss_jump_words(run.log))
        elif run.never_trained is not None:
            tail.append(_never_trained_words(run.never_trained))
    if run.unchanged is not None:
        tail.append(_unchanged_words(run.unchanged))
    return head + " · " + " · ".join(tail)


def after_loss_jump(run: RunReport, last: RunCheckpoint | None) -> str:
    """What "last healthy" (``last``) adds where that checkpoint was saved after a loss jump no bad checkpoint
    confirms (the run's warning line says it): its weights are healthy, what they made of the loss is for the user
    to judge."""
    step = _jumped_before(run, last)
    return "" if step is None else f" (by its weights; saved after the loss jump at step {step})"


def _jumped_before(run: RunReport, last: RunCheckpoint | None) -> int | None:
    """The step of a loss jump that stayed up, where the run's last healthy checkpoint ``last`` was saved after it
    and no checkpoint fails for it; None otherwise."""
    log = run.log
    if (log is None or last is None or not log.loss_jump_said
            or run.broken_weights_from is not None or log.broken_weights_from is None
            or last.step is None or last.step < log.broken_weights_from):
        return None
    return log.loss_jump_step


def resume_point(run: RunReport, last_clean: RunCheckpoint) -> str:
    """The checkpoint a next step resumes from, said with what the run's log says of it: where its weights are
    healthy but it was saved after a loss jump that stayed up, that caution goes with it."""
    step = _jumped_before(run, last_clean)
    return last_clean.path if step is None else (f"{last_clean.path} (saved after the loss jump at step {step}: "
                                                 "check its loss first)")


def skipped_words(log: TrainLog, upto: bool = True) -> str:
    """A log whose gradient norm alone went NaN/Inf and came back (TrainLog.skipped_steps), in words; ``upto``: and
    how far it is finite (not where it broke later)."""
    tail = f"; finite to {log.last_step}" if upto and log.last_step is not None else ""
    return (f"{'/'.join(log.first_nonfinite_keys)} NaN/Inf at step {log.first_nonfinite_step}, finite again after "
            f"(fp16 loss scaling skips such steps; without it the update was applied: the scan of the weights and "
            f"optimizer state says whether it left NaN/Inf){tail}")


def _loss_jump_words(log: TrainLog) -> str:
    """A loss jump no bad checkpoint confirms (it moves nothing: docs/health.md), in words."""
    assert log.loss_jump is not None
    loss, early = log.loss_jump
    return f"trainer log: loss {loss:.4g} at step {log.loss_jump_step}, {loss / early:.3g}x its early {early:.4g}"


def _unchanged_words(unchanged: tuple[str, str]) -> str:
    """Saves whose weights all agree (RunReport.unchanged), in words."""
    return f"the weights did not change from {unchanged[0]} to {unchanged[1]}: the run did not train"


def _never_trained_words(jump: dict[str, Any]) -> str:
    """A loss still far above an untrained model's (RunReport.never_trained), in words."""
    return f"trainer log: {verdicts.untrained_words(jump)}"


def render(run: RunReport, console: Console, fail_on: frozenset[str] | None = None) -> None:
    fail_on = verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on
    scanned = sum(c.report.bytes_scanned for c in run.checkpoints if c.report is not None)
    console.print(
        Text.assemble(
            ("nandoctor scan ", "bold"),
            safe(run.target),
            (f"\n  training run · {len(run.checkpoints)} checkpoint(s) · {human_bytes(scanned)} read · {run.seconds:.2f} s", "dim"),
        )
    )
    for note in run.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    if not run.checkpoints:
        console.print(Text("  no checkpoint-<step> folders", style="yellow"))
        return
    console.print()
    table, dropped = _timeline(run, console.width)
    console.print(table)
    if console.width < _NARROW:
        _details(run, console, dropped)
    console.print()
    last_clean, first_bad = run.last_healthy_under(fail_on), run.first_bad
    console.print(
        Text.assemble(
            "last healthy: ",
            (safe(last_clean.name), "bold green") if last_clean else ("none", "bold red"),
            (after_loss_jump(run, last_clean), "yellow"),
            " · first bad: ",
            (safe(first_bad.name), "bold red") if first_bad else ("none", "bold green"),
        )
    )
    for kind, line in explanations(run):
        if kind == HINT:
            console.print(Text(f"  hint: {safe(line)}", style=_STYLES[kind]), soft_wrap=True)
        else:
            console.print(Text(safe(line), style=_STYLES[kind]))
    decider = run.decider(fail_on)
    assert decider is not None
    console.print()
    code = run.exit_code(fail_on)
    style = "bold green" if code == 0 else "bold red"
    mark = ("⚠ PASS " if run.reported_only(fail_on) else "✓ PASS ") if code == 0 else "✗ FAIL "
    # (the final model at the run's top is "final model", not "newest final": a new user's trial)
    label = "final model" if decider.final and not decider.saved_into else (
        f"newest {decider.name}" if decider is run.newest and not decider.final else decider.name)
    console.print(Text.assemble((mark, style), (safe(label), "bold"),
                                ": ", (row_verdict(decider, fail_on, with_case=True), style), f" ({decides_words(run, decider)})"))
    for fact in verdicts.held_facts(decider.report) if decider.report is not None else ():  # (as --quiet says it)
        console.print(Text(f"  {safe(fact)}", style="dim"))
    behind = run.bad_behind(fail_on)
    if behind:
        console.print(Text(f"  but {safe(bad_behind_words(behind))}", style="yellow"), soft_wrap=True)
    if run.problems:
        console.print(Text.assemble(("run: ", "bold"), (AMBIGUOUS_WORDS, style), f" ({safe('; '.join(run.problems))})"))
    if code != 0:
        hint = next_steps(run, fail_on)
        if hint:
            console.print(Text("  next: " + "\n        ".join(safe(line) for line in hint), style="dim"), soft_wrap=True)


def bad_behind_words(behind: list[RunCheckpoint]) -> str:
    """What a passing run says of its poisoned or diverged earlier checkpoints (RunReport.bad_behind), each as what
    can be done with it: a diverged one is deleted (a repair refuses it), one whose optimizer state alone is bad still
    loads but is no resume point, a poisoned one is repaired or deleted (a review: one advice for all was wrong)."""
    clauses = []
    diverged = [c.name for c in behind if c.model and c.status == DIVERGED]
    if diverged:  # (one clause for all: a trial's four diverged checkpoints each repeated the same words)
        clauses.append(f"{first_few(diverged, 3)} {'is' if len(diverged) == 1 else 'are'} diverged: delete "
                       f"{'it' if len(diverged) == 1 else 'them'} (a repair would only stitch a broken model together)")
    for c in behind:
        failing = c.report.judgement.failing if c.report is not None and c.report.judgement is not None else ()
        if not c.model:  # (a file beside the run's saves that holds none of its model: a loop's data_stats.pt)
            clauses.append(f"{c.name}, which holds none of the run's model, holds NaN/Inf or broken values: check "
                           "whatever reads it")
        elif c.status == DIVERGED:
            continue
        elif c.report is not None and verdicts.optimizer_only(c.report, failing):
            clauses.append(f"{c.name} holds bad optimizer state: its weights load, but do not resume from it")
        else:
            clauses.append(f"{c.name} is poisoned: do not load or resume from it (repair it with --from auto, or "
                           "delete it)")
    shown = clauses[:3] + ([f"and {len(clauses) - 3} more"] if len(clauses) > 3 else [])
    return "; ".join(shown)


def next_steps(run: RunReport, fail_on: frozenset[str] | None = None) -> list[str]:
    """What to do about a failing run (judged under ``fail_on``, the default gate when None): make it unambiguous,
    then what its deciding rows need."""
    steps = [f"{problem}: {POINTER_HINT if problem.startswith(POINTER_FILES) else STRAY_FOLDER_HINT}, then scan again"
             for problem in run.problems] + _base_steps(run, fail_on) + _row_steps(run, fail_on)
    last_clean = run.last_healthy_under(fail_on)
    # (a verified repair to put in place is the fix: resuming an earlier save would move it out again, a trial)
    repaired = any(_verified_repair_of(target) for target in run.repair_targets)
    # (the saves accelerate would resume instead: later ones in checkpoints/, not a model saved beside it, a
    # project's final_model/, after which there was nothing to move)
    later = [c for c in run.checkpoints if last_clean is not None and c.step > last_clean.step
             and is_accelerate_save(Path(c.path))]
    if steps and not repaired and last_clean is not None and later and is_accelerate_save(Path(last_clean.path)):
        # (a trial: load_state() with no argument took the newest, poisoned save; an explicit one left the save
        # counter at 0, and the next save_state() refused: "checkpoint_0 already exists")
        steps.append(f"accelerate resumes the newest save in checkpoints/ and does not restore its save counter: move "
                     f"the saves after {last_clean.name} out of checkpoints/, then accelerator.load_state() and set "
                     f"accelerator.project_configuration.iteration = {last_clean.step + 1} before the next "
                     "save_state()")
    elif steps and not repaired and last_clean is not None:
        # (the pointer whenever it names another save, the newest healthy one's too: a tracker naming the poisoned
        # iter_100 under a healthy iter_200 made "resume from iter_200" reload iter_100, an adversarial round)
        steps += _resume_pointer(Path(last_clean.path))
        if last_clean is not run.newest:
            steps += _set_aside_later(run, last_clean)
    also = _bad_besides(run, fail_on)
    if steps and also:
        steps.append(f"also: {bad_behind_words(also)}")
    return steps


def _bad_besides(run: RunReport, fail_on: frozenset[str] | None) -> list[RunCheckpoint]:
    """In a failing run, its other poisoned or diverged saves (not the deciding one, nor a Trainer checkpoint, which
    the step that sets the later ones aside names): a new user's Lightning run said to repair last.ckpt, and its
    poisoned epoch=2-step=40.ckpt was named only once last.ckpt was repaired."""
    from nandoctor.checkpoint.runs import is_trainer_checkpoint

    decider = run.decider(fail_on)
    if decider is None or run.exit_code(fail_on) == 0:
        return []
    return [c for c in run.checkpoints if c is not decider and c.same_as is None and c.status in (POISONED, DIVERGED)
            and not c.last and not c.final and not is_trainer_checkpoint(Path(c.path))]


def _set_aside_later(run: RunReport, resume: RunCheckpoint) -> list[str]:
    """For a Trainer run resumed from an earlier checkpoint: the commands that move its later bad checkpoints out of
    Trainer's way (a new user's trial: resume_from_checkpoint=True then resumed the newest, diverged checkpoint-60,
    and the save_total_limit rotation kept it while deleting the healthy ones)."""
    from nandoctor.checkpoint.runs import is_trainer_checkpoint
    from nandoctor.hints import set_aside_path

    if not is_trainer_checkpoint(Path(resume.path)):
        return []
    # (every one after it, healthy or not: one saved after a loss jump is no resume point either, and Trainer takes the
    # highest step whatever its health, a review)
    later = [c for c in run.checkpoints if not (c.final or c.last or c.saved_into) and c.step_known
             and c.step > resume.step and is_trainer_checkpoint(Path(c.path))]
    if not later:
        return []
    moves = " && ".join(f"mv {path_word(c.path)} {path_word(set_aside_path(c.path))}" for c in later[:8])
    return [f"before resuming from {resume.name}, move the later checkpoint(s) out of Trainer's way (it counts "
            "them as its newest saves: resume_from_checkpoint=True would resume them, and the save_total_limit "
            f"rotation keeps them over the new ones): {moves}" + (f" (and {len(later) - 8} more)" if len(later) > 8 else "")]


def _resume_pointer(resume: Path) -> list[str]:
    """How to make a DeepSpeed or Megatron run resume from ``resume`` rather than its newest save: both load the save
    a file in the run folder names (steps.resume_pointer; a trial: DeepSpeed's load_checkpoint took the poisoned tag
    ``latest`` named)."""
    folder = resume.parent
    pointer = resume_pointer(folder)
    if pointer is None or pointer[1] == resume.name:
        return []
    if pointer[0] == DEEPSPEED_LATEST:
        return [f"to resume from {resume.name}: DeepSpeed's load_checkpoint loads the save its latest file names, so "
                f"write {resume.name} into {path_word(folder / DEEPSPEED_LATEST)} (or pass tag={resume.name!r})"]
    return [f"to resume from {resume.name}: Megatron resumes the iteration {MEGATRON_TRACKER} names, so write "
            f"{megatron_tracker_text(resume)} into {path_word(folder / MEGATRON_TRACKER)}"]


def _incomplete_step(row: RunCheckpoint) -> str:
    """What to do with a deciding row that is incomplete: wait for an unfinished save or delete it; but where its one
    reason is a trainer_state.json Trainer cannot resume from, whose weights are whole, what fixes that file (an
    adversarial round: an extra key in it read "an unfinished save: … or delete it", a healthy checkpoint)."""
    from nandoctor.checkpoint.loaders import TRAINER_STATE
    from nandoctor.checkpoint.trainlog import CUT_SHORT, unresumable

    resume = unresumable(Path(row.path) / TRAINER_STATE) if Path(row.path).is_dir() else None
    if resume is not None and resume is not CUT_SHORT and len(row.incomplete) == 1:
        return f"{row.name}: its {TRAINER_STATE} {resume.words}; {resume.fix}"
    return f"{row.name} is an unfinished save: wait for it to finish, or delete it"


def _row_steps(run: RunReport, fail_on: frozenset[str] | None) -> list[str]:
    """What the run's deciding rows need: finish or drop an unfinished save, then resume or repair."""
    newest, last_clean, targets = run.decider(fail_on), run.last_healthy_under(fail_on), run.repair_targets
    steps: list[str] = []
    if newest is not None and newest.status == INCOMPLETE:
        steps.append(_incomplete_step(newest))
    elif newest is not None and newest.status == UNREADABLE:
        errors = newest.report.errors if newest.report is not None else ()
        hint = next((p.hint for p in errors if p.hint), "")
        kinds = {p.kind for p in errors}
        what = (" could not be read completely" if newest.report is None or not kinds or verdicts.UNREADABLE_KIND in kinds
                else ": " + "; ".join(verdicts.problem_facts(newest.report, first_problem=False)))
        steps.append(f"{newest.name}{what} (see above): {hint or 're-copy or delete it'}")
    if newest is not None and newest.status == DIVERGED:
        steps.append(f"{newest.name} diverged ({newest.why}): a repair would only stitch a broken model together")
        change = (verdicts.what_to_change(newest.report) if newest.report is not None
                  else f"with a lower learning rate or {verdicts.CLIPPING}")
        if last_clean is not None:
            steps.append(f"resume training from the last healthy checkpoint, {resume_point(run, last_clean)}, {change}")
        else:  # (what to change said here too, as a scan of the checkpoint alone says it: a trial)
            steps.append(f"no healthy checkpoint is left in this run: restart from the base model {change}")
        return steps
    if not targets:
        if last_clean is not None and steps:  # (a fix said for a folder that reads but would not load: an alternative)
            fixable = newest is not None and status_words(newest) != newest.status
            steps.append(f"{'or' if fixable else 'then'} resume from {resume_point(run, last_clean)}")
        report = newest.report if newest is not None else None
        zeroed = verdicts.with_finding(report, verdicts.ZEROED) if report is not None else ()
        if newest is not None and zeroed:  # (here only where the gate fails it: zeroed in --fail-on, as by default)
            from nandoctor.hints import AUTO, NO_AUTO_DONOR, repair_command_for

            names = ", ".join(t.ref.name for t in zeroed[:3]) + (" …" if len(zeroed) > 3 else "")
            # (--from auto only where an earlier checkpoint is a resume point: a run zeroed from its first save has none)
            earlier = run.auto_donors_for(newest)
            steps += [f"all-zero tensors in {newest.name} ({names}): compare with the source of the weights (a "
                      "failed copy or conversion), or restore them from "
                      + ("the run's earlier checkpoints with" if earlier else "the base model the run started from with"),
                      f"    {repair_command_for(str(newest.path), AUTO if earlier else NO_AUTO_DONOR)}"]
        return steps
    for n, target in enumerate(targets):  # each file that decides the exit code (the final model, last.ckpt)
        steps += _repair_steps(run, target, last_clean if n == 0 else None, also=n > 0)
    return steps


def _base_steps(run: RunReport, fail_on: frozenset[str] | None) -> list[str]:
    """A LoRA run whose deciding adapter's base model fails under ``fail_on`` (adapterbase.py): the base is what to
    repair, once for every checkpoint applied to it."""
    decider = run.decider(fail_on)
    if decider is None or decider.report is None:
        return []
    base = verdicts.adapter_base_scan(decider.report)
    if base is not None and base.get("problem_words"):  # (said once above, with its hint: _base_lines)
        return [f"make the base model the checkpoints are applied to ({base.get('path')}) readable, as its hint above "
                "says (or point base_model_name_or_path in each checkpoint's adapter_config.json to one that loads), "
                "then scan again"]
    if base is None or not verdicts.judge(decider.report, verdicts.DEFAULT_FAIL_ON if fail_on is None else fail_on
                                          ).base_failing:
        return []
    return base_model_steps(decider.path, base, "each checkpoint's adapter_config.json")


def _verified_repair_of(target: RunCheckpoint) -> list[str]:
    """The steps that put ``target``'s verified repair in its place ([] without one: hints.use_verified_repair)."""
    from nandoctor.hints import use_verified_repair

    # (a final model at the run's top is copied over; one saved into a folder of the run moves as a checkpoint does)
    top = target.final and not target.saved_into and Path(target.path).is_dir()
    return use_verified_repair(target.path, target.name, top, target.report)


def _repair_steps(run: RunReport, target: RunCheckpoint, last_clean: RunCheckpoint | None, also: bool) -> list[str]:
    """How to repair ``target`` (or put its verified repair in place); ``also``: another file that decides too."""
    from nandoctor.hints import AUTO, NO_AUTO_DONOR, repair_command_for, selection_args

    in_place = _verified_repair_of(target)
    if in_place:
        return in_place
    judged = target.report.judgement if target.report is not None else None
    if target.report is not None and verdicts.only_pickled_floats(
            target.report, judged.failing if judged is not None else verdicts.FAILING_BY_DEFAULT):
        # (an optimizer's NaN learning rate or betas: Python floats, which no repair restores)
        resume = f"resume from {resume_point(run, last_clean)}" if last_clean is not None else "resume with a fresh optimizer state"
        return [f"{resume}: only the {verdicts.RATE_FLOATS} of {target.name} are bad, which a repair does not restore"]
    broke = run.broken_weights_from
    if broke is not None and target.step_known and target.step >= broke and not also:  # (summary.py says so too)
        resume = f"resume from {resume_point(run, last_clean)}" if last_clean is not None else "restart from the base model"
        intro = f"{resume}; or: {verdicts.loss_broke_words(target.name, broke)}; restore its bad tensors with"
    elif also:
        intro = f"{target.name} decides the exit code too: restore its bad tensors with"
    elif last_clean is not None:
        intro = f"resume from {resume_point(run, last_clean)}, or restore the bad tensors of {target.name} with"
    else:
        intro = f"no clean checkpoint to resume from; restore the bad tensors of {target.name} with"
    # --from auto: the run's healthy checkpoints before its first bad one (checkpoint-N folders or Lightning
    # step files); where there is none, auto would fail: the user names a donor
    selection = selection_args(target.report) if target.report is not None else ""
    donor = AUTO if run.auto_donors_for(target) else NO_AUTO_DONOR
    aside = _healthy_aside(run) if donor == NO_AUTO_DONOR and last_clean is None else None
    if aside is not None:
        # (a helper's timm-style run: every checkpoint-N poisoned, model_best.pth.tar healthy beside them, and the
        # next step asked for "an earlier clean checkpoint" it did not name)
        intro = (f"no checkpoint of the timeline is healthy, but {aside.name} beside them is (when it was saved, its "
                 f"name does not say): resume from it, or restore the bad tensors of {target.name} from it with")
        donor = path_word(aside.path)
    first = []
    report = target.report
    configs = [p for p in report.errors if p.kind == verdicts.CONFIG_KIND] if report is not None else []
    if report is not None and configs and not verdicts.weight_errors(report):
        # (a repair copies no config file and refuses a target whose config fails: corrected first)
        files = sorted({Path(p.path).name for p in configs})
        first = [f"correct {', '.join(files)} of {target.name} first (the bad config line above); then"]
    return [*first, intro, f"    {repair_command_for(target.path, donor, selection=selection)}"]


def _healthy_aside(run: RunReport) -> RunCheckpoint | None:
    """A healthy file off the run's timeline that holds the run's model (a loop's best.pt, timm's model_best.pth.tar),
    the newest such; None when there is none."""
    found = [c for c in run.checkpoints if c.saved_into and c.model and c.report is not None
             and c.status in HEALTHY_STATUSES and c.same_as is None and not Path(c.path).is_dir()]
    return found[-1] if found else None


BAD, WARN, HINT, DIM = "bad", "warn", "hint", "dim"  # the kinds of explanations()
_STYLES = {BAD: "red", WARN: "yellow", HINT: "dim", DIM: "dim"}


def explanations(run: RunReport) -> list[tuple[str, str]]:
    """(kind, line) of what explains the run's timeline, in order: the trainer log (its loss jump, where it
    broke), then why each diverged, incomplete or unreadable checkpoint is so (a HINT line follows the problem
    it is for). The console, Markdown and HTML reports all print these, so they cannot disagree."""
    lines = _log_lines(run)
    group: list[RunCheckpoint] = []  # consecutive rows diverged for one reason, said in one line (the last one)
    previous: RunCheckpoint | None = None
    for c in run.checkpoints:
        before, previous = previous, c
        if c.same_as is not None:
            continue  # said of the row it is the same file as
        if c.status == DIVERGED and c.why:
            if group and group[-1] is before and before.why == c.why:
                group.append(c)
                lines[-1] = (BAD, f"diverged: {group[0].name} to {c.name} ({len(group)} checkpoints): {c.why}")
            else:
                group = [c]
                lines.append((BAD, f"diverged: {c.name}: {c.why}"))
        if c.status in HEALTHY_STATUSES and c.zeroed and c.report is not None:
            zeroed, since = verdicts.zeroed_in_run(c.report)
            lines.append((WARN, f"zeroed: {c.name}: {first_few(list(zeroed), 3)} all zero, not all zero in {since}: "
                                "a broken copy or write (training never zeroes a whole tensor), no resume point"))
            in_place = _verified_repair_of(c)  # (its hint followed already: put the repair in place, no "-2" again)
            earlier = any(r.step_known and c.step_known and r.step < c.step for r in run.resume_points())
            lines.append((HINT, " ".join(line.strip() for line in in_place) if in_place else "restore them: "
                          + (repair_command_for(c.path, AUTO) if earlier else repair_command(c.report))))
        if c.status == INCOMPLETE:
            lines.append((WARN, f"incomplete: {c.name}: {'; '.join(c.incomplete)}"))
        elif c.status == UNREADABLE and c.report is not None:
            # (a base model that could not be read is said once for the run: _base_lines)
            for problem in [p for p in c.report.errors if p.kind != verdicts.BASE_KIND][:3]:
                # (each headed by its kind's words: a renamed tensor is not unreadable)
                said = verdicts.PROBLEM_WORDS.get(problem.kind, verdicts.PROBLEM_WORDS[verdicts.UNREADABLE_KIND]).lower()
                lines.append((BAD, f"{said}: {c.name}: {problem.path}: {problem.message}"))
                if problem.hint:
                    lines.append((HINT, problem.hint))
    if run.unchanged is not None:
        lines.append((WARN, f"{_unchanged_words(run.unchanged)} (their weight files are byte-identical): a learning "
                            "rate of 0, parameters left frozen, or gradients all zero; the weights are those it started "
                            "from"))
    return lines + _optimizer_lines(run) + _config_lines(run) + _base_lines(run)


def _base_lines(run: RunReport) -> list[tuple[str, str]]:
    """The base model the run's adapter checkpoints are applied to (a LoRA run: adapterbase.py), each base said once
    with the checkpoints applied to it, not once a row: scanned once, what it holds, or why it could not be read."""
    bases: dict[str, tuple[dict[str, Any], ScanReport, list[str]]] = {}
    for c in run.checkpoints:
        base = verdicts.adapter_base_scan(c.report) if c.report is not None and c.same_as is None else None
        if base is not None and c.report is not None:
            bases.setdefault(str(base.get("path")), (base, c.report, []))[2].append(c.name)
    lines: list[tuple[str, str]] = []
    for path, (base, report, names) in bases.items():
        applied = f"base model {path} ({first_few(names, 3)} {'is' if len(names) == 1 else 'are'} applied to it)"
        if base.get("problem_words"):
            problem = next(p for p in report.errors if p.kind == verdicts.BASE_KIND)
            lines += [(BAD, f"{verdicts.BASE_WORDS.format(base['problem_words']).lower()}: {applied}: "
                            f"{problem.message}"), (HINT, problem.hint)]
        else:
            kind = BAD if base.get("findings") or base.get("grown") else DIM
            lines.append((kind, f"{applied}, scanned once: {verdicts.base_found_words(base)}"))
    return lines


def _optimizer_lines(run: RunReport) -> list[tuple[str, str]]:
    """A checkpoint poisoned in its optimizer state alone: its weights are healthy (the run may call a later
    final model healthy), but resuming from it (Trainer's ``resume_from_checkpoint=True`` takes the newest)
    restores the damage: the checkpoint to resume from instead."""
    lines: list[tuple[str, str]] = []
    resumable: RunCheckpoint | None = None
    for c in run.checkpoints:
        if c.status in HEALTHY_STATUSES and not c.final:
            resumable = c
        if c.status != POISONED or c.report is None or c.same_as is not None:
            continue
        judged = c.report.judgement
        bad = verdicts.optimizer_only(c.report, judged.failing if judged is not None else verdicts.FAILING_BY_DEFAULT)
        if bad:
            instead = f"resume from {resumable.path} instead" if resumable is not None else "no earlier checkpoint to resume from"
            # (a second moment at +Inf: the weights may be broken all the same, a real run's scored 8,960 against 4.9)
            weights = (f"; {verdicts.OVERFLOWED_MOMENT} (evaluate them before use)"
                       if verdicts.overflowed_moments(c.report, judged.failing if judged is not None else
                                                      verdicts.FAILING_BY_DEFAULT) else " while its weights are healthy")
            lines.append((WARN, f"optimizer state only: {c.name}: {first_few(bad, 2)} {'hold' if len(bad) > 1 else 'holds'} "
                                f"NaN/Inf or exploded values{weights}; resuming training from it restores them: {instead}"))
    return lines


def _config_lines(run: RunReport) -> list[tuple[str, str]]:
    """The config files' problems of checkpoints whose weights were judged (BAD CONFIG: the weights are a resume
    point all the same), each said once with the checkpoints that have it: one setting saved with every
    checkpoint is one line, not one a checkpoint. An incomplete row is no resume point, and its line says why (a
    trainer_state.json Trainer cannot resume from is both: said there once)."""
    said: dict[tuple[str, str], list[str]] = {}
    hints: dict[tuple[str, str], str] = {}
    for c in run.checkpoints:
        if c.same_as is not None or c.status in (UNREADABLE, INCOMPLETE) or c.report is None:
            continue
        for problem in c.report.errors:
            if problem.kind == verdicts.CONFIG_KIND:
                key = (Path(problem.path).name, problem.message)
                said.setdefault(key, []).append(c.name)
                hints.setdefault(key, problem.hint)
    lines: list[tuple[str, str]] = []
    for (name, message), where in said.items():
        lines.append((WARN, f"bad config (the weights are judged above): {first_few(where, 3)}: {name}: {message}"))
        if hints[(name, message)]:
            lines.append((HINT, hints[(name, message)]))
    return lines


def _untrained_lines(run: RunReport) -> list[tuple[str, str]]:
    """The healthy rows whose trainer log says their weights score worse than an untrained model
    (RunCheckpoint.worse_than_untrained), said once: no resume point (a trial's run at lr 1 rose from 4.84 to 19.7
    without a loss jump, and its checkpoint-15, eval loss 17.2 where untrained is 4.85, was named the last healthy)."""
    worse = [c for c in run.checkpoints if c.status in HEALTHY_STATUSES and c.worse_than_untrained is not None
             and c.same_as is None]
    if not worse:
        return []
    jump = worse[-1].worse_than_untrained
    assert jump is not None
    names = first_few([c.name for c in worse], 3)
    return [(WARN, f"{names} {'reads' if len(worse) == 1 else 'read'} healthy by {'its' if len(worse) == 1 else 'their'} "
                   f"weights, but the trainer log says {'it scores' if len(worse) == 1 else 'they score'} worse than "
                   f"an untrained model (at {worse[-1].name}: {verdicts.untrained_words(jump)}): no resume point; "
                   "evaluate one (its loss on held-out data) before using it")]


def _log_lines(run: RunReport) -> list[tuple[str, str]]:
    log = run.log
    if log is None:
        return []
    lines = []
    jumped = run.broken_weights_from
    if jumped is not None and log.loss_jump is not None:
        loss, early = log.loss_jump
        lines.append((BAD,
            f"trainer log: loss {loss:.4g} at step {log.loss_jump_step}, {loss / early:.3g}x its early {early:.4g}: the "
            f"weights saved from step {jumped} on made it, so no checkpoint from there is a resume point or a donor"))
    elif log.loss_jump_said:  # (a trial: lr 3, loss 7 → 640, all CLEAN, not a
        # word; one spike at the last log, nothing after it yet, is no reason to warn of a healthy run)
        lines.append((WARN, f"{_loss_jump_words(log)}, though no checkpoint's weights fail: look at the run (a "
                            f"learning rate too high, or data that changed there?) before using the checkpoints saved "
                            f"from step {log.broken_weights_from} on"))
    elif run.never_trained is not None:
        lines.append((WARN, f"{_never_trained_words(run.never_trained)}, though no checkpoint's weights fail: evaluate "
                            "a checkpoint (its loss on held-out data) before using it; a learning rate too high, or a "
                            "loss summed over tokens, can both make it"))
    lines += _untrained_lines(run)
    if log.suspicious_step is None:  # name only the series the log has (Lightning logs no grad_norm by default)
        said = f"{' and '.join(log.logged)} finite" if log.logged else "no loss or grad norm logged"
        upto = f" up to step {log.last_step}" if log.last_step is not None else ""  # (an empty log_history: no step)
        if log.skipped_steps:
            said, upto = skipped_words(log), ""
        return [*lines, (DIM, f"trainer log ({log.source}): {said}{upto}")]
    facts: list[tuple[int, str]] = []
    if log.nonfinite_from is not None and log.nonfinite_from != log.first_nonfinite_step:  # (past skipped steps)
        facts.append((log.nonfinite_from, f"NaN/Inf from step {log.nonfinite_from}, after {skipped_words(log, False)}"))
    elif log.first_nonfinite_step is not None:
        facts.append((log.first_nonfinite_step,
                      f"{'/'.join(log.first_nonfinite_keys)} NaN/Inf first at step {log.first_nonfinite_step}"))
    if log.first_zero_loss_step is not None:
        facts.append((log.first_zero_loss_step, f"loss exactly 0.0 from step {log.first_zero_loss_step}"))
    # Each step is placed among the checkpoints on its own: one "between" after two facts at
    # different steps read as if both were there (step 13 "between checkpoint-8 and checkpoint-12").
    same_step = len({step for step, _ in facts}) == 1
    parts = [text if same_step else text + _where(run, step) for step, text in facts]
    tail = _where(run, facts[0][0]) if same_step else ""
    return [*lines, (BAD, f"trainer log: {'; '.join(parts)}{tail}")]


def _where(run: RunReport, step: int) -> str:
    """Where a logged step falls among the saved checkpoints (a save at step N holds the weights after step N;
    a Lightning row of step N was logged after the save of step N)."""
    after_save = run.log is not None and run.log.logged_after_save
    saved = [c for c in run.checkpoints if not c.final and not c.last]  # no saves of the log's steps
    at = [c for c in saved if c.step == step]
    if at and not after_save:  # Trainer logs step N, then saves checkpoint-N: the log is *at* that checkpoint
        return f" (at {at[-1].name})"
    before = [c for c in saved if c.step < step or (after_save and c.step == step)]
    after = saved[len(before):]  # oldest first: the ones before come first
    if before and after:
        return f" (between {before[-1].name} and {after[0].name})"
    if after:
        return f" (before {after[0].name})"
    if before:
        return f" (after {before[-1].name}, the newest checkpoint)"
    return ""
