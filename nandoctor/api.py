"""The Python API behind ``nandoctor.scan`` / ``scan_run`` / ``assert_finite`` (docs/api.md).

Paths go through one resolver: a local path as given, else a repo id found in
the local Hugging Face / ModelScope cache. Run folders (``checkpoint-N``
inside) are scanned as a timeline by :func:`scan_run`; :func:`scan` takes one
checkpoint. The gate rules (what fails, exit codes) live in ``gate.py``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path

from nandoctor import gate, hubcache, runs
from nandoctor.errors import (
    NonFiniteWeightsError,
    OverflowRiskError,
    UnreadableCheckpointError,
    UnsupportedFormatError,
)
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport
from nandoctor.runs import RunReport

PathLike = str | os.PathLike[str]
TARGET_DTYPES = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")
ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


def resolve(path: PathLike) -> tuple[Path, hubcache.CacheHit | None]:
    """A local path as given, else the cached snapshot of a repo id (never downloads)."""
    return hubcache.resolve(path)


def _check_target(target_dtype: str | None) -> str | None:
    if target_dtype is None:
        return None
    from nandoctor.kernels.targets import target

    return target(target_dtype).name  # ValueError lists the choices


def _with_cache_note(report: ScanReport, original: PathLike, hit: hubcache.CacheHit | None) -> ScanReport:
    if hit is None:
        return report
    rev = f" (revision {hit.revision})" if hit.revision else ""
    note = f"{os.fspath(original)} resolved to the {hit.cache} cache: {hit.path}{rev}"
    return dataclasses.replace(report, notes=(note, *report.notes))


def scan(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
) -> ScanReport:
    """Scan one checkpoint (file, folder, or cached repo id) for NaN/Inf; see docs/api.md."""
    from nandoctor.engine import scan as engine_scan

    target = _check_target(target_dtype)
    resolved, hit = resolve(path)
    if runs.is_run_folder(resolved):
        raise UnsupportedFormatError(
            f"{resolved}: a training run folder (checkpoint-N folders inside), not one checkpoint",
            "use nandoctor.scan_run() for the timeline of the run, or scan one of its checkpoints",
        )
    kwargs = {"target_dtype": target} if target else {}
    report = engine_scan(resolved, device=device, progress=progress, both_formats=both_formats, **kwargs)
    return _with_cache_note(report, path, hit)


def scan_run(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
) -> RunReport:
    """Scan every ``checkpoint-N`` of a training run folder, oldest first; see docs/api.md."""
    target = _check_target(target_dtype)
    resolved, _ = resolve(path)
    if not runs.is_run_folder(resolved):
        raise UnsupportedFormatError(
            f"{resolved}: not a training run folder (no checkpoint-N folders inside, or weights at the top)",
            "use nandoctor.scan() for a single checkpoint",
        )
    return runs.scan_run(resolved, device=device, target_dtype=target, progress=progress, both_formats=both_formats)


def repair_command(report: ScanReport) -> str:
    """The ``nandoctor repair`` line that fixes ``report``'s checkpoint."""
    return repair_command_for(report.target)


def repair_command_for(target: str) -> str:
    """The ``nandoctor repair`` line for the checkpoint at ``target``, quoted for a POSIX shell."""
    target = target.rstrip("/") or target
    in_run = runs.step_of(Path(target)) is not None
    donor = "auto" if in_run else "<earlier clean checkpoint>"  # placeholders: for the user to fill in
    if hubcache.is_snapshot(target):  # never suggest writing into the cache: a folder here, named after the model
        out = shlex.quote(Path(os.path.abspath(target)).parent.parent.name.split("--")[-1] + "-repaired")
    else:
        out = shlex.quote(f"{target}-repaired") if Path(target).is_dir() else "<new folder>"
    return f"nandoctor repair {shlex.quote(target)} --from {donor} --out {out}"


def check(report: ScanReport, fail_on: Iterable[str] | str | None = None) -> ScanReport:
    """Raise as :func:`assert_finite` does when ``report`` fails the gate; else return it."""
    chosen = gate.parse_fail_on(fail_on)
    code = gate.exit_code(report, chosen)
    if code == 0:
        return report
    if report.errors:
        first = report.errors[0]
        raise UnreadableCheckpointError(
            report.target,
            f"{len(report.errors)} part(s) could not be read (first: {first.path}: {first.message}), "
            "so the checkpoint cannot be called finite",
            first.hint or "run `nandoctor scan` on it for the details",
            report=report,
        )
    ranges = [r.label for r in bad_ranges(report.layers)]
    where = f" in {', '.join(ranges[:6])}" + (" …" if len(ranges) > 6 else "") if ranges else ""
    hint = f"restore them from an earlier clean checkpoint: {repair_command(report)}"
    if gate.NONFINITE in chosen and report.nonfinite:
        raise NonFiniteWeightsError(
            f"{report.target}: {len(report.bad_tensors)} of {len(report.tensors)} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf){where}",
            hint,
            report=report,
        )
    dtype = gate.target_dtype(report)
    layer = gate.worst_overflow_layer(report)
    top = gate.max_abs(report)
    raise OverflowRiskError(
        f"{report.target}: {gate.overflow_count(report):,} finite values in {len(gate.overflow_tensors(report))} "
        f"tensors overflow when cast to {dtype}" + (f" (max |x| {top:.4g}, worst {layer})" if top is not None else ""),
        f"serve it in bf16 or fp32 instead of {dtype}, or rescale/clamp those weights before casting",
        report=report,
    )


def assert_finite(
    path: PathLike,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    fail_on: Iterable[str] | str | None = None,
) -> ScanReport:
    """Scan ``path`` and raise unless every tensor was read and is finite; returns the report otherwise.

    Raises :class:`NonFiniteWeightsError` (bad layer ranges and the ``nandoctor
    repair`` command in the message), :class:`OverflowRiskError` (a subclass,
    with ``target_dtype``) or :class:`UnreadableCheckpointError`. For a run
    folder the newest checkpoint is checked, as ``nandoctor scan`` does. ``fail_on="overflow"``
    alone needs ``target_dtype`` (ValueError otherwise: that gate would pass anything).
    """
    gate.require_target_for_overflow(gate.parse_fail_on(fail_on), target_dtype)
    resolved, _ = resolve(path)
    if runs.is_run_folder(resolved):
        run = scan_run(resolved, device=device, target_dtype=target_dtype)
        newest = run.newest
        if newest is None or newest.report is None or newest.status == runs.INCOMPLETE:
            raise UnreadableCheckpointError(
                str(resolved),
                "the newest checkpoint of this run could not be scanned"
                + (f" ({'; '.join(newest.incomplete)})" if newest else " (none found)"),
                "wait for the save to finish, or delete the half-written checkpoint",
            )
        return check(newest.report, fail_on)
    return check(scan(path, device=device, target_dtype=target_dtype), fail_on)

