"""The scan: a checkpoint opened once, its regions read through the chunk pipeline, a judged report.

``open_checkpoint`` (checkpoint/) gives the tensors; ``plan_jobs`` groups them
by region (jobs.py); the pipeline reads every region once (pipeline.py); the
outlier pass reads again the few segments that may hold outliers; the results
become a ``ScanReport`` that verdict.py judges. A torch file's storage CRC-32
checks are left to the pipeline (``defer_crcs``), which pays them in its pass. The only package that knows
both readers and kernels.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import gc
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor import verdict
from nandoctor.blockfields import block_span, elements_per_lane, gather, lanes_nbytes
from nandoctor.checkpoint import weightnorm
from nandoctor.checkpoint.opener import Checkpoint, open_checkpoint, problem_of
from nandoctor.checkpoint.roles import judged_as_weight
from nandoctor.checkpoint.selection import Selection
from nandoctor.engine.chunkcensus import measure_whole
from nandoctor.engine.chunks import Measured, merge_chunks
from nandoctor.engine.experts import with_expert_counts
from nandoctor.engine.intcast import judged_casts
from nandoctor.engine.jobs import OutlierFind, RegionJob, plan_jobs, results
from nandoctor.engine.pipeline import Pipeline, ProgressCallback
from nandoctor.engine.scaled import judged_scales
from nandoctor.engine.small import SmallTensors, plan_small
from nandoctor.engine.viewcensus import census_views
from nandoctor.errors import NandoctorError
from nandoctor.kernels import Kernel, select_kernel
from nandoctor.kernels.census import (
    SAMPLE_RUN,
    SEGMENT_BYTES,
    HealthLimits,
    count_above,
    first_exploded,
    lanes_of,
    sample_histogram,
    to_little,
)
from nandoctor.kernels.targets import TargetSpec, target
from nandoctor.model import RefTable, ScanProblem, ScanReport, TensorRef, TensorResult, TensorResults, UnviewedBad
from nandoctor.sources import BufferFor, ChunkSource, ThreadBuffers, open_source
from nandoctor.views import unattributable

__all__ = ["HealthLimits", "ProgressCallback", "Scanned", "assemble", "finish_jobs", "scan", "scan_jobs"]


def scan(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    kernel: Kernel | None = None,
    target_dtype: str | None = None,
    limits: HealthLimits | None = None,
    selection: Selection | None = None,
) -> ScanReport:
    """Scan the checkpoint at ``path`` (file or folder) and return its judged report.

    ``target_dtype`` ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2"): also count, per
    floating tensor, the finite values a cast to that dtype would turn into
    Inf/NaN (``TensorResult.overflow``). ``limits``: the health census's
    ceiling and outlier factor (``--max-abs``, ``--outlier-factor``). ``selection``: the tensors
    ``--only`` / ``--exclude`` keep (``extra["excluded"]`` counts the others).
    """
    started = time.perf_counter()
    cast_to = target(target_dtype) if target_dtype is not None else None
    limits = limits or HealthLimits()
    with gc_paused():
        checkpoint = open_checkpoint(path, both_formats=both_formats, selection=selection, defer_crcs=True)
        kernel = kernel or select_kernel(device)
        jobs, small = plan_scan(checkpoint, limits, cast_to)
        found = scan_jobs(checkpoint, jobs, kernel, limits, progress, small=small)
        return assemble(str(path), checkpoint, found, kernel.name, time.perf_counter() - started, cast_to, limits)


def scan_as_loaded(path: str | os.PathLike[str], **how: Any) -> ScanReport:
    """:func:`scan` with the target dtype config.json makes ``from_pretrained`` load ``path``'s weights in (where
    they can overflow it), as ``nandoctor scan`` counts with no ``--target-dtype``: what a repair judges its target,
    its donors' run and its output by (an fp16 config over fp32 weights of 3e4 read CLEAN there, and the output
    loaded NaN, an adversarial round found)."""
    from nandoctor.checkpoint.loaddtype import implied_target

    return scan(path, target_dtype=implied_target(Path(path)), **how)


def plan_scan(
    checkpoint: Checkpoint, limits: HealthLimits, cast_to: TargetSpec | None,
) -> tuple[list[RegionJob], dict[Path, SmallTensors]]:
    """The jobs to scan, and the small tensors of each RefTable file scanned as columns instead (small.py;
    not with a target dtype, whose overflow counts the job path makes, nor where CRC-32 checks are owed)."""
    refs: list[TensorRef] = []
    small: dict[Path, SmallTensors] = {}
    for file, file_refs in checkpoint.refs_by_file.items():
        if isinstance(file_refs, RefTable) and cast_to is None and not checkpoint.owed.get(file):
            small[file], large = plan_small(file_refs, limits)
            refs += [file_refs[row] for row in large]
        else:
            refs += file_refs
    return plan_jobs(refs, limits, cast_to), small


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while the scan builds its per-tensor objects.

    They make no cycles, but each collection walks every live object: with a million small
    tensors, collections cost more than all the scan's own work (measured: planning 100,000
    tensors 1.4 s with the collector, 0.26 s without). Reference counting still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Scanned:
    """What scanning some of a checkpoint's jobs found: results of their views (chunks not merged yet);
    ``partial``: the jobs of regions cut across parts, their tallies and census this part's share only."""

    tensors: list[TensorResult]
    unviewed: list[UnviewedBad]
    problems: list[ScanProblem]
    bytes_scanned: int
    partial: list[RegionJob] = field(default_factory=list)
    small: dict[Path, SmallTensors] = field(default_factory=dict)  # files whose small tensors are columns
    notes: list[str] = field(default_factory=list)  # what the scan itself left out (viewcensus)


