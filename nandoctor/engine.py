"""The scan engine: layout → readers → kernel → per-tensor counts → report.

The only module that knows both readers and kernels. Every file's bytes are
cut into chunks (zero-copy mmap views when the page cache holds the file,
``pread`` into reused buffers when it does not: see sources.py); one pipeline
feeds the chunks of all files, in file order, to a small thread pool (numpy
releases the GIL) with a bounded number in flight, and merges the results on
this thread. Scanned pages are dropped from the process, so memory stays flat
whatever the checkpoint's size. A file whose size or mtime changes while it is
read is reported, never trusted.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nandoctor import layers, layout
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.errors import FileChangedError, NandoctorError
from nandoctor.kernels import NAN, NEGINF, NO_OVERFLOW, POSINF, Kernel, OverflowCounts, select_kernel
from nandoctor.kernels.targets import TargetSpec, checks_overflow, decode_magnitude, target, threshold_bits
from nandoctor.layout import fingerprint as _fingerprint
from nandoctor.model import Region, ScanProblem, ScanReport, TensorRef, TensorResult, UnviewedBad
from nandoctor.readers import reader_for
from nandoctor.sources import READ_CHUNK_BYTES, BufferFor, ChunkSource, ThreadBuffers, open_source
from nandoctor.views import covers_whole_region, element_span, locate

ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep every core busy
# Regions smaller than this are checked in batches of up to a chunk's bytes (BATCH_PARTS at most) per
# worker task: a checkpoint of a million one-element tensors would otherwise pay a thread hand-off each.
SMALL_REGION_BYTES = 64 << 10
BATCH_PARTS = 1024
_MAX_LISTED_NAMES = 5


@dataclass
class _Tally:
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int | None = None
    overflow: int = 0  # only with a target dtype
    max_bits: int = -1  # largest finite magnitude, as source bits; -1: none seen

    def add_overflow(self, counts: OverflowCounts) -> None:
        self.overflow += counts.overflow
        self.max_bits = max(self.max_bits, counts.max_bits)

    def add(self, nan: int, posinf: int, neginf: int, first: int | None) -> None:
        self.nan += nan
        self.posinf += posinf
        self.neginf += neginf
        if first is not None and (self.first_bad is None or first < self.first_bad):
            self.first_bad = first


@dataclass
class _RegionJob:
    region: Region
    spec: DTypeSpec
    views: list[TensorRef]
    direct: bool  # one view covering the whole region: counts need no attribution
    threshold: int | None = None  # overflow threshold in source magnitude bits (target dtype given)
    tallies: list[_Tally] = field(default_factory=list)
    unviewed: _Tally = field(default_factory=_Tally)


def scan(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
    kernel: Kernel | None = None,
    target_dtype: str | None = None,
) -> ScanReport:
    """Scan the checkpoint at ``path`` (file or folder) and return its report.

    ``target_dtype`` ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2"): also count, per
    floating tensor, the finite values a cast to that dtype would turn into
    Inf/NaN (``TensorResult.overflow``) and the largest finite magnitude
    (``TensorResult.max_abs``). It costs a second pass over flagged blocks only
    when values come near the limit; unknown names raise ValueError.
    """
    started = time.perf_counter()
    cast_to = target(target_dtype) if target_dtype is not None else None
    files = layout.discover(path, both_formats=both_formats)
    kernel = kernel or select_kernel(device)
    problems = list(files.problems)

    refs_by_file: dict[Path, list[TensorRef]] = {}
    reader_notes: list[str] = []
    fingerprints: dict[Path, tuple[int, int]] = {}
    for file in files.files:
        try:
            fingerprints[file] = _fingerprint(file)
            reader = reader_for(file)
            if hasattr(reader, "read"):  # a reader with notes/problems for the report (torch files)
                read = reader.read(file)
                refs_by_file[file] = list(read.refs)
                reader_notes += read.notes
                problems += read.problems
            else:
                refs_by_file[file] = reader.read_refs(file)
        except NandoctorError as exc:
            problems.append(_problem(file, exc))
        except OSError as exc:
            problems.append(ScanProblem(str(file), f"cannot read: {exc.strerror or exc}"))

    problems += _check_indexes(files, refs_by_file)
    duplicate_problems, duplicate_notes = _check_duplicate_names(refs_by_file, files)
    problems += duplicate_problems
    reader_notes += duplicate_notes

    all_refs = [ref for refs in refs_by_file.values() for ref in refs]
    jobs = _plan_jobs(all_refs, cast_to)
    total = sum(job.region.nbytes for job in jobs if job.spec.can_hold_nonfinite)

    jobs_by_file: dict[str, list[_RegionJob]] = {}
    for job in jobs:
        if job.spec.can_hold_nonfinite:
            jobs_by_file.setdefault(job.region.file, []).append(job)
    with ThreadPoolExecutor(max_workers=kernel.workers, thread_name_prefix="nandoctor") as pool:
        pipeline = _Pipeline(kernel, pool, total, progress)
        try:
            for file in refs_by_file:
                pipeline.scan_file(file, jobs_by_file.get(str(file), []), fingerprints[file])
        finally:
            pipeline.drain()  # also after an interrupt: no worker may outlive its file
        done = pipeline.done
        problems += pipeline.problems

    results, unviewed = _results(jobs, all_refs)
    return ScanReport(
        target=str(path),
        files=tuple(str(f) for f in files.files),
        tensors=tuple(results),
        layers=layers.summarize(results),
        errors=tuple(problems),
        unviewed=tuple(unviewed),
        notes=tuple(files.notes) + tuple(reader_notes),
        bytes_scanned=done,
        seconds=time.perf_counter() - started,
        device=kernel.name,
        extra={"target_dtype": cast_to.name} if cast_to else {},
    )


def _problem(file: Path, exc: NandoctorError) -> ScanProblem:
    message = exc.message
    prefix = f"{file}: "
    return ScanProblem(str(file), message[len(prefix):] if message.startswith(prefix) else message, exc.hint)


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED_NAMES])
    more = len(names) - _MAX_LISTED_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _check_indexes(files: layout.CheckpointFiles, refs_by_file: dict[Path, list[TensorRef]]) -> list[ScanProblem]:
    problems = []
    for index in files.indexes:
        folder = index.path.parent
        by_shard: dict[str, list[str]] = {}
        for name, shard in index.weight_map.items():
            by_shard.setdefault(shard, []).append(name)
        for shard, names in sorted(by_shard.items()):
            shard_path = folder / shard
            if shard_path not in refs_by_file:
                continue  # missing or unreadable: already reported
            present = {r.name for r in refs_by_file[shard_path]}
            missing = sorted(set(names) - present)
            if missing:
                problems.append(
                    ScanProblem(
                        str(shard_path),
                        f"{len(missing)} tensors that {index.path.name} maps here are absent: {_names(missing)}",
                        "the index and the shards come from different saves; re-save or re-download",
                    )
                )
            extra = sorted(present - set(names))
            if extra:
                problems.append(
                    ScanProblem(
                        str(shard_path),
                        f"{len(extra)} tensors in this shard are not in {index.path.name}: {_names(extra)}",
                        "loaders will ignore them; re-save the checkpoint or fix the index",
                    )
                )
    return problems


_SHARD_NAME = re.compile(r"-\d+-of-\d+\.")


def _is_shard(file: Path, indexed: set[Path]) -> bool:
    """Part of one model split across files (listed in an index, or named like ``*-00001-of-00004.*``)."""
    return file in indexed or bool(_SHARD_NAME.search(file.name))


def _check_duplicate_names(
    refs_by_file: dict[Path, list[TensorRef]], files: layout.CheckpointFiles
) -> tuple[list[ScanProblem], list[str]]:
    """The same tensor name in two shards of one model is ambiguous (a problem); in two separate
    checkpoints side by side (``epoch=1.ckpt``, ``epoch=2.ckpt``) it is expected (a note)."""
    indexed = {index.path.parent / shard for index in files.indexes for shard in index.weight_map.values()}
    seen: dict[tuple[bool, str], Path] = {}
    problems: list[ScanProblem] = []
    shared: dict[tuple[Path, Path], list[str]] = {}  # separate checkpoints → the names they share
    for file, refs in refs_by_file.items():
        is_safetensors = file.suffix.lower() == ".safetensors"  # --both-formats: each format may hold every name
        for ref in refs:
            key = (is_safetensors, ref.name)
            other = seen.setdefault(key, file)
            if other == file:
                continue
            if _is_shard(file, indexed) and _is_shard(other, indexed):
                problems.append(
                    ScanProblem(str(file), f"tensor {ref.name!r} is also in {other.name}; which one loads is ambiguous")
                )
            else:
                shared.setdefault((other, file), []).append(ref.name)
    notes = [
        f"{a.name} and {b.name} share {len(names):,} tensor name(s) (e.g. {names[0]}); scanned as separate "
        "checkpoints (the report names the file of each bad tensor)"
        for (a, b), names in shared.items()
    ]
    return problems, notes


def _plan_jobs(refs: list[TensorRef], cast_to: TargetSpec | None = None) -> list[_RegionJob]:
    by_region: dict[tuple[str, str], _RegionJob] = {}
    for ref in refs:
        key = (ref.region.file, ref.region.key)
        job = by_region.get(key)
        if job is None:
            job = by_region[key] = _RegionJob(ref.region, DTYPES[ref.region.dtype], [], True)
        job.views.append(ref)
    for job in by_region.values():
        job.direct = len(job.views) == 1 and covers_whole_region(job.views[0], job.spec.bits)
        job.tallies = [_Tally() for _ in job.views]
        if cast_to is not None and checks_overflow(job.spec):
            job.threshold = threshold_bits(job.spec, cast_to)
    return list(by_region.values())


def _chunks(job: _RegionJob, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, length) in bytes within the region, cut on element boundaries."""
    step = max(job.spec.itemsize, chunk_bytes - chunk_bytes % job.spec.itemsize)
    for start in range(0, job.region.nbytes, step):
        yield start, min(step, job.region.nbytes - start)


