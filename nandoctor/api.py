"""The public Python API, each function defined once here (``nandoctor.scan`` is this ``scan``; docs/api.md).

Paths go through one resolver: a local path as given, else a repo id found in
the local Hugging Face / ModelScope cache. Run folders (``checkpoint-N``
inside) are scanned as a timeline by :func:`scan_run`; :func:`scan` takes one
checkpoint. What fails and the exit codes are decided in ``verdict.py``. Heavy
modules (numpy, torch, the repair writer) are imported inside the functions
that need them, so ``import nandoctor`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nandoctor import adapterbase
from nandoctor import verdict as verdicts
from nandoctor.checkpoint import hubcache, runs
from nandoctor.checkpoint.loaddtype import NONE, advice, annotated, implied_target
from nandoctor.checkpoint.runs import RunReport
from nandoctor.checkpoint.selection import selection
from nandoctor.errors import (
    DivergedError,
    NonFiniteWeightsError,
    OverflowRiskError,
    UnreadableCheckpointError,
    UnsupportedFormatError,
    require_path,
)
from nandoctor.hints import repair_command, repair_command_for  # noqa: F401  (public)
from nandoctor.layers import bad_ranges
from nandoctor.model import PathLike, ProgressCallback, ScanReport
from nandoctor.wording import first_few, scan_command

if TYPE_CHECKING:
    from pathlib import Path

    from nandoctor.kernels.census import HealthLimits
    from nandoctor.restore import RepairResult



def _check_target(target_dtype: str | None) -> str | None:
    """``target_dtype`` as the scan takes it: None (config.json's, checkpoint/loaddtype.py), ``"none"`` or a
    target's own name; ValueError listing the choices otherwise."""
    if target_dtype is None:
        return None
    if target_dtype.lower() == NONE:
        return NONE
    from nandoctor.kernels.targets import target

    return target(target_dtype).name


def _explicit(target_dtype: str | None) -> str | None:
    """The target dtype given, ``"none"`` as no target (live tensors have no config.json to imply one)."""
    checked = _check_target(target_dtype)
    return None if checked == NONE else checked


def scan_target(checkpoint: PathLike, target_dtype: str | None) -> str | None:
    """The target dtype a scan of the (resolved) ``checkpoint`` counts overflow for: ``target_dtype`` when
    given, none for ``"none"``, else the dtype its config.json makes ``from_pretrained`` load it in, where
    its stored weights can overflow that (checkpoint/loaddtype.py)."""
    from pathlib import Path

    asked = _check_target(target_dtype)
    return implied_target(Path(checkpoint)) if asked is None else _explicit(asked)


def require_some_target(path: PathLike, fail_on: frozenset[str], target_dtype: str | None) -> None:
    """ValueError when the gate checks overflow alone and no target dtype applies: none given, and no config.json
    of ``path`` (or of a run's checkpoints) implies one; a gate that passes anything is a bug."""
    if target_dtype is not None or not verdicts.checks_overflow_alone(fail_on):
        verdicts.require_target_for_overflow(fail_on, None if target_dtype == NONE else target_dtype)
        return
    from pathlib import Path

    resolved, _ = hubcache.resolve(path)
    folders = [Path(resolved)]
    if runs.is_run_folder(resolved):
        folders += [folder for _, folder in runs.checkpoints_in(Path(resolved))]
    if not any(implied_target(folder) for folder in folders):
        verdicts.require_target_for_overflow(fail_on, None)


def _with_cache_note(report: ScanReport, original: PathLike, hit: hubcache.CacheHit | None) -> ScanReport:
    if hit is None:
        return report
    rev = f" (revision {hit.revision})" if hit.revision else ""
    note = f"{os.fspath(original)} resolved to the {hit.cache} cache: {hit.path}{rev}"
    return dataclasses.replace(report, notes=(note, *report.notes))


def health_limits(max_abs: float | None, outlier_factor: float | None) -> HealthLimits | None:
    """The census's thresholds from ``--max-abs`` / ``--outlier-factor`` (None: the defaults);
    ValueError for a value that is not positive and finite."""
    if max_abs is None and outlier_factor is None:
        return None
    from nandoctor.kernels.census import DEFAULT_OUTLIER_FACTOR, HealthLimits

    return HealthLimits(
        max_abs,  # None: each dtype's own default ceiling (1e5; 2^14 for fp16)
        DEFAULT_OUTLIER_FACTOR if outlier_factor is None else outlier_factor,
    )


@dataclasses.dataclass(frozen=True)
class ScanOptions:
    """How a checkpoint is scanned (:func:`scan`'s keywords but ``progress``): what :func:`in_context` needs to
    judge an engine report as :func:`scan` judges it."""

    device: str = "auto"
    both_formats: bool = False
    target_dtype: str | None = None
    max_abs: float | None = None
    outlier_factor: float | None = None
    only: Iterable[str] | None = None
    exclude: Iterable[str] | None = None
    verify_hashes: bool = False
    manifest: PathLike | None = None


def scan(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    max_abs: float | None = None,
    outlier_factor: float | None = None,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    verify_hashes: bool = False,
    manifest: PathLike | None = None,
) -> ScanReport:
    """Scan one checkpoint for NaN/Inf and unhealthy weights without loading it.

    Args:
        path: a file (``.safetensors``, ``.bin``/``.pt``/``.pth``/``.ckpt``), a checkpoint folder
            (sharded, Trainer ``checkpoint-N``) or a repo id already in the local Hugging Face /
            ModelScope cache (never downloaded).
        device: ``"auto"`` (CUDA when torch sees a GPU), ``"cpu"`` or ``"cuda"``.
        target_dtype: also count finite values that overflow a cast to ``fp16``, ``bf16``,
            ``fp8_e4m3`` or ``fp8_e5m2``. None (the default): the dtype config.json makes ``from_pretrained``
            load the weights in (its ``dtype``, else ``torch_dtype``) where the stored weights can overflow it,
            said in a note and ``report.extra["load_dtype"]``; ``"none"``: no overflow counts at all.
        progress: called with (bytes done, bytes total, current file).
        both_formats: scan safetensors and ``.bin`` weights when a folder holds both.
        max_abs: the exploded ceiling for every dtype (default 1e5, and 2**14 for fp16 weights, which cannot
            hold 1e5): a weight above it is ``exploded``.
        outlier_factor: how far above its tensor's bulk scale a value is an ``outlier`` (default 2**10).
        only, exclude: globs on the full tensor name (``"callbacks.*"``); only the tensors some ``only``
            pattern names (all when none) and no ``exclude`` pattern names are scanned. The others are
            counted in ``report.extra["excluded"]`` and a note.
        verify_hashes: also check every weight file whose sha256 is known offline (a Hugging Face cache
            blob name, a ``nandoctor-repair.json``, ``manifest``); a mismatch is an error of the report
            (exit code 3) naming the file and, with a manifest, the tensors. See :func:`verify_hashes`.
        manifest: a manifest written by :func:`manifest` (implies ``verify_hashes``).

    Returns:
        A :class:`ScanReport`: ``ok``, ``exit_code``, ``verdict``, ``health``, per-tensor results
        with their ``findings``, layer summaries; :func:`to_json` gives its JSON.

    Raises:
        CheckpointNotFoundError: the path does not exist and is no cached repo id.
        UnsupportedFormatError: a run folder (use :func:`scan_run`) or an unknown format. A run folder
            with the final model at its top (``trainer.save_model()`` beside ``checkpoint-N``; a Lightning
            ``final.ckpt`` or ``model.safetensors`` beside the step files) is a checkpoint too: its final
            model is scanned, judged against the run's checkpoints.
        ValueError: an unknown ``target_dtype`` or an invalid limit.

    Example:
        >>> report = nandoctor.scan("output/checkpoint-300")
        >>> report.ok, [layer.layer for layer in report.bad_layers]
    """
    require_path(path, "scan")
    if manifest is not None:
        require_path(manifest, "scan", "manifest")
    options = ScanOptions(device, both_formats, _check_target(target_dtype), max_abs, outlier_factor, only, exclude,
                          verify_hashes, manifest)
    scan_one = _engine_scan(options, progress)  # (bad options are refused before the path is looked at)
    resolved, _ = one_checkpoint(path)
    return in_context(scan_one(resolved), path, options)


def _engine_scan(options: ScanOptions, progress: ProgressCallback | None = None) -> Callable[[Path], ScanReport]:
    """The engine's scan of one resolved checkpoint with ``options`` (limits, selection and target checked; the
    target dtype of each checkpoint scanned: :func:`scan_target`)."""
    from functools import partial

    from nandoctor.engine import scan as engine_scan

    asked = _check_target(options.target_dtype)
    scan_with = partial(
        engine_scan, device=options.device, progress=progress, both_formats=options.both_formats,
        limits=health_limits(options.max_abs, options.outlier_factor), selection=selection(options.only, options.exclude),
    )

    def scan_one(checkpoint: Path) -> ScanReport:
        return scan_with(checkpoint, target_dtype=scan_target(checkpoint, asked))

    return scan_one


def one_checkpoint(path: PathLike, *, split: str | None = None, launcher: str = "") -> tuple[Path, hubcache.CacheHit | None]:
    """The checkpoint :func:`scan` reads for ``path`` (a repo id resolved in the local caches; a run folder's
    final model) and the cache hit; UnsupportedFormatError for a run folder without a final model, naming its
    newest checkpoint (``split``: the options of ``scan --part I/N --json`` or ``--distributed``, which split one
    checkpoint, and ``launcher`` the command before it: the hint repeats them)."""
    resolved, hit = hubcache.resolve(path)
    found = runs.one_checkpoint_in(resolved)
    if found is not None:
        return found, hit
    if split:
        raise runs.run_folder_error(
            resolved,
            lambda newest: f"split its newest checkpoint: {launcher}nandoctor scan {newest} {split} (or each checkpoint "
            "in turn); `nandoctor scan` of the run folder gives the timeline",
            ": a run cannot be split into parts, only one checkpoint",
        )
    raise runs.run_folder_error(
        resolved,
        lambda newest: "use nandoctor.scan_run() for the timeline of the run, or scan one of its checkpoints "
        f"(the newest: {newest})",
    )


def in_context(report: ScanReport, path: PathLike, options: ScanOptions = ScanOptions()) -> ScanReport:
    """What :func:`scan` does after the engine, for the engine's ``report`` of the checkpoint ``path`` names
    (scanned with ``options``): judged within its run, a PEFT adapter's local base model scanned with it
    (adapterbase.py), the hashes checked when asked, the cache note. ``nandoctor merge`` and ``scan --distributed``
    apply it to their merged report, so that they give the single scan's report."""
    from nandoctor.checkpoint.runcontext import judge_in_run

    rescan = _engine_scan(options)
    resolved, hit = one_checkpoint(path)
    # A bad checkpoint of a run is judged as the run scan judges it (its growth over the run's first healthy
    # checkpoint), so that its health and next step never contradict `nandoctor scan <run>`.
    report = judge_in_run(report, resolved, rescan)
    report = annotated(report, resolved, _check_target(options.target_dtype))  # config.json's load dtype
    # (an adapter alone: the base it is applied to decides too, said on every line: verdict.facts)
    report = adapterbase.with_base(report, resolved, _base_options(options))
    if options.verify_hashes or options.manifest is not None:
        from nandoctor.api_compare import _verify

        check = _verify(resolved, options.manifest, options.both_formats)
        report = verdicts.judged(dataclasses.replace(
            report, errors=(*report.errors, *check.problems), notes=(*report.notes, *check.notes),
            extra={**report.extra, "hashes": {"verified": [{"file": f, "source": s} for f, s in check.verified],
                                              "unverified": list(check.unverified),
                                              "load_files": {"verified": list(check.load_files),
                                                             "failed": list(check.load_files_failed)},
                                              "bytes": check.bytes_hashed, "seconds": round(check.seconds, 3)}},
        ))
    return _with_cache_note(report, path, hit)


def _base_options(options: ScanOptions) -> adapterbase.BaseOptions:
    """A PEFT adapter's base model scanned with the command's ``options`` (not ``only``/``exclude``, which name the
    adapter's tensors, nor the hashes: the adapter's files'): adapterbase.py."""
    return adapterbase.BaseOptions(options.device, _check_target(options.target_dtype),
                                   health_limits(options.max_abs, options.outlier_factor), options.both_formats)


def scan_run(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    max_abs: float | None = None,
    outlier_factor: float | None = None,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> RunReport:
    """Scan every ``checkpoint-N`` of a training run folder, oldest first, with its trainer log.

    Args:
        path: the run folder (``output_dir`` of a Trainer run).
        device, target_dtype, progress, both_formats, max_abs, outlier_factor, only, exclude: as for
            :func:`scan`, applied to every checkpoint.

    Returns:
        A ``RunReport``: each checkpoint's status (``clean``, ``poisoned``, ``diverged``, ``overflow``,
        ``unreadable``, ``incomplete``), its largest weight and growth, ``last_healthy``,
        ``first_bad``; ``exit_code()`` is the newest checkpoint's.

    Raises:
        UnsupportedFormatError: the folder holds no ``checkpoint-N`` folders (use :func:`scan`).
        DeviceUnavailableError: ``device`` cannot be used (``"cuda"`` where torch sees no GPU), before any
            checkpoint is read.

    Example:
        >>> run = nandoctor.scan_run("output/")
        >>> run.last_healthy.name, run.first_bad.name
    """
    require_path(path, "scan_run")
    asked = _check_target(target_dtype)
    from nandoctor.kernels import require_device

    require_device(device)  # (each checkpoint would fail alone, as if its files were at fault)
    limits = health_limits(max_abs, outlier_factor)
    chosen = selection(only, exclude)
    resolved, _ = hubcache.resolve(path)
    if not runs.is_run_folder(resolved):
        raise UnsupportedFormatError(
            f"{resolved}: not a training run folder (no checkpoint-N folders inside, or weights at the top)",
            "use nandoctor.scan() for a single checkpoint",
        )
    from nandoctor.engine import scan as engine_scan

    base = _base_options(ScanOptions(device, both_formats, asked, max_abs, outlier_factor))

    def scan_one(checkpoint: Path, **how: Any) -> ScanReport:  # each checkpoint with its own config.json's dtype
        report = engine_scan(checkpoint, target_dtype=scan_target(checkpoint, asked), limits=limits, selection=chosen,
                             **how)
        # (a LoRA run's adapters: their base read once for all of them, kept by its files' identity: adapterbase.py)
        return adapterbase.with_base(annotated(report, checkpoint, asked), checkpoint, base)

    return runs.scan_run(resolved, device=device, progress=progress, both_formats=both_formats, scan_one=scan_one)


def to_json(result: ScanReport | RunReport, fail_on: Iterable[str] | str | None = None) -> dict[str, Any]:
    """The JSON-ready dict of a scan or run report, as ``nandoctor scan --json`` prints it (docs/json.md).

    Args:
        result: what :func:`scan` or :func:`scan_run` returned.
        fail_on: the findings that fail the gate (default: nonfinite, exploded, outlier, overflow); it
            changes ``summary.exit_code`` and ``summary.failing``, never the counts.

    Returns:
        A dict of plain values (``json.dumps`` takes it as it is), ``gate`` included.

    Example:
        >>> data = nandoctor.to_json(nandoctor.scan("ckpt/"))
        >>> data["summary"]["verdict"], data["bad_layer_ranges"]
    """
    from nandoctor.report.json_report import gate_json, report_to_json, run_to_json

    gate = verdicts.parse_fail_on(fail_on)  # (None: the default set)
    chosen = None if fail_on is None else gate
    if isinstance(result, RunReport):
        data = run_to_json(result, chosen)
        data["gate"] = gate_json(gate, result.exit_code(gate))
        return data
    if not isinstance(result, ScanReport):
        raise TypeError(f"nandoctor.to_json takes what nandoctor.scan or nandoctor.scan_run returned, not "
                        f"{type(result).__name__}: to_json(nandoctor.scan(path))")
    data = report_to_json(result, chosen)
    data["gate"] = gate_json(gate, verdicts.exit_code(result, gate))
    return data


def check(report: ScanReport, fail_on: Iterable[str] | str | None = None, *, resume_from: str | None = None) -> ScanReport:
    """Raise as :func:`assert_finite` does when ``report`` fails the gate; else return it, judged by ``fail_on``
    (every exception path, one per verdict kind, is in tests/test_api.py's table). ``resume_from``: the run's last
    healthy checkpoint, when the caller scanned the run (a diverged checkpoint's hint names it); ``""``: the caller
    scanned the run and it holds none (the hint says to restart from the base model, as the run scan does)."""
    chosen = verdicts.parse_fail_on(fail_on)
    code = verdicts.exit_code(report, chosen)
    if code == 0:
        # (judged as the caller asked: a report that passes says ok, as the CLI's PASS … (reported only) does)
        decided = report.judgement
        return report if decided is not None and decided.fail_on == chosen else verdicts.judged(report, chosen)
    if report.errors and not verdicts.weight_errors(report):
        weights = verdicts.weights_report(report, chosen)
        if verdicts.exit_code(weights, chosen) != 0:
            check(weights, fail_on)  # (NaN weights beside a bad config: the weights' error, the more urgent one)
    if report.errors:
        first = report.errors[0]
        # (a config file's values only: every weight was read, but the folder does not work as it is)
        outcome = ("the checkpoint does not work as it is" if not verdicts.weight_errors(report)
                   else "the checkpoint cannot be called finite")
        raise UnreadableCheckpointError(
            report.target,
            f"{'; '.join(verdicts.problem_facts(report))}, so {outcome}",
            first.hint or "run `nandoctor scan` on it for the details",
            report=report,
        )
    ranges = [r.label for r in bad_ranges(report.layers)]
    layers_said = first_few(ranges, 6)
    where = f" in {layers_said}" if ranges else ""
    from nandoctor.hints import use_verified_repair_of

    # (a verified repair already written: put it in place, as the scan says, not the same repair again into -2)
    in_place = [step.strip() for step in use_verified_repair_of(report.target, report)]
    hint = " ".join(in_place) if in_place else f"restore them from an earlier clean checkpoint: {repair_command(report)}"
    decided = verdicts.judge(report, chosen)
    failing = decided.failing
    base = verdicts.adapter_base_scan(report)
    if decided.base_failing and not failing and report.health != "diverged" and base is not None:
        # (a PEFT adapter alone, healthy, on a base model whose own scan fails: the base is what to fix)
        from nandoctor.hints import base_model_steps

        raise (OverflowRiskError if decided.base_failing == (verdicts.OVERFLOW,) else NonFiniteWeightsError)(
            f"{report.target}: the base model its adapter_config.json names fails "
            f"({', '.join(decided.base_failing)}): {verdicts.base_fact(report)}; the adapted model computes with it",
            " ".join(step.strip() for step in base_model_steps(report.target, base)),
            report=report,
        )
    if report.health == "diverged":  # by its share of broken weights, or by growth alone (no finding of its own)
        run = (verdicts.run_context(report) or {}).get("run")
        where = f" (`{scan_command(run)}` names it)" if run else ""
        why = verdicts.diverged_why(report)
        found = [fact for fact in verdicts.facts(report) if fact != why and not fact.endswith(" healthy")]
        # (a run folder's deciding row, a final model or a weights-only save among them, is resumed as the run is)
        if resume_from == "":
            instead = f"no healthy checkpoint is left in this run: restart from the base model {verdicts.what_to_change(report)}"
        elif resume_from is not None:
            instead = f"resume training from the last healthy checkpoint ({resume_from}) {verdicts.what_to_change(report)}"
        else:
            instead = verdicts.diverged_advice(report, where)
        raise DivergedError(
            f"{report.target}: DIVERGED: {why}" + (f" ({'; '.join(found)})" if found else "")
            + "; a repair would only stitch a broken model together",
            instead,
            report=report,
        )
    if verdicts.only_pickled_floats(report, failing):  # (no tensor to restore: the CLI's advice, not a repair)
        names = [t.ref.name for t in report.tensors.with_any(failing)]
        raise NonFiniteWeightsError(
            f"{report.target}: only {verdicts.RATE_FLOATS} are NaN/Inf ({', '.join(names[:3])}); the weights are "
            "healthy, but resuming training from it restores them",
            f"resume training from an earlier checkpoint{f' ({resume_from})' if resume_from else ''}; a repair "
            "restores tensors, not these",
            report=report,
        )
    others = {f: len(verdicts.with_finding(report, f)) for f in failing
              if f in (verdicts.EXPLODED, verdicts.OUTLIER, verdicts.ZEROED)}
    moments = verdicts.optimizer_only(report, failing)
    if moments:  # (the weights read healthy: a resume is at risk, inference too where a second moment overflowed)
        # (the containers the optimizer state sits in, as --exclude globs: optimizer.*, opt.*, optimizer_states.*)
        containers = sorted({f"{name.split('.', 1)[0]}.*" for name in moments})
        said = (f"but {verdicts.OVERFLOWED_MOMENT} (evaluate the model before use), and"
                if verdicts.overflowed_moments(report, failing) else "the weights are finite and healthy, but")
        raise NonFiniteWeightsError(
            f"{report.target}: only optimizer state holds NaN/Inf ({first_few(moments, 3)}); {said} resuming "
            "training from it restores the NaN",
            f"to serve the weights, gate them alone: assert_finite(path, exclude={containers!r}) (the CLI's "
            f"--exclude); to resume, {hint}",
            report=report,
        )
    if verdicts.NONFINITE in failing:
        # (the layers are those of every unhealthy tensor: said as such when some are not NaN/Inf ones)
        also = "; also " + ", ".join(f"{n} {f}" for f, n in others.items() if n) + " tensor(s)" if any(
            others.values()) else ""
        raise NonFiniteWeightsError(
            f"{report.target}: {len(report.bad_tensors)} of {len(report.tensors)} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf){also}"
            f"{(f'; unhealthy layers: {layers_said}' if ranges else '') if also else where}",
            hint,
            report=report,
        )
    overflow = verdicts.OVERFLOW in failing and verdicts.overflow_count(report) > 0
    dtype = verdicts.target_dtype(report)
    layer = verdicts.worst_overflow_layer(report)
    top = verdicts.max_abs(report)
    overflow_said = (f"{verdicts.plural(verdicts.overflow_count(report), 'finite value')} in "
                     f"{verdicts.plural(len(verdicts.overflow_tensors(report)), 'tensor')} "
                     f"{'overflows' if verdicts.overflow_count(report) == 1 else 'overflow'} when cast to {dtype}"
                     + (f" (max |x| {top:.4g}, worst {layer})" if top is not None else ""))
    overflow_hint = (advice(report) or f"serve it in bf16 or fp32 instead of {dtype}, or rescale/clamp those weights "
                     "before casting")
    if others:
        said = ", ".join(f"{n} {f}" for f, n in others.items())
        loads_as = advice(report)  # weights above fp16's ceiling because config.json loads them as fp16
        # (overflow too: OverflowRiskError, a NonFiniteWeightsError, so that the message says both)
        raise (OverflowRiskError if overflow else NonFiniteWeightsError)(
            f"{report.target}: unhealthy weights ({said} tensor(s)){where}; finite, but the model will not "
            "generate sensibly" + (f"; and {overflow_said}" if overflow else ""),
            hint + (f"; or {loads_as}" if loads_as else ""),
            report=report,
        )
    raise OverflowRiskError(f"{report.target}: {overflow_said}", overflow_hint, report=report)


def repair(
    target: PathLike,
    donors: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    scope: str = "tensor",
    dry_run: bool = False,
    *,
    progress: ProgressCallback | None = None,
    on_phase: Callable[..., Any] | None = None,
    hash_all: bool = False,
    allow_diverged: bool = False,
    allow_cast: bool = False,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_abs: float | None = None,
    outlier_factor: float | None = None,
) -> RepairResult:
    """Restore ``target``'s bad tensors from ``donors`` into the new checkpoint ``out``; the source is untouched.

    Args:
        target: the checkpoint to repair (file or folder).
        donors: earlier checkpoints, tried in order; ``"auto"``: the run's healthy checkpoints before it.
        out: a new folder (or file, for a single-file target); must not exist.
        scope: ``"tensor"`` (only the bad tensors) or ``"layer"`` (every tensor of a bad layer).
        dry_run: plan only; write nothing.
        progress, on_phase: progress callbacks.
        hash_all: record every written file's sha256 in the proof (patched files always are).
        allow_diverged: repair a diverged checkpoint anyway (refused by default: resume instead); one that
            would stay diverged by growth once its bad tensors are restored is refused all the same.
        allow_cast: take a donor tensor of another float dtype (F64/F32/F16/BF16: an fp32 master copy
            for a bf16 checkpoint), rounded exactly as torch's ``tensor.to(dtype)`` rounds (nearest,
            ties to even, subnormals kept); a donor with a value that would not be finite in the
            target's dtype is passed over. The proof records each ``donor_dtype`` and ``allow_cast``.
        only, exclude: globs on the full tensor name, as for :func:`scan` (``exclude=["optimizer_states.*"]``):
            only the tensors some ``only`` pattern names (all when none) and no ``exclude`` pattern names
            are judged and restored, in the target, in every donor (``"auto"`` included) and in the
            verification scan. The others are carried over byte-identical, NaN/Inf and all, and counted in
            the plan and proof (``"excluded"``) and a plan note. An empty pattern raises ``ValueError``.
        max_abs, outlier_factor: the health thresholds, as for :func:`scan`: the target's bad tensors, each
            donor's copy and the verification scan are judged by them (a tensor ``scan(max_abs=1e4)`` calls
            exploded is restored, and no donor copy above 1e4 is taken). The plan and proof record them
            (``"health_limits"``). A value that is not positive and finite raises ``ValueError``.

    Returns:
        A ``RepairResult``: ``ok`` (written and verified healthy, judged as :func:`scan` judges it in the
        target's place: within its run), the plan, written files, the proof path.

    Raises:
        UnrestorableError: some tensor has no healthy donor (nothing written).
        RepairRefusedError: a diverged target (even with ``allow_diverged`` when it is diverged by growth, which
            no tensor restored undoes), a run folder, an unreadable target (or a selection that leaves none of
            its tensors).
        OutputExistsError: ``out`` exists. RepairFailedError: writing or verification failed
            (nothing is left at ``out``).

    Example:
        >>> nandoctor.repair("output/checkpoint-300", "auto", "output/repaired-checkpoint-300").ok
    """
    from nandoctor.restore import repair as _repair

    require_path(target, "repair", "target")
    for donor in [donors] if isinstance(donors, (str, os.PathLike)) else donors if isinstance(donors, Sequence) else [donors]:
        require_path(donor, "repair", "each donor (or \"auto\")")
    if out is not None:
        require_path(out, "repair", "out")
    return _repair(target, donors, out, scope, dry_run, progress=progress, on_phase=on_phase, hash_all=hash_all,
                   allow_diverged=allow_diverged, allow_cast=allow_cast, limits=health_limits(max_abs, outlier_factor),
                   selection=selection(only, exclude))


def scan_state_dict(
    state_dict: Mapping[str, Any], *, target_dtype: str | None = None, name: str = "<state_dict>"
) -> ScanReport:
    """Scan a mapping of names to live tensors (``model.state_dict()``), each on its own device.

    Args:
        state_dict: names → ``torch.Tensor`` (GPU tensors are checked on the GPU, no copy to the host).
        target_dtype: as for :func:`scan`, but None counts nothing (live tensors have no config.json).
        name: what the report calls the target.

    Returns:
        A :class:`ScanReport` with the same findings as a file scan.

    Example:
        >>> nandoctor.scan_state_dict(model.state_dict()).ok
    """
    from nandoctor.live import scan_tensors

    if not isinstance(state_dict, Mapping):
        instead = ("for a module use nandoctor.scan_module(module)" if hasattr(state_dict, "named_parameters")
                   else "for a checkpoint on disk use nandoctor.scan(path)")
        raise TypeError(f"nandoctor.scan_state_dict takes a mapping of names to tensors, not "
                        f"{type(state_dict).__name__}: {instead}")
    return scan_tensors(state_dict, target=name, target_dtype=_explicit(target_dtype))


def scan_module(module: Any, *, target_dtype: str | None = None) -> ScanReport:
    """Scan a ``torch.nn.Module``'s parameters and buffers where they live (tied weights once).

    Args:
        module: the model.
        target_dtype: as for :func:`scan`, but None counts nothing (live tensors have no config.json).

    Returns:
        A :class:`ScanReport`.

    Example:
        >>> nandoctor.scan_module(model).ok
    """
    from nandoctor.live import scan_tensors

    if not (hasattr(module, "named_parameters") and hasattr(module, "named_buffers")):
        instead = ("for a checkpoint on disk use nandoctor.scan(path)" if isinstance(module, (str, os.PathLike))
                   else "for a state dict use nandoctor.scan_state_dict(state_dict)")
        raise TypeError(f"nandoctor.scan_module takes a torch.nn.Module, not {type(module).__name__}: {instead}")
    named = list(module.named_parameters()) + list(module.named_buffers())
    return scan_tensors(named, target=f"<{type(module).__name__}>", target_dtype=_explicit(target_dtype))


def assert_finite(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    fail_on: Iterable[str] | str | None = None,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> ScanReport:
    """Scan ``path`` and raise unless it passes the gate; returns the report otherwise.

    Args:
        path: as for :func:`scan`; for a run folder the row that decides its exit code is checked, as
            ``nandoctor scan`` does (the final model, a Lightning run's ``last.ckpt``, else the newest checkpoint).
        device, target_dtype: as for :func:`scan` (by default config.json's dtype is checked, as ``scan`` does).
        fail_on: the findings that fail: any of ``nonfinite``, ``exploded``, ``outlier``, ``zeroed``,
            ``overflow`` (default: all but ``zeroed``). ``"overflow"`` alone needs ``target_dtype``.
        only, exclude: as for :func:`scan`: a serving gate of a training checkpoint checks the weights alone with
            ``exclude=["optimizer.*"]`` (its optimizer state matters to a resume, not to inference; the error of a
            NaN in optimizer state alone names the globs for its layout).

    Returns:
        The :class:`ScanReport` when it passes.

    Raises:
        NonFiniteWeightsError: NaN/Inf, exploded, outlier or zeroed weights (bad layer ranges and the
            ``nandoctor repair`` command in the message).
        DivergedError: (a subclass) the checkpoint is diverged (most weights broken, or grown far past its
            run's first healthy checkpoint): the DIVERGED reason, and a hint that is not a repair.
        OverflowRiskError: (a subclass) values overflow ``target_dtype`` (or the dtype config.json loads them
            in: the hint says what to set there).
        UnreadableCheckpointError: some part could not be read, so nothing can be promised.
        ValueError: ``fail_on`` names no valid finding, or ``overflow`` alone without ``target_dtype``.

    Example:
        >>> nandoctor.assert_finite("ckpt/")   # before model = AutoModel.from_pretrained("ckpt/")
    """
    require_path(path, "assert_finite")
    # (parsed once: an iterator given as fail_on is read once, then the set serves every use below)
    fail_on = None if fail_on is None else verdicts.parse_fail_on(fail_on)
    require_some_target(path, verdicts.parse_fail_on(fail_on), _check_target(target_dtype))
    resolved, _ = hubcache.resolve(path)
    if runs.is_run_folder(resolved):
        run = scan_run(resolved, device=device, target_dtype=target_dtype, only=only, exclude=exclude)
        decider = run.decider(verdicts.parse_fail_on(fail_on))  # the final model, last.ckpt or the newest
        if decider is None or decider.report is None or decider.status == runs.INCOMPLETE:
            raise UnreadableCheckpointError(
                str(resolved),
                f"{decider.name if decider else 'the newest checkpoint'} of this run could not be scanned"
                + (f" ({'; '.join(decider.incomplete)})" if decider else " (none found)"),
                "wait for the save to finish, or delete the half-written checkpoint",
            )
        healthy = run.last_healthy_under(verdicts.parse_fail_on(fail_on))
        return check(decider.report, fail_on, resume_from=healthy.path if healthy is not None else "")
    return check(scan(path, device=device, target_dtype=target_dtype, only=only, exclude=exclude), fail_on)