def scan_jobs(
    checkpoint: Checkpoint, jobs: list[RegionJob], kernel: Kernel, limits: HealthLimits,
    progress: ProgressCallback | None = None, files: set[Path] | None = None,
    small: dict[Path, SmallTensors] | None = None,
) -> Scanned:
    """Read every region of ``jobs`` (all of a checkpoint's, or one part's) and of ``small`` (files' small
    tensors as columns) through the pipeline and the outlier pass; ``files`` (default: every file) are the
    files this scan checks for changes, jobs or not, and whose owed CRC-32 checks (``checkpoint.owed``) it
    pays. Empties ``jobs`` (results() drops each job once its results exist). A job with a ``span`` (a region
    cut across parts) is read, not finished: it comes back in ``partial``, for merge_parts to finish once
    every part's share is in."""
    small = small or {}
    total = sum(job.span_bytes[1] for job in jobs if job.spec.can_hold_nonfinite)
    total += sum(columns.total_bytes for columns in small.values())
    jobs_by_file: dict[str, list[RegionJob]] = {}
    for job in jobs:
        if job.spec.can_hold_nonfinite:
            jobs_by_file.setdefault(job.region.file, []).append(job)
    wanted = set(checkpoint.refs_by_file) if files is None else files
    with ThreadPoolExecutor(max_workers=kernel.workers, thread_name_prefix="nandoctor") as pool:
        pipeline = Pipeline(kernel, pool, total, progress)
        try:
            for file in checkpoint.refs_by_file:
                if file in wanted:
                    pipeline.scan_file(file, jobs_by_file.get(str(file), []), checkpoint.fingerprints[file],
                                       checkpoint.owed.get(file, ()), small.get(file))
        finally:
            pipeline.drain()  # also after an interrupt: no worker may outlive its file
    del jobs_by_file  # results() then holds the only references to the jobs, and frees each as it goes
    partial = [job for job in jobs if job.span is not None]
    whole = [job for job in jobs if job.span is None]
    jobs.clear()
    for columns in small.values():  # the small tensors read whole: finished as the jobs they would have been
        whole += columns.jobs(limits)
    failed = {p.path for p in pipeline.problems}
    # (a storage failing its CRC-32 is no reason to skip the file's outlier pass: not in ``failed``)
    found = finish_jobs(whole, kernel, limits, failed)
    found.problems[:0] = pipeline.crc_problems + pipeline.problems
    found.bytes_scanned, found.partial, found.small = pipeline.done, partial, small
    return found