@dataclass
class _FileScan:
    """One file in flight: its byte source, chunks not yet finished, and whether it failed."""

    file: Path
    source: ChunkSource
    fingerprint: tuple[int, int]
    pending: int = 0
    submitted_all: bool = False
    closed: bool = False
    failure: ScanProblem | None = None


class _Pipeline:
    """Chunks of every file, in file order, through one thread pool; results merged on this thread.

    One pipeline spans all files, so the pool never drains at a shard boundary
    and the next shard's first chunks run while the last ones of this shard
    finish. At most ``workers * IN_FLIGHT_PER_WORKER`` chunks are in flight:
    with the sources' page release, that bounds memory whatever the size.
    """

    def __init__(self, kernel: Kernel, pool: ThreadPoolExecutor, total: int, progress: ProgressCallback | None):
        self.kernel, self.pool, self.total, self.progress = kernel, pool, total, progress
        self.buffers = ThreadBuffers(getattr(kernel, "host_buffer", None))
        self.in_flight: deque[tuple[Future, _FileScan, list[_Part]]] = deque()
        self.limit = kernel.workers * IN_FLIGHT_PER_WORKER
        self.done = 0
        self.problems: list[ScanProblem] = []
        self.opened: list[_FileScan] = []

    def scan_file(self, file: Path, jobs: list[_RegionJob], fingerprint: tuple[int, int]) -> None:
        if not jobs:  # nothing to count (integer tensors only), but it may still have changed since it was read
            if _fingerprint(file) != fingerprint:
                self.problems.append(
                    _problem(file, FileChangedError(str(file), "the file changed while it was being scanned"))
                )
            return
        needed = max(j.region.offset + j.region.nbytes for j in jobs)
        try:
            state = _FileScan(file, open_source(file, needed), fingerprint)
            self.opened.append(state)
        except NandoctorError as exc:
            self.problems.append(_problem(file, exc))
            return
        except OSError as exc:
            self.problems.append(ScanProblem(str(file), f"cannot read: {exc.strerror or exc}"))
            return
        chunk_bytes = self.kernel.chunk_bytes
        if state.source.mode == "read":
            chunk_bytes = max(chunk_bytes, READ_CHUNK_BYTES)
        # In file order: the disk and the page cache read ahead, and released runs stay long.
        batch: list[_Part] = []
        batch_bytes = 0
        for job in sorted(jobs, key=lambda j: j.region.offset):
            if state.failure is not None:
                break
            if job.region.nbytes < SMALL_REGION_BYTES:
                batch.append(_Part(job, job.region.offset, job.region.nbytes, 0))
                batch_bytes += job.region.nbytes
                if batch_bytes >= chunk_bytes or len(batch) >= BATCH_PARTS:
                    self._submit(state, batch)
                    batch, batch_bytes = [], 0
                continue
            for start, length in _chunks(job, chunk_bytes):
                if state.failure is not None:
                    break
                self._submit(state, [_Part(job, job.region.offset + start, length, start)])
        if batch and state.failure is None:
            self._submit(state, batch)
        state.submitted_all = True
        self._maybe_close(state)

    def _submit(self, state: _FileScan, parts: list[_Part]) -> None:
        future = self.pool.submit(_scan_parts, state.source, parts, self.kernel, self.buffers)
        state.pending += 1
        self.in_flight.append((future, state, parts))
        while len(self.in_flight) >= self.limit:
            self._finish_oldest()

    def drain(self) -> None:
        """Finish every chunk in flight; then close what an interruption left open."""
        while self.in_flight:
            self._finish_oldest()
        for state in self.opened:
            if not state.closed:
                state.closed = True
                state.source.close()

    def _finish_oldest(self) -> None:
        future, state, parts = self.in_flight.popleft()
        state.pending -= 1
        try:
            # Tallies are updated here, on one thread, so workers never race on them.
            results = future.result()
        except NandoctorError as exc:
            state.failure = state.failure or _problem(state.file, exc)
        except OSError as exc:
            state.failure = state.failure or ScanProblem(str(state.file), f"read failed: {exc.strerror or exc}")
        else:
            for part, (findings, overflows) in zip(parts, results):
                job = part.job
                for slot, nan, posinf, neginf, first in findings:
                    (job.unviewed if slot < 0 else job.tallies[slot]).add(nan, posinf, neginf, first)
                for slot, counts in overflows:
                    job.tallies[slot].add_overflow(counts)
            first, last = parts[0], parts[-1]
            state.source.release(first.absolute, last.absolute + last.length - first.absolute)
            self.done += sum(part.length for part in parts)
            if self.progress:
                self.progress(self.done, self.total, str(state.file))
        self._maybe_close(state)

    def _maybe_close(self, state: _FileScan) -> None:
        if state.pending or not state.submitted_all or state.closed:
            return
        state.closed = True
        state.source.close()  # every chunk of it has finished: no worker still reads it
        if state.failure is None and _fingerprint(state.file) != state.fingerprint:
            state.failure = _problem(state.file, FileChangedError(str(state.file), "the file changed while it was being scanned"))
        if state.failure is not None:
            self.problems.append(state.failure)


