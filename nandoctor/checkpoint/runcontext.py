"""A checkpoint judged within its run, without scanning the whole run.

A standalone scan (or a repair) of ``run/checkpoint-40`` must not contradict
``nandoctor scan run``: the run scan calls a checkpoint diverged when the bulk
of one of its weight tensors grew ``GROWTH_DIVERGED`` times since the run's
first healthy checkpoint (verdict.growth). :func:`judge_in_run` scans the
earlier checkpoints oldest first until that first healthy one (usually just
the first), measures that growth, puts it with the rest of what it found in
``report.extra["run"]`` and judges the report again: verdict.diverged_why reads
it from there. The same pass tells whether ``--from auto`` would find
a donor (a healthy checkpoint before the run's first bad one, restore/donors.py),
so that the ``next:`` line never suggests a repair that must fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nandoctor.model import ScanReport


def judge_in_run(report: ScanReport, target: Path, scan_one: Callable[[Path], ScanReport]) -> ScanReport:
    """``report`` (of the checkpoint at ``target``) judged again within its run; unchanged outside a run,
    or when it is healthy on its own and no weight's bulk is large enough to have diverged
    (verdict.may_have_grown: a healthy checkpoint of ordinary weights costs no extra scan)."""
    return judged_in_run(report, target, scan_one)[0]


def judged_in_run(
    report: ScanReport, target: Path, scan_one: Callable[[Path], ScanReport]
) -> tuple[ScanReport, tuple[str, dict[str, float]] | None]:
    """:func:`judge_in_run`, and the baseline it measured growth against: (the run's first healthy checkpoint,
    its verdict.tensor_scales), those kept in the run's nandoctor-baseline.json where rotation took that
    checkpoint away (a repair weighs its donors by the same scales, and never opens the gone checkpoint);
    None where it was not judged in its run or the run has no healthy checkpoint before it."""
    from nandoctor import verdict

    renamed = names_in_run(report, Path(target))
    if renamed is not None:
        return renamed, None
    zeros = verdict.unexplained_zeros(report)
    jumped = None if report.errors else _loss_jump_facts(Path(target))
    if report.errors or not (report.unhealthy_tensors or verdict.may_have_grown(report, jumped is not None) or zeros):
        return (report if report.errors or jumped is None else verdict.with_run_context(report, jumped)), None
    context = run_facts(Path(target), scan_one, report if zeros else None, report)
    if context is None:
        return report, None
    context.update(jumped or {})  # (with the loss jump, a smaller growth is diverged: verdict.diverged_why)
    baseline = context.pop("baseline_scales")
    ignored = context.pop("baseline_ignored")
    unread = context.pop("log_unread")
    grown = verdict.growth(report, baseline) if baseline else None
    context["growth"] = None if grown is None else grown.to_json()
    said = [note for note in (ignored, unread) if note is not None]
    if said:
        report = dataclasses.replace(report, notes=(*report.notes, *said))
    judged = verdict.with_run_context(report, context)
    return judged, (context["baseline"], baseline) if context["baseline"] is not None else None


def _train_log(place: Any, folder: Path, step: int | None = None) -> Any:
    """The trainer log as it stood when the checkpoint at ``place`` (runs.place_in_run) was saved, or the run's
    checkpoint of ``step`` at ``folder``: its own trainer_state.json, or the rows of a Lightning run's metrics.csv
    logged before its step (else the losses a training callback judges with: callbacklog.lightning_log); None without
    one."""
    from nandoctor.checkpoint.callbacklog import lightning_log
    from nandoctor.checkpoint.runs import TRAINER_STATE
    from nandoctor.checkpoint.trainlog import read_train_log

    if place.step_files:
        metrics = lightning_log(place.run)
        return metrics.train_log(place.step if step is None else step) if metrics is not None else None
    if step is not None:
        return read_train_log(folder / TRAINER_STATE) if os.path.isfile(folder / TRAINER_STATE) else None
    if place.final and not os.path.isfile(folder / TRAINER_STATE):
        # (save_model() without save_state(): the newest checkpoint that has a log holds the run's, as the run scan
        # takes it; an interrupted newest save without one is passed over)
        logged = [path for _, path in reversed(place.siblings()) if os.path.isfile(path / TRAINER_STATE)]
        folder = logged[0] if logged else folder
    return read_train_log(folder / TRAINER_STATE) if os.path.isfile(folder / TRAINER_STATE) else None


def _later_log(place: Any) -> Any:
    """The run's trainer log as its newest save holds it (later than the save at ``place``: every step logged since),
    None where the run has none beyond that save's own."""
    from nandoctor.checkpoint.callbacklog import lightning_log
    from nandoctor.checkpoint.runs import TRAINER_STATE
    from nandoctor.checkpoint.trainlog import read_train_log

    if place.step_files:
        metrics = lightning_log(place.run)
        return metrics.train_log() if metrics is not None else None
    logged = [path for step, path in reversed(place.siblings())
              if step > place.step and os.path.isfile(path / TRAINER_STATE)]
    return read_train_log(logged[0] / TRAINER_STATE) if logged else None