def finish_jobs(jobs: list[RegionJob], kernel: Kernel, limits: HealthLimits, failed: set[str]) -> Scanned:
    """What is left once every chunk of ``jobs`` is in (of one scan, or merged from parts): the outlier
    pass (not over regions of the ``failed`` files), the census of torch views that do not read their region
    whole and in order (viewcensus.py), the results, the per-expert counts. Empties ``jobs``."""
    problems = _outlier_pass([j for j in jobs if j.region.file not in failed], limits)
    # (a view whose elements cannot be told apart is refused only where its span holds NaN/Inf: else it holds none)
    problems += [dataclasses.replace(problem_of(Path(job.views[slot].file), refusal), tensors=(job.views[slot].name,))
                 for job in jobs for slot in sorted(job.refused)
                 if job.tallies[slot].nonfinite and (refusal := unattributable(job.views[slot])) is not None]
    view_problems, notes = census_views(jobs, limits, failed)
    tensors, unviewed = results(jobs, [view for job in jobs for view in job.views])
    tensors, expert_problems = with_expert_counts(tensors, kernel)
    return Scanned(tensors, unviewed, problems + view_problems + expert_problems, 0, notes=notes)


def assemble(
    target_name: str, checkpoint: Checkpoint, found: Scanned, device: str, seconds: float,
    cast_to: TargetSpec | None, limits: HealthLimits,
) -> ScanReport:
    """The judged report of ``checkpoint`` from what was found in it: tensors in the checkpoint's order,
    chunks of one tensor merged, the checkpoint's own problems first."""
    extra: dict = {"target_dtype": cast_to.name} if cast_to else {}
    if checkpoint.selection is not None:
        extra["excluded"] = {"tensors": checkpoint.excluded, "weights": checkpoint.excluded_weights,
                             **checkpoint.selection.to_json()}
    if checkpoint.files.shard_of is not None:
        extra["shard_of"] = checkpoint.files.shard_of.to_json()
    if limits != HealthLimits():
        extra["health_limits"] = {"max_abs": limits.max_abs, "outlier_factor": limits.outlier_factor}
    loads_as = cast_to.loads_as if cast_to is not None else None
    in_order = _in_order(checkpoint, found, lambda chunks: measure_whole(chunks, limits, loads_as))
    tensors, cast_problems = judged_casts(in_order, checkpoint.cast_to_float, cast_to, limits)
    tensors, scale_notes = judged_scales(tensors, checkpoint.scaled, cast_to, limits)
    zero_directions = weightnorm.zero_slices(tensors)
    if zero_directions:
        extra[verdict.WEIGHT_NORM_ZERO] = zero_directions
    report = ScanReport(
        target=target_name,
        files=tuple(str(f) for f in checkpoint.files.files),
        tensors=tensors,
        layers=(),
        errors=tuple(being_written(checkpoint.problems + found.problems + cast_problems)),
        unviewed=tuple(checkpoint.unviewed + found.unviewed),
        notes=tuple(checkpoint.notes + found.notes + scale_notes),
        bytes_scanned=found.bytes_scanned,
        seconds=seconds,
        device=device,
        extra=extra,
    )
    return verdict.judged(report)


RECENT_WRITE_S = 120  # a file changed this recently may be a save still being written
WATCH_S = 0.2  # how long such a file is watched for growth
# A run scan waits this long in all (a review: a run of 20 such saves waited 20 times); a scan on its own waits once
WATCH_BUDGET_S = 1.0
_watch_left: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("nandoctor_watch_left", default=None)


@contextlib.contextmanager
def watch_budget() -> Iterator[None]:
    """Share one WATCH_BUDGET_S among the scans made inside (a run's checkpoints: checkpoint/runs.py)."""
    token = _watch_left.set([WATCH_BUDGET_S])
    try:
        yield
    finally:
        _watch_left.reset(token)