_ChunkFinding = tuple[int, int, int, int, "int | None"]  # (view slot or -1, nan, +inf, -inf, first)


def _kind_counts(kinds: np.ndarray) -> tuple[int, int, int]:
    return (
        int(np.count_nonzero(kinds == NAN)),
        int(np.count_nonzero(kinds == POSINF)),
        int(np.count_nonzero(kinds == NEGINF)),
    )


@dataclass(frozen=True, slots=True)
class _Part:
    """``length`` bytes at ``absolute`` in the file: ``start`` bytes into ``job``'s region."""

    job: _RegionJob
    absolute: int
    length: int
    start: int


def _scan_parts(
    source: ChunkSource, parts: list[_Part], kernel: Kernel, buffers: BufferFor
) -> list[tuple[list[_ChunkFinding], list[tuple[int, OverflowCounts]]]]:
    """One worker task: a chunk of a large region, or a batch of small regions side by side.

    Adjacent small regions of one dtype, each read whole by one view, are first tested together in one
    pass of the fast check; only a run it flags is counted region by region.
    """
    if len(parts) == 1:  # a chunk of a large region: the common case, straight through
        part = parts[0]
        return [_scan_chunk(source, part.absolute, part.length, part.start, part.job, kernel, buffers)]
    results: list[tuple[list[_ChunkFinding], list[tuple[int, OverflowCounts]]]] = []
    i = 0
    while i < len(parts):
        j = i + 1
        if _fast_checkable(parts[i]):
            while j < len(parts) and _fast_checkable(parts[j]) and _adjacent(parts[j - 1], parts[j]):
                j += 1
        if j - i > 1:
            first, last = parts[i], parts[j - 1]
            data = source.read(first.absolute, last.absolute + last.length - first.absolute, buffers)
            try:
                clean = not kernel.any_nonfinite(data, first.job.spec)
            finally:
                del data  # an exported buffer would stop the mmap from closing
            if clean:
                results += [([], [])] * (j - i)
                i = j
                continue
        results += [_scan_chunk(source, p.absolute, p.length, p.start, p.job, kernel, buffers) for p in parts[i:j]]
        i = j
    return results