def _loss_jump_facts(target: Path) -> dict[str, Any] | None:
    """The run context of a checkpoint saved after its trainer log's loss jumped and stayed up (runs.loss_jump_at):
    ``run``, ``kind``, ``loss_broke_from`` and ``loss_jump``; None outside a run or without such a jump (a final
    model is judged by the newest checkpoint's log where the run folder has none of its own). The run scan warns of
    it ("look at the run before using the checkpoints saved from step N on"); a scan of the checkpoint alone says it
    too (verdict.loss_jump_caution), and with a grown bulk it is diverged (verdict.diverged_why); finite weights that
    made a loss 10x its early one are otherwise for the user to judge (a trial: a run at lr 30 logged 4.6 → 8,000
    before its first save; every checkpoint was CLEAN, and said nothing)."""
    from nandoctor import verdict
    from nandoctor.checkpoint.runs import jump_before_save, loss_broke_before, place_in_run

    place = place_in_run(target)
    if place is None:
        return None
    # (whether a jump before the save stayed up is for the logs after it to say: a checkpoint saved at the jump's own
    # step read CLEAN without a word, its own log ending there, while the next one's said it; a helper's trial)
    jump, log = jump_before_save(_train_log(place, target if target.is_dir() else target.parent), _later_log(place),
                                 place.step)
    broke_from = loss_broke_before(log, place.step)
    if jump is None:  # (a loss still 4x an untrained model's: never trained, as the run scan judges it)
        from nandoctor.checkpoint.baseline import untrained_jump
        from nandoctor.checkpoint.initscales import untrained_loss

        jump, broke_from = untrained_jump(log, untrained_loss(target if target.is_dir() else target.parent),
                                          _later_log(place)), 0
    if jump is None:
        return None
    return {"run": str(place.run), "kind": place.kind, verdict.LOSS_BROKE_FROM: broke_from, "loss_jump": jump}


NAMES_WINDOW = 2  # checkpoints on each side whose tensor names a checkpoint judged alone is compared with