def being_written(problems: list[ScanProblem]) -> list[ScanProblem]:
    """``problems`` with the hint of each unreadable file that a save is still writing (changed in the last
    RECENT_WRITE_S seconds, and again while watched for WATCH_S) saying so first (a new user's trial: a checkpoint
    being saved was "re-download or re-save this file"). A file that stopped changing keeps its hint: the save
    ended or died, and the advice stands. Costs one short wait, only where a recent file could not be read."""
    now = time.time()
    before: dict[str, tuple[int, int]] = {}
    for problem in problems:
        if problem.kind == verdict.UNREADABLE_KIND and problem.path not in before:
            try:
                found = os.stat(problem.path)
            except (OSError, ValueError):
                continue
            if now - found.st_mtime < RECENT_WRITE_S:
                before[problem.path] = (found.st_size, found.st_mtime_ns)
    left = _watch_left.get()
    if not before or (left is not None and left[0] < WATCH_S):  # (a run of many recent unreadable saves: a few waits)
        return problems
    time.sleep(WATCH_S)
    if left is not None:
        left[0] -= WATCH_S
    growing = set()
    for path, seen in before.items():
        with contextlib.suppress(OSError, ValueError):
            found = os.stat(path)
            if (found.st_size, found.st_mtime_ns) != seen:
                growing.add(path)
    return [dataclasses.replace(p, hint=(
        "a save is still writing it (it changed while nandoctor looked): wait for the save to finish and scan again"
        + (f" (if it stops without finishing: {p.hint})" if p.hint else ""))) if p.path in growing else p
        for p in problems]


def _in_order(checkpoint: Checkpoint, found: Scanned, measure: Callable[[list[TensorResult]], Measured | None]) -> TensorResults:
    """Every tensor's result in the checkpoint's order, chunks of one tensor merged where the first stood (their
    outliers measured on the whole tensor where ``measure`` reads them again); a file's small tensors from their
    columns (no object made for those that have none)."""
    position: dict[int, int] = {}  # id(ref) → its place in the checkpoint, for the refs made as objects
    starts = {}
    at = 0
    for file, refs in checkpoint.refs_by_file.items():
        starts[file] = at
        for i, ref in refs.made() if isinstance(refs, RefTable) else enumerate(refs):
            position[id(ref)] = at + i
        at += len(refs)
    placed = merge_chunks(sorted(((position[id(t.ref)], t) for t in found.tensors), key=itemgetter(0)), measure)
    parts, k = [], 0
    for file, refs in checkpoint.refs_by_file.items():
        start, end = starts[file], starts[file] + len(refs)
        first = k
        while k < len(placed) and placed[k][0] < end:
            k += 1
        columns = found.small.get(file)
        if columns is not None:
            parts.append(columns.results({where - start: t for where, t in placed[first:k]}))
        elif k > first:
            parts.append(TensorResults.of(t for _, t in placed[first:k]))
    return TensorResults.concat(parts) if parts else TensorResults.of(())


def _outlier_pass(jobs: list[RegionJob], limits: HealthLimits) -> list[ScanProblem]:
    """Count the outliers of every region whose high segments reach its own outlier threshold.

    Healthy weights never get here (nothing reaches 2^10 x their bulk); a bit flip costs one 64 KiB read.
    """
    problems = []
    todo: dict[str, list[RegionJob]] = {}
    for job in jobs:
        if job.info is not None and job.high and any(judged_as_weight(v.name, v.role) for v in job.views):
            todo.setdefault(job.region.file, []).append(job)
    buffers = ThreadBuffers(None)
    for file, found in todo.items():
        try:
            source = open_source(Path(file), max(j.region.offset + j.region.nbytes for j in found))
        except (NandoctorError, OSError) as exc:
            problems.append(ScanProblem(file, f"cannot read it again for the outlier count: {exc}"))
            continue
        try:
            for job in found:
                assert job.info is not None
                if job.census.histogram is None:  # a large region: its bulk from a sample, read now
                    job.census.histogram, job.census.sampled = sample_histogram(_heads(job, source, buffers), job.info)
                threshold = job.census.outlier_threshold(job.info, limits, elements_per_lane(job.region.blocks))
                if threshold is not None and any(top >= threshold for _, _, top in job.census.high_segments):
                    job.outliers = _count_outliers(job, threshold, source, buffers)
                elif job.census.exploded and not job.info.nonnegative:
                    job.outliers = _locate_exploded(job, source, buffers)
        except (NandoctorError, OSError) as exc:
            problems.append(ScanProblem(file, f"read failed during the outlier count: {exc}"))
        finally:
            source.close()
    return problems


MAX_SAMPLED_SEGMENTS = 4096  # segments whose first lanes make a large tensor's sample