def _fast_checkable(part: _Part) -> bool:
    """A region read whole by one view, with no overflow pass and no byte swap: one fast check answers it."""
    job = part.job
    return job.direct and job.threshold is None and job.region.byteorder == "little"


def _adjacent(before: _Part, part: _Part) -> bool:
    """The two can share one fast check: the same dtype, and no byte between them."""
    return part.job.spec is before.job.spec and before.absolute + before.length == part.absolute


def _scan_chunk(
    source: ChunkSource, absolute: int, length: int, start: int, job: _RegionJob, kernel: Kernel, buffers: BufferFor
) -> tuple[list[_ChunkFinding], list[tuple[int, OverflowCounts]]]:
    data = source.read(absolute, length, buffers)
    if job.region.byteorder == "big" and job.spec.lane_bits > 8:
        data = _to_little(data, job.spec)  # a torch file saved on a big-endian machine: swap a copy
    try:
        overflows = [] if job.threshold is None else _chunk_overflow(data, start, job, kernel)
        return _chunk_findings(data, start, job, kernel), overflows
    finally:
        del data  # an exported buffer would stop the mmap from closing


def _to_little(data: np.ndarray, spec: DTypeSpec) -> np.ndarray:
    lane = spec.lane_bits // 8  # complex numbers swap each float half on its own
    return data.view(f">u{lane}").astype(f"<u{lane}").view(np.uint8)


