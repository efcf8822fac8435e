"""Repair: restore exactly the poisoned tensors from earlier checkpoints into a new, verified one.

``repair()`` scans the target, plans (plan.py: which donor each tensor comes
from, or a refusal listing what cannot be restored), and writes (writer.py:
copy, byte-patch, verify, atomic rename). Nothing here imports torch: donors
and targets are read through nandoctor's own readers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nandoctor.checkpoint.selection import Selection
from nandoctor.errors import OutputExistsError, RepairRefusedError, UnrestorableError
from nandoctor.kernels.census import HealthLimits
from nandoctor.model import PathLike, ScanReport, TensorRef
from nandoctor.restore.plan import (
    PICKLED_FLOAT_WHY,
    DonorInfo,
    RepairPlan,
    Restoration,
    RunBaseline,
    Unrestorable,
    needed_tensors,
    plan_repair,
)
from nandoctor.restore.proof import PROOF_NAME, RepairResult, WrittenFile
from nandoctor.restore.writer import Phase, Progress, Source
from nandoctor.verdict import RATE_FLOATS
from nandoctor.wording import first_few, path_word, scan_command, shell_word

if TYPE_CHECKING:
    from nandoctor.restore.donors import CheckpointDonor
    from nandoctor.verdict import Growth

__all__ = [
    "PROOF_NAME",
    "DonorInfo",
    "RepairPlan",
    "RepairResult",
    "Restoration",
    "Unrestorable",
    "WrittenFile",
    "repair",
]



def repair(
    target: PathLike,
    donors: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    scope: str = "tensor",
    dry_run: bool = False,
    *,
    progress: Progress | None = None,
    on_phase: Phase | None = None,
    hash_all: bool = False,
    allow_diverged: bool = False,
    allow_cast: bool = False,
    limits: HealthLimits | None = None,
    selection: Selection | None = None,
) -> RepairResult:
    """The repair behind :func:`nandoctor.api.repair` (documented there); ``limits``: the health
    thresholds for the target's scan and the donors' checks; ``selection`` (``--only`` / ``--exclude``):
    the tensors judged and restored, in the target, the donors and the verification scan alike (the
    others are carried over byte-identical)."""
    from functools import partial

    from nandoctor import verdict
    from nandoctor.checkpoint import hubcache, layout, runs
    from nandoctor.checkpoint.finalmodel import final_model
    from nandoctor.checkpoint.loaddtype import implied_target
    from nandoctor.checkpoint.runcontext import judge_in_run, judged_in_run
    from nandoctor.checkpoint.stepfiles import step_files_kind
    from nandoctor.engine import scan, scan_as_loaded
    from nandoctor.fileidentity import fingerprint
    from nandoctor.kernels.targets import target as cast_target
    from nandoctor.restore.donors import CheckpointDonor, later_donor_notes, other_model_notes, resolve_donors
    from nandoctor.restore.likeness import (
        donor_already,
        donor_already_note,
        unlike_notes,
        whole_model_donor,
        whole_model_note,
    )
    from nandoctor.restore.tied import tied_partners
    from nandoctor.restore.writer import check_out, check_out_of_donors, tidy_out, write_repair

    started = time.perf_counter()
    # A checkpoint as `nandoctor scan` scans it, for judging one within its run (each scanned once: the run's
    # earlier checkpoints judge the target, then the output)
    # (with the target dtype config.json loads each in, as `nandoctor scan` counts: its fp16 ceiling and overflow)
    scan_one = _memo(partial(scan_as_loaded, device="cpu", limits=limits, selection=selection))
    target_path, _ = hubcache.resolve(target)  # a path, or a model name in the Hugging Face / ModelScope cache
    donor_list = [donors] if isinstance(donors, (str, os.PathLike)) else list(donors)
    if not dry_run and out is None:
        # (only the API gets here: the CLI refuses a missing --out as a usage error; API words, as assert_finite's)
        raise RepairRefusedError(f"{target}: no output folder given",
                                 "pass out=<new folder> (the CLI's --out), or dry_run=True to see the plan")
    out_path = None if out is None else tidy_out(out)  # set whenever something is written (not dry_run)
    # A run folder with a final model: the repair is of that model (checkpoint/finalmodel.py): the weights at
    # its top, or a Lightning run's final file (then the repair is of that one file)
    final = final_model(target_path) if runs.is_run_folder(target_path) else None
    also: tuple[Path, ...] = ()  # other files that decide the run's exit code and fail: named with their commands
    run_folder = target_path
    deciding = _deciding_files(run_folder, final) if final is not None else []
    if len(deciding) > 1:  # (one alone is the target, scanned below)
        failing = [f for f in deciding if judge_in_run(scan_one(f), f, scan_one).exit_code != 0]
        if failing:  # repair one that fails (the final model first), never hand back a clean one as the fix
            target_path, also = failing[0], tuple(failing[1:])
    if final is not None and target_path == run_folder:
        target_path = final
    last = _lightning_last(target_path) if final is None and runs.is_run_folder(target_path) else None
    if last is not None:  # a Lightning run without a final model: its last.ckpt decides (docs/cli.md)
        target_path = last
    if runs.is_run_folder(target_path) and final is None:
        found = runs.checkpoints_in(target_path)
        kind = "checkpoint-N folders"
        if not found:
            found = runs.step_files_in(target_path)
            kind = f"{step_files_kind(found)}s"
        # (no example with the newest checkpoint: a review pasted it, and the newest was diverged, which no repair takes)
        raise RepairRefusedError(
            f"{target}: a training run folder ({len(found)} {kind}), not one checkpoint",
            f"repair one checkpoint of it: `{scan_command(target)}` says which is bad and prints the repair command, "
            "or where to resume from where none can be repaired",
        )
    _refuse_bad_base(target, target_path, limits)
    files = layout.discover(target_path)
    single = target_path if not target_path.is_dir() else None
    if single is not None and len(files.files) > 1:  # (a file of a gguf-split set: the set is the checkpoint)
        raise RepairRefusedError(
            f"{target}: one file of a {len(files.files)}-file set ({first_few([f.name for f in files.files], 3)}), "
            "which is scanned and repaired as one checkpoint",
            f"repair the folder that holds the set, from a donor folder holding its clean set: nandoctor repair "
            f"{path_word(target_path.parent)} --from <donor folder> --out <new folder>",
        )
    source = Source(
        root=target_path.parent if single else target_path,
        single_file=single,
        weights=tuple(files.files),
        left_out=tuple(files.skipped),
        skip_dirs=tuple(p.name for p in runs.timeline_folders(target_path)) if runs.is_run_folder(target_path) else (),
    )
    if out_path is not None and not dry_run:
        check_out(out_path, source)  # fail before any reading when --out is taken

    inputs = {str(f): fingerprint(f) for f in files.files}  # before the scan: a later change is caught
    loads_in = implied_target(target_path)  # what the target, its donors' tensors and the output are judged as loaded in
    loads_as = cast_target(loads_in).loads_as if loads_in is not None else None
    report = scan(target_path, device="cpu", progress=progress, limits=limits, selection=selection, target_dtype=loads_in)
    if report.errors and not verdict.weight_errors(report):  # (a config file's values: no tensor restores them)
        first = report.errors[0]
        raise RepairRefusedError(
            f"{target}: {first.path}: {first.message}",
            (f"{first.hint}; " if first.hint else "") + "a repair restores tensors, never config files: correct "
            f"{Path(first.path).name} first, then repair (its weights are judged as they are: {scan_command(target)})",
        )
    if report.errors:
        first = report.errors[0]
        # (said as what they are: a state dict nested under a key was read whole and would not load, a helper's
        # trial was told "1 part(s) could not be read")
        kinds = {p.kind for p in report.errors}
        what = ("part(s) could not be read" if kinds <= {verdict.UNREADABLE_KIND} else "problem(s) a repair does not fix ("
                + ", ".join(sorted(verdict.PROBLEM_WORDS.get(k, k).lower() for k in kinds)) + ")")
        raise RepairRefusedError(
            f"{target}: {len(report.errors)} {what} ({first.path}: {first.message})",
            f"{first.hint}; a repair needs every tensor readable, in a folder that loads" if first.hint
            else f"run `{scan_command(target)}` to see them; a repair needs every tensor readable, in a folder that loads",
        )
    # Judged within its run, as `nandoctor scan <run>` judges it: a checkpoint whose weights grew far past the
    # run's first healthy one is diverged there, and a repair must not hand it back as repaired
    report, first_healthy = judged_in_run(report, target_path, scan_one)
    # the scales growth was measured against: a rotated-away checkpoint's kept ones, never that path scanned
    baseline = RunBaseline(*first_healthy) if first_healthy is not None else None
    if report.health == "diverged" and not allow_diverged:
        _refuse_diverged(target, target_path, report, baseline, scan_one)
    if selection is not None and not allow_diverged:
        # (a selection's health leaves out what it does not read: a slice of a diverged checkpoint read POISONED and
        # was "repaired", the rest still NaN (a review). Diverged is judged on the whole checkpoint, as a scan of it)
        whole_one = _memo(partial(scan_as_loaded, device="cpu", limits=limits))
        whole, _ = judged_in_run(whole_one(target_path), target_path, whole_one)
        if whole.health == "diverged":
            _refuse_diverged(target, target_path, whole, baseline, whole_one)
    context = verdict.run_context(report)
    # --from auto is suggested only where it finds a donor, and not again when it was given
    auto_available = bool(context and context.get("auto")) and all(str(d) != "auto" for d in donor_list)
    catalogs = resolve_donors(target_path, donor_list, limits, selection, auto_available,
                              needed=bool(report.unhealthy_tensors) or bool(verdict.overflow_tensors(report)),
                              loads_as=loads_as)  # (a zeroed one without a donor is left)
    if out_path is not None and not dry_run:
        check_out_of_donors(out_path, [c.path for c in catalogs])
    ties = tied_partners(report, source.root) if needed_tensors(report, "tensor") else {}
    plan = plan_repair(report, catalogs, scope, allow_cast=allow_cast, baseline=baseline, ties=ties)
    used = {plan.donors[r.donor].path for r in plan.restorations}
    # (tensors restored for a few bad values: the rest of each is the real weights, which an earlier state agrees with)
    one_donor = whole_model_donor(plan, report)
    already = donor_already(plan, report, catalogs) if one_donor is None else None
    doubts = (*([whole_model_note(plan, *one_donor)] if one_donor is not None else []),
              *([donor_already_note(plan, already)] if already is not None else []),
              *other_model_notes(source.root, catalogs, used), *unlike_notes(plan, report, catalogs),
              *later_donor_notes(target_path, catalogs, used))
    plan = replace(plan, notes=(*plan.notes, *doubts), doubts=doubts,
                   whole_model_from=one_donor[0] if one_donor is not None else already.donor if already is not None else None)
    kept_state = _kept_optimizer_state(plan, report)
    if kept_state:
        plan = replace(plan, notes=(*plan.notes, kept_state))
    broke = verdict.loss_broke_from(report)
    if broke is not None and plan.restorations:  # (the scans' next steps say the same)
        plan = replace(plan, notes=(*plan.notes, verdict.loss_broke_words(runs.checkpoint_name(target_path), broke)))
    plan = _with_selection(plan, report, selection, target_path)
    _refuse_growth_left(target, target_path, report, plan, baseline, scan_one)
    sharded = any(f.suffix == ".distcp" or "zero_pp_rank_" in f.name for f in files.files)
    if plan.restorations and (sharded or any(c.chunked for c in catalogs)):
        own = [CheckpointDonor(target_path, limits, selection, loads_as)] if any(d.own for d in plan.donors) else []
        plan = _in_pieces(plan, target_path, [*catalogs, *own], limits or HealthLimits(), selection, loads_as)
    if dry_run or out_path is None:
        notes = _notes(source)
        if out_path is not None:  # (an --out the repair would refuse, said before it is run: a review's read PLAN COMPLETE)
            try:
                check_out(out_path, source)
                check_out_of_donors(out_path, [c.path for c in catalogs])
            except (RepairRefusedError, OutputExistsError) as refused:
                notes += (f"{refused.message}: a repair (without --dry-run) would refuse this --out; {refused.hint}",)
        return RepairResult(
            plan=plan, out=None, verification=None, dry_run=True, notes=notes + _also_notes(also, target_path, out, selection),
            seconds=time.perf_counter() - started,
        )
    _refuse_if_incomplete(plan, auto_available)
    used = {r.donor_ref.file for r in plan.writes}
    for catalog in catalogs:
        inputs.update({f: print_ for f, print_ in catalog.fingerprints.items() if f in used})
    result = write_repair(
        plan,
        source,
        out_path,
        source_report=report,
        progress=progress,
        on_phase=on_phase,
        notes=_notes(source) + _also_notes(also, target_path, out, selection),
        hash_all=hash_all,
        inputs=inputs,
        # judged as `nandoctor scan` judges it once in place: within the target's run, growth included
        judge=partial(judge_in_run, target=target_path, scan_one=scan_one),
        target_dtype=loads_in,
        limits=limits,  # (--max-abs and --outlier-factor judge the output too: an adversarial round's was refused)
    )
    return replace(result, seconds=time.perf_counter() - started)


def _kept_optimizer_state(plan: RepairPlan, report: ScanReport) -> str:
    """A note where weights restored for a training event (exploded values, outliers: a gradient that blew them up)
    leave the checkpoint's optimizer state as it was: its moments hold that gradient and bring the damage back at the
    first resumed step (an adversarial round: SGD's momentum_buffer of 1e4 kept, NaN ten steps into the resume)."""
    from nandoctor import verdict
    from nandoctor.checkpoint.roles import OPTIMIZER, WEIGHT

    events = [r.name for r in plan.restorations if r.target_ref.role == WEIGHT
              and set(r.findings) & {verdict.EXPLODED, verdict.OUTLIER}]
    restored = {r.name for r in plan.restorations}
    state = [t.name for t in report.tensors if t.ref.role == OPTIMIZER and ".state." in t.name]
    if not events or not state or any(name in restored for name in state):
        return ""
    donor = plan.donors[plan.restorations[0].donor].path
    return (f"{first_few(events, 2)} restored for values a training step blew up, and the optimizer state kept as it "
            f"was: its moments hold that step's gradient and can blow them up again at the first resumed step; to "
            f"resume training, resume from {donor} (or with a fresh optimizer state); to use the weights, the repair is "
            "what it says")


def _in_pieces(
    plan: RepairPlan, target: Path, catalogs: Sequence[CheckpointDonor], limits: HealthLimits,
    selection: Selection | None, loads_as: str | None = None,
) -> RepairPlan:
    """The plan's restorations of chunked tensors (DCP shards) cut into the chunks actually written."""
    from functools import partial

    from nandoctor.checkpoint.opener import open_checkpoint
    from nandoctor.restore.donors import nonfinite_counts, tensor_health
    from nandoctor.restore.pieces import expand

    chunks: dict[str, list[TensorRef]] = {}
    for ref in open_checkpoint(target, selection=selection).refs:  # headers only: the chunks' byte ranges
        if ref.chunk is not None:
            chunks.setdefault(ref.name, []).append(ref)
    return expand(plan, chunks, catalogs, partial(tensor_health, limits=limits, loads_as=loads_as), nonfinite_counts)


def _with_selection(plan: RepairPlan, report: ScanReport, selection: Selection | None, target: Path) -> RepairPlan:
    """The plan with what ``--only`` / ``--exclude`` left out of it, counted, named (its headers read again:
    the scan never listed them) and said in a note."""
    from nandoctor.checkpoint.opener import open_checkpoint

    if selection is None:
        return plan
    excluded = report.extra.get("excluded") or {}
    count = int(excluded.get("tensors", 0))
    names = tuple(dict.fromkeys(r.name for r in open_checkpoint(target).refs if not selection.keeps(r.name)))
    note = (f"{count:,} tensor(s) left out by {selection.describe()}: neither judged nor restored, "
            "carried over byte-identical")
    return replace(plan, selection=selection, excluded=count, excluded_names=names, notes=(*plan.notes, note))


def _memo(scan_one: Callable[[Path], ScanReport]) -> Callable[[Path], ScanReport]:
    """``scan_one`` that scans each path once (the run's earlier checkpoints judge the target and the output)."""
    done: dict[Path, ScanReport] = {}

    def once(path: Path) -> ScanReport:
        key = Path(path)
        if key not in done:
            done[key] = scan_one(key)
        return done[key]

    return once


def _grown(report: ScanReport, baseline: RunBaseline | None, restored: set[str]) -> Growth | None:
    """The tensor that keeps ``report``'s checkpoint diverged by growth once the ``restored`` ones are restored
    (verdict.growth over the others), or None. Growth is no bad tensor: a repair by tensor leaves it."""
    from nandoctor import verdict

    if baseline is None:
        return None
    kept = {n: s for n, s in baseline.scales.items() if n not in restored}
    # (the initial weights' scales stay InitialScales: the growth says what it is measured against)
    grown = verdict.growth(report, verdict.InitialScales(kept) if isinstance(baseline.scales, verdict.InitialScales)
                           else kept)
    return grown if grown is not None and grown.factor >= verdict.growth_limit(report) else None


def _shard_donors(plan: RepairPlan) -> list[Path]:
    """The folders of the donors given as one numbered or indexed shard of a sharded checkpoint (a new user's
    ``--from checkpoint-200/model-00001-of-00002.safetensors`` found none of the tensors in the other shard)."""
    from nandoctor.checkpoint import layout
    from nandoctor.errors import NandoctorError

    folders = []
    for donor in plan.donors:
        path = Path(donor.path)
        try:
            sharded = path.is_file() and layout.discover(path).shard_of is not None
        except (NandoctorError, OSError):
            continue
        if sharded and path.parent not in folders:
            folders.append(path.parent)
    return folders


def _refuse_bad_base(target: PathLike, target_path: Path, limits: HealthLimits | None) -> None:
    """Refuse (nothing read further, nothing written) a PEFT adapter alone whose local base model fails its own scan
    (adapterbase.py, judged by the default gate, as a repair judges its target): the adapted model computes with the
    base's weights, which a repair of the adapter never touches, so a "repaired" adapter would still fail generate.
    The refusal names the base and its own repair."""
    from nandoctor import adapterbase, verdict
    from nandoctor.checkpoint import loadability
    from nandoctor.hints import base_model_steps

    named = loadability.adapter_base(target_path)
    base = adapterbase.base_verdict(target_path, named, adapterbase.BaseOptions(limits=limits)) if named else None
    if base is None:
        return
    failing, _ = verdict.base_judged(base, verdict.DEFAULT_FAIL_ON)
    if base.get("problem_words"):
        first = base["problems"][0]
        raise RepairRefusedError(
            f"{target}: the base model its adapter_config.json names ({named!r}) could not be read as a whole "
            f"({base['problem_words']}: {first['path']}: {first['message']}); a repair of the adapter restores the "
            "adapter's own tensors only",
            f"scan the base ({scan_command(base['path'])}) and fix what it says, or point base_model_name_or_path in "
            "adapter_config.json to a base model that loads; then scan the adapter again",
        )
    if failing:
        raise RepairRefusedError(
            f"{target}: the base model its adapter_config.json names ({named!r}) fails its own scan "
            f"({verdict.base_found_words(base)}); a repair of the adapter restores the "
            "adapter's own tensors only, and the adapted model would still compute with the base's weights",
            " ".join(step.strip() for step in base_model_steps(str(target_path), base)),
        )


def _refuse_diverged(target: PathLike, target_path: Path, report: ScanReport, baseline: RunBaseline | None,
                     scan_one: Callable[[Path], ScanReport]) -> None:
    from nandoctor import verdict
    from nandoctor.layers import bad_ranges

    ranges = bad_ranges(report.layers)
    where = f"; bad layers: {', '.join(r.label for r in ranges[:4])}{' …' if len(ranges) > 4 else ''}" if ranges else ""
    healthy = _last_healthy_before(target_path, scan_one)  # (a trial: the hint sent the user to another command)
    advice = verdict.diverged_advice(report, f" ({healthy})" if healthy is not None else _where(target_path))
    bad = {t.name for t in report.unhealthy_tensors}
    grown = _grown(report, baseline, bad)
    why = verdict.diverged_why(report)
    if grown is None:
        raise RepairRefusedError(
            f"{target}: diverged: {why}{where}; a repair would only stitch a broken model together; nothing was written",
            f"{advice}; --allow-diverged repairs it anyway",
        )
    # --allow-diverged restores bad tensors: it is offered only where restoring them leaves no growth behind. Said
    # after the bad tensors, the growth as its own reason (a trial read "32 of 39 weight tensors are NaN/Inf …; growth
    # is no bad tensor", and which tensor grew was said only with --allow-diverged)
    also = "" if grown.words() in why else f"; and {_grown_words(grown, baseline)}"
    raise RepairRefusedError(
        f"{target}: diverged: {why}{where}{also}; {_growth_stays(len(bad))}; nothing was written", advice)


def _grown_words(grown: Growth, baseline: RunBaseline | None) -> str:
    """What grew, by how much, since which checkpoint (its path, where it is one)."""
    return f"{grown.reason()}{'' if grown.from_start or baseline is None else f' {baseline.path}'}"


def _growth_stays(restored: int) -> str:
    """Why a repair by tensor leaves a checkpoint diverged by growth once its ``restored`` bad tensors are restored."""
    restoring = (f"restoring its {restored} bad tensor(s) would leave it diverged" if restored
                 else "nothing to restore")
    return (f"{restoring}: the weight that grew holds no NaN/Inf, exploded or outlier value of its own, so it is no "
            "tensor a repair restores, and a checkpoint diverged by growth cannot be repaired by tensor")


def _refuse_growth_left(
    target: PathLike, target_path: Path, report: ScanReport, plan: RepairPlan, baseline: RunBaseline | None,
    scan_one: Callable[[Path], ScanReport],
) -> None:
    """Refuse (--allow-diverged) a checkpoint that would still be diverged by growth once the plan's tensors are
    restored: its verification would fail, and nothing a repair by tensor restores can change that."""
    from nandoctor import verdict

    grown = _grown(report, baseline, {r.name for r in plan.restorations})
    if grown is None or baseline is None:
        return
    healthy = _last_healthy_before(target_path, scan_one)
    raise RepairRefusedError(
        f"{target}: diverged: {_grown_words(grown, baseline)}; {_growth_stays(plan.tensors_restored)}; "
        "nothing was written",
        verdict.diverged_advice(report, f" ({healthy})" if healthy is not None else _where(target_path)),
    )


def _last_healthy_before(target_path: Path, scan_one: Callable[[Path], ScanReport]) -> Path | None:
    """The newest checkpoint of the target's run saved before it that passes, judged in its run as a run scan judges
    it (growth included; none saved once the trainer log's loss had jumped): what to resume from, for a refusal.
    Scanned newest first, stopping at the first that passes (usually one scan: the run's healthy ones are before)."""
    from nandoctor import verdict
    from nandoctor.checkpoint import runs
    from nandoctor.checkpoint.runcontext import judged_in_run
    from nandoctor.checkpoint.trainlog import read_train_log

    place = runs.place_in_run(target_path)
    if place is None:
        return None
    state = (target_path if target_path.is_dir() else target_path.parent) / runs.TRAINER_STATE
    jumped = read_train_log(state).broken_weights_from if state.is_file() else None
    return runs.last_passing_before(place.siblings(), place.step if jumped is None else min(place.step, jumped),
                                    lambda path: verdict.passes(judged_in_run(scan_one(path), path, scan_one)[0]))


def _where(target_path: Path) -> str:
    """How to find the run's last healthy checkpoint, for the advice to resume from it."""
    from nandoctor.checkpoint import runs

    place = runs.place_in_run(target_path)
    return f" (`{scan_command(place.run)}` names it)" if place is not None else ""


def _lightning_last(run_folder: Path) -> Path | None:
    """A Lightning run folder's ``last.ckpt`` (the step file it links to, for ``save_last="link"``): what
    ``trainer.fit(ckpt_path="last")`` resumes from, so what decides the run where it has no final model."""
    from nandoctor.checkpoint.stepfiles import step_folder

    lightning = step_folder(run_folder)
    last = lightning.last if lightning is not None else None
    if last is not None and last.is_symlink():
        last = Path(os.path.realpath(last))
    return last


def _deciding_files(run_folder: Path, final: Path) -> list[Path]:
    """The files that decide a run folder's exit code (docs/cli.md): its final model, and a Lightning run's
    ``last.ckpt`` unless it is the final file itself."""
    files = [final]
    last = _lightning_last(run_folder) if final != run_folder else None  # (a link: the step file it names)
    if last is not None and last != final:
        files.append(last)
    return files


def _also_notes(also: Sequence[Path], target: Path, out: PathLike | None,
                selection: Selection | None) -> tuple[str, ...]:
    """For the other failing files that decide the run: the repair of each, then every ``mv`` at once."""
    from nandoctor.hints import AUTO, free_repaired_path, put_in_place, repair_command_for

    if not also:
        return ()
    outs = [free_repaired_path(f) for f in also]  # the --out repair_command_for suggests
    args = "".join(f" --only {shell_word(p)}" for p in selection.only) if selection is not None else ""
    args += "".join(f" --exclude {shell_word(p)}" for p in selection.exclude) if selection is not None else ""
    notes = tuple(f"{f.name} also decides the run's exit code and fails its scan; repair it too: "
                  f"{repair_command_for(str(f), AUTO, selection=args)}" for f in also)
    places = [put_in_place(str(target), Path(out))] if out is not None else []
    places += [put_in_place(str(f), Path(o)) for f, o in zip(also, outs)]
    return (*notes, "then put the repairs in place: " + " && ".join(places))


def _notes(source: Source) -> tuple[str, ...]:
    return tuple(
        f"{p.name} is weights in another format that is not repaired; it is left out of the output"
        for p in source.left_out
    )


def _refuse_if_incomplete(plan: RepairPlan, auto_available: bool = False) -> None:
    if plan.unviewed:
        from nandoctor.hints import resave_command

        u = plan.unviewed[0]
        bad = u.nan + u.posinf + u.neginf
        if u.pickled:
            raise UnrestorableError(
                f"{u.file}: the {u.label()} holds {bad:,} NaN/Inf values; a repair restores tensors, not values "
                "pickled beside them",
                "leave it out of the checkpoint, store it finite or take it from an earlier checkpoint, and save again; "
                "then scan, and repair if need be",
                plan=plan,
            )
        raise UnrestorableError(
            f"{u.file}: storage {u.storage!r} holds {bad:,} NaN/Inf values in bytes that no tensor views; a repair "
            "by tensor name cannot restore them",
            f"re-save the file with each tensor cloned (a clone keeps only the bytes it views; torch.save of a view "
            f"writes its whole storage): {resave_command(u.file)}; then scan the new file, and repair it if need be",
            plan=plan,
        )
    if plan.donors_unreadable:  # (a file that is not a checkpoint, an empty folder): that is the error to fix
        label, failure = plan.donors_unreadable[0]
        more = len(plan.donors_unreadable) - 1
        others = f" (and {more} more donor(s) could not be read)" if more else ""
        raise UnrestorableError(
            f"donor {label} could not be read: {failure.message.removeprefix(label + ': ')}{others}; nothing was written",
            (failure.hint + "; " if failure.hint else "")
            + "--from takes a checkpoint: a weights file, a checkpoint folder, a model name in the cache, or auto",
            plan=plan,
        )
    floats = [u.name for u in plan.unrestorable if u.reasons and all(r.endswith(PICKLED_FLOAT_WHY) for r in u.reasons)]
    if floats and len(floats) == len(plan.unrestorable) and not plan.restorations:
        raise RepairRefusedError(
            f"{plan.target}: only {RATE_FLOATS} are bad ({first_few(floats, 3, quoted=True)}), which a repair does not "
            "restore; nothing was written",
            "resume training from an earlier checkpoint (`nandoctor scan` of the run names the last healthy one), or "
            "from this one with a fresh optimizer state (without its optimizer and scheduler files)",
        )
    if plan.unrestorable:
        names = [u.name for u in plan.unrestorable]
        shown = first_few(names, 3, quoted=True) + (f" ({len(floats)} of them {RATE_FLOATS})" if floats else "")
        # (the note itself, not "see the note above": repair -q prints no note)
        cast = next((n for n in plan.notes if "--allow-cast takes it" in n), "a donor holds them in another float dtype")
        ways = [f"add --allow-cast ({cast})"] if plan.cast_helps else []
        if plan.exclude_globs:  # a weights-only donor: leave the optimizer state out, carried over as it is
            ways.append(" ".join(f"--exclude {shell_word(g)}" for g in plan.exclude_globs)
                        + " (the optimizer state, carried over as it is; resume with a fresh optimizer state)")
        shards = _shard_donors(plan)  # (a donor given as one shard of its folder holds the other shards' tensors not)
        if shards:
            ways.insert(0, "give the checkpoint folder, not one of its shards: "
                        + " ".join(f"--from {path_word(folder)}" for folder in shards))
        ways.append("add an earlier clean checkpoint with --from" + (" (or --from auto)" if auto_available else ""))
        raise UnrestorableError(
            f"{plan.target}: {len(names)} tensor(s) have no good donor: {shown}; nothing was written",
            "; or ".join(ways) + "; --dry-run shows why each donor failed",
            plan=plan,
        )