def _read_lanes(job: RegionJob, source: ChunkSource, buffers: BufferFor, first: int, count: int) -> np.ndarray:
    """Lanes [first, first + count) of a region, little-endian: a block-quantized tensor's are its
    scale fields, gathered from the blocks that hold them."""
    lane_bytes = job.spec.lane_bits // 8
    fields = job.region.blocks
    if fields is None:
        data = source.read(job.region.offset + first * lane_bytes, count * lane_bytes, buffers)
    else:
        block, blocks = block_span(fields, first, count)
        raw = source.read(job.region.offset + block * fields.block_bytes, blocks * fields.block_bytes, buffers)
        skip = (first - block * fields.count) * lane_bytes
        data = gather(raw, job.region)[skip : skip + count * lane_bytes]
        del raw  # an exported buffer would stop the mmap from closing
    if job.region.byteorder == "big" and lane_bytes > 1:
        data = to_little(data, job.spec)
    return data


WHOLE_SAMPLE_BYTES = 1 << 20  # a region this small is its own sample: its bulk from every lane


def _heads(job: RegionJob, source: ChunkSource, buffers: BufferFor) -> list:
    """The first SAMPLE_RUN lanes of (up to MAX_SAMPLED_SEGMENTS evenly spread) 64 KiB segments of a region; a
    region of at most WHOLE_SAMPLE_BYTES whole (one 64 KiB embedding's sample was its padding row, all zero: no
    bulk, so neither outliers nor an fp16 overflow judged; reading it whole costs one read, and only regions that
    reach the high level get here)."""
    lane_bytes = job.spec.lane_bits // 8
    nbytes = lanes_nbytes(job.region)
    if nbytes <= WHOLE_SAMPLE_BYTES:
        data = _read_lanes(job, source, buffers, 0, nbytes // lane_bytes)
        whole = lanes_of(data, job.spec).copy()  # the buffer is reused by the next read
        del data
        return [whole]
    segments = -(-nbytes // SEGMENT_BYTES)
    step = max(1, segments // MAX_SAMPLED_SEGMENTS)
    heads = []
    for segment in range(0, segments, step):
        start = segment * SEGMENT_BYTES
        length = min(SAMPLE_RUN * lane_bytes, nbytes - start)
        data = _read_lanes(job, source, buffers, start // lane_bytes, length // lane_bytes)
        heads.append(lanes_of(data, job.spec).copy())  # the buffer is reused by the next read
        del data
    return heads


def _locate_exploded(job: RegionJob, source: ChunkSource, buffers: BufferFor) -> OutlierFind:
    """Where the first exploded value of a region is, when no outlier count read its high segments (its bulk has
    no outlier threshold above the ceiling: most of a small tensor exploded): the first bad element the tables show
    (a tensor table listed exploded tensors with no "first bad at")."""
    info = job.info
    assert info is not None
    found = OutlierFind()
    for start, lanes, top in sorted(job.census.high_segments):
        if top <= info.ceiling_bits:
            continue
        data = _read_lanes(job, source, buffers, start, lanes)
        at = first_exploded(lanes_of(data, job.spec), info)
        del data  # an exported buffer would stop the mmap from closing
        if at >= 0:
            found.first_exploded_lane = start + at
            break
    return found


def _count_outliers(job: RegionJob, threshold: int, source: ChunkSource, buffers: BufferFor) -> OutlierFind:
    info = job.info
    assert info is not None
    found = OutlierFind(threshold=threshold)
    for start, lanes, top in sorted(job.census.high_segments):
        if top < threshold:
            continue
        data = _read_lanes(job, source, buffers, start, lanes)
        read = lanes_of(data, job.spec)
        count, first, worst_raw = count_above(read, info, threshold)
        if found.first_exploded_lane < 0 and top > info.ceiling_bits and not info.nonnegative:
            at = first_exploded(read, info)  # (where the first exploded value is: no outlier says it now)
            found.first_exploded_lane = start + at if at >= 0 else -1
        del data, read  # an exported buffer would stop the mmap from closing
        if not count:
            continue
        if found.first_lane < 0:
            found.first_lane = start + first
        found.count += count
        magnitude = worst_raw & info.mag_mask
        if magnitude > found.worst_mag:
            found.worst_mag, found.worst_raw = magnitude, worst_raw
    return found