def _chunk_findings(data: np.ndarray, start: int, job: _RegionJob, kernel: Kernel) -> list[_ChunkFinding]:
    first_element = start * 8 // job.spec.bits
    if job.direct:
        counts = kernel.check(data, job.spec)  # the fast pass, and counts only where it flagged
        if not counts.nonfinite:
            return []
        return [(0, counts.nan, counts.posinf, counts.neginf, first_element + counts.first_bad)]
    if not kernel.any_nonfinite(data, job.spec):
        return []
    indices, kinds = kernel.classify(data, job.spec)
    indices = indices + first_element
    order = np.argsort(indices, kind="stable")  # (ascending already; sorted so that the spans below hold)
    indices, kinds = indices[order], kinds[order]
    seen = np.zeros(indices.size, dtype=bool)
    findings: list[_ChunkFinding] = []
    for slot, view in enumerate(job.views):
        # Only the bad elements within the view's span: many views of one storage cost their spans,
        # not views × every bad element of the chunk.
        low, high = element_span(view)
        a, b = int(np.searchsorted(indices, low, "left")), int(np.searchsorted(indices, high, "right"))
        if a >= b:
            continue
        inside, logical = locate(view, indices[a:b])
        if inside.any():
            seen[a:b] |= inside
            findings.append((slot, *_kind_counts(kinds[a:b][inside]), int(logical[inside].min())))
    if not seen.all():
        findings.append((-1, *_kind_counts(kinds[~seen]), None))
    return findings