def names_in_run(report: ScanReport, target: Path) -> ScanReport | None:
    """``report`` with a TENSOR NAMES CHANGED problem when the checkpoint at ``target`` holds other model tensor names
    than the run's checkpoints around it (runs.names_changed, the run scan's rule, over the NAMES_WINDOW nearest on
    each side: only their headers are read); None when the names agree, outside a run, or for one shard of a
    checkpoint's several (where the shards were cut may move between saves)."""
    import dataclasses

    from nandoctor import verdict
    from nandoctor.checkpoint.opener import open_checkpoint
    from nandoctor.checkpoint.runs import (
        CLEAN,
        RunCheckpoint,
        _weights_by_name,
        names_changed,
        place_in_run,
        weight_entry,
    )
    from nandoctor.checkpoint.selection import of_report
    from nandoctor.errors import NandoctorError

    if report.errors:
        return None
    place = place_in_run(target)
    if place is None or place.final:
        return None
    siblings = place.siblings()
    at = next((k for k, (step, _) in enumerate(siblings) if step == place.step), None)
    if at is None:
        return None
    if not place.step_files and not target.is_dir() and _other_weight_files(target):
        return None  # one shard of several: what it holds depends on where the shards were cut (the folder is judged)
    mine = _weights_by_name(report)
    # (scanned with --only/--exclude, the report holds the names kept: its neighbours' are compared the same way, or a
    # healthy checkpoint read TENSOR NAMES CHANGED and a repair's refusal named an older resume point)
    chosen = of_report(report.extra)
    window: list[tuple[RunCheckpoint, dict[str, Any]]] = []
    for step, path in siblings[max(0, at - NAMES_WINDOW): at + NAMES_WINDOW + 1]:
        if step == place.step:
            window.append((RunCheckpoint(step, str(target), CLEAN, report), mine))
            continue
        try:
            opened = open_checkpoint(path, defer_crcs=True)  # headers only
        except (NandoctorError, OSError):
            continue
        if opened.problems:
            continue  # (its own scan says what is wrong with it)
        weights = {r.name: weight_entry(r) for r in opened.refs
                   if r.role == "weight" and (chosen is None or chosen.keeps(r.name))}
        window.append((RunCheckpoint(step, str(path), CLEAN, None), weights))
    if all(weights.keys() == mine.keys() for _, weights in window):
        return None
    found = names_changed([weights for _, weights in window], [c for c, _ in window])
    k = next(k for k, (c, _) in enumerate(window) if c.report is report)
    if k not in found:
        return None
    fail_on = report.judgement.fail_on if report.judgement is not None else verdict.DEFAULT_FAIL_ON
    return verdict.judged(dataclasses.replace(report, errors=(*report.errors, found[k])), fail_on)


def _other_weight_files(file: Path) -> bool:
    """Whether the folder holding ``file`` holds model weight files besides it (shards, their index)."""
    from nandoctor import access
    from nandoctor.checkpoint import layout, loaders
    from nandoctor.checkpoint.roles import file_role
    from nandoctor.errors import UnreadablePathError

    try:
        entries = access.listing(file.parent)
    except UnreadablePathError:
        return True  # (cannot tell: not judged)
    suffixes = layout.weight_suffixes()
    return any(e.name != file.name and (loaders.is_index_name(e.name) or (
        e.suffix.lower() in suffixes and file_role(e.name) is None and e.name not in layout.NOT_WEIGHTS))
        for e in entries)