_GATHER_ELEMENTS = 1 << 16  # strided views are gathered in blocks this size: bounded scratch


def _chunk_overflow(data: np.ndarray, start: int, job: _RegionJob, kernel: Kernel) -> list[tuple[int, OverflowCounts]]:
    """Overflow counts of this chunk for each view that sees part of it.

    Only tensors get cast, so bytes no view sees are not counted. A view covering
    the whole region takes the chunk's counts; a contiguous view its slice of
    the chunk; a strided view (transpose, column slice) the elements it sees,
    gathered in small blocks.
    """
    spec, threshold = job.spec, job.threshold
    assert threshold is not None
    itemsize = spec.itemsize
    first = start // itemsize
    count = data.size // itemsize
    whole: OverflowCounts | None = None
    out: list[tuple[int, OverflowCounts]] = []
    for slot, view in enumerate(job.views):
        if job.direct or covers_whole_region(view, spec.bits):
            if whole is None:
                whole = kernel.overflow(data, spec, threshold)
            out.append((slot, whole))
            continue
        lo, hi = element_span(view)
        lo, hi = max(lo, first), min(hi + 1, first + count)
        if lo >= hi:
            continue
        part = data[(lo - first) * itemsize : (hi - first) * itemsize]
        if view.is_contiguous:
            out.append((slot, kernel.overflow(part, spec, threshold)))
            continue
        elements = part.view(np.dtype((np.void, itemsize)))
        counts = NO_OVERFLOW
        for block in range(lo, hi, _GATHER_ELEMENTS):
            indices = np.arange(block, min(block + _GATHER_ELEMENTS, hi), dtype=np.int64)
            inside, _ = locate(view, indices)
            picked = elements[indices[inside] - lo]
            if picked.size:
                counts = counts.merge(kernel.overflow(picked.view(np.uint8), spec, threshold))
        out.append((slot, counts))
    return out


def _max_abs(job: _RegionJob, tally: _Tally) -> float | None:
    if job.threshold is None or tally.max_bits < 0:
        return None
    return decode_magnitude(job.spec, tally.max_bits)


def _results(jobs: list[_RegionJob], order: list[TensorRef]) -> tuple[list[TensorResult], list[UnviewedBad]]:
    by_ref: dict[int, TensorResult] = {}
    unviewed = []
    for job in jobs:
        for view, tally in zip(job.views, job.tallies):
            by_ref[id(view)] = TensorResult(
                view,
                tally.nan,
                tally.posinf,
                tally.neginf,
                tally.first_bad,
                job.spec.can_hold_nonfinite,
                overflow=tally.overflow,
                max_abs=_max_abs(job, tally),
            )
        u = job.unviewed
        if u.nan or u.posinf or u.neginf:
            unviewed.append(UnviewedBad(job.region.file, job.region.key, u.nan, u.posinf, u.neginf))
    return [by_ref[id(ref)] for ref in order], unviewed