def run_facts(
    target: Path, scan_one: Callable[[Path], ScanReport], zeros_in: ScanReport | None = None,
    scanned: ScanReport | None = None,
) -> dict[str, Any] | None:
    """What the run says about the checkpoint at ``target``: ``run``, ``kind`` (its naming),
    ``baseline``/``baseline_max``/``baseline_scale`` (the first healthy earlier checkpoint, its largest
    weight and its largest tensor scale), ``baseline_scales`` (its verdict.tensor_scales, which
    :func:`judge_in_run` turns into the ``growth`` of the checkpoint and drops), ``baseline_ignored`` (why a
    nandoctor-baseline.json in the run is not used, or None; judge_in_run makes it a note), ``log_unread`` (the
    same for a trainer log that could not be read),
    ``auto`` (whether ``--from auto`` finds a donor) and ``log_nonfinite_step``; with ``zeros_in`` (the
    checkpoint's report, which holds an all-zero weight), ``zeroed_since`` as the run scan finds it
    (runs.zeroed_since: against the previous checkpoint, one more scan, and the first healthy one); with
    ``scanned`` (the checkpoint's report), the start its config implies (initscales.py) where no callback kept the
    run's. None outside a run."""
    from nandoctor import verdict
    from nandoctor.checkpoint.runs import (
        HEALTHY_STATUSES,
        TRAINER_STATE,
        duplicate_steps,
        incomplete_reasons,
        log_broke_by,
        loss_broke_before,
        loss_jump_at,
        place_in_run,
        zeroed_since,
    )
    from nandoctor.errors import NandoctorError

    place = place_in_run(target)
    if place is None:
        return None
    siblings = place.siblings()
    earlier = [(s, p) for s, p in siblings if s < place.step]
    with_state = any(os.path.isfile(p / TRAINER_STATE) for _, p in siblings)  # (an unreadable one: its scan says so)
    baseline: Path | None = None
    baseline_max: float | None = None
    baseline_scales: dict[str, float] = {}
    bad_first = bool(not place.step_files and duplicate_steps(siblings))  # auto refuses an ambiguous run
    compared: list[tuple[str, ScanReport]] = []  # (name, report) of the previous and the first healthy checkpoint
    from nandoctor.checkpoint.baseline import kept_before, load_baseline, never_trained, usable_baseline
    from nandoctor.checkpoint.initscales import implied_start, untrained_loss

    folder = target if target.is_dir() else target.parent
    kept = kept_before(place.run, (step for step, _ in earlier), folder)  # the first healthy one, gone
    # (without the callback's, the start the model's config implies: each earlier checkpoint judged against it too, as
    # the run scan judges it, so that one already diverged is no resume point)
    implied = kept is None and scanned is not None
    untrained = untrained_loss(folder)
    for step, path in earlier:
        if incomplete_reasons(path, with_state):
            continue
        try:
            before = scan_one(path)
        except NandoctorError:
            continue
        holder = path if path.is_dir() else path.parent  # (a step file's config.json lies beside it)
        logged = _train_log(place, path, step) if implied else None
        start = usable_baseline(implied_start(holder, before), logged, untrained) if implied else None
        status, _ = verdict.checkpoint_status(before, False, start.scales if start is not None else None, None,
                                              never_trained(start, logged, untrained))
        if status in HEALTHY_STATUSES:
            baseline, baseline_max = path, verdict.max_abs(before, "weight")
            baseline_scales = verdict.tensor_scales(before)
            compared.append((path.name, before))
            break
        if status in ("poisoned", "diverged"):
            bad_first = True  # auto takes donors only before the run's first bad checkpoint
    if zeros_in is not None and earlier and earlier[-1][1] != baseline:
        with contextlib.suppress(NandoctorError):  # (its own scan says why)
            compared.insert(0, (earlier[-1][1].name, scan_one(earlier[-1][1])))
    healthy_before = baseline is not None  # (on disk: a resume point, whatever baseline the growth is measured against)
    log = _train_log(place, folder)
    if implied and scanned is not None and baseline is None:  # (a guess: a healthy checkpoint on disk comes first)
        kept = implied_start(folder, scanned)
    kept = usable_baseline(kept, log, untrained)
    if kept is not None:  # (its checkpoint a plain name: a label in the run, never opened)
        baseline, baseline_max, baseline_scales = place.run / kept.checkpoint, kept.max_abs, kept.scales
    jump, broke_from = loss_jump_at(log, place.step), loss_broke_before(log, place.step)
    if jump is None and (jump := never_trained(kept, log, untrained)) is not None:
        broke_from = 0  # (the loss never came near a trained model's: broken from the start)
    return {
        "run": str(place.run),
        "kind": place.kind,
        "baseline": None if baseline is None else str(baseline),
        "healthy_before": healthy_before,
        "baseline_max": baseline_max,
        "baseline_scale": max(baseline_scales.values(), default=None),
        "baseline_scales": baseline_scales,
        "baseline_ignored": load_baseline(place.run)[1] if kept is None else None,  # (a file there, no baseline)
        "auto": baseline is not None and not bad_first,
        "log_nonfinite_step": log_broke_by(log, place.step),
        verdict.LOSS_BROKE_FROM: broke_from,
        **({"loss_jump": jump} if jump is not None else {}),
        "log_unread": (f"{log.source}: not read ({log.error}): the trainer log was not judged"
                       if log is not None and log.error else None),
        **({verdict.ZEROED_SINCE: zeroed_since(zeros_in, compared)} if zeros_in is not None else {}),
    }
