"""The chunk pipeline: every file's regions cut into chunks, checked by a thread pool, merged on one thread.

Chunks are zero-copy mmap views when the page cache holds the file, ``pread``
into reused buffers when it does not (sources.py). One pipeline feeds the
chunks of all files, in file order, to a small pool (numpy releases the GIL)
with a bounded number in flight, and merges results on the calling thread.
Scanned pages are released, so memory stays flat whatever the size. A file
whose size or mtime changes while it is read is reported, never trusted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nandoctor.blockfields import gather
from nandoctor.checkpoint.layout import fingerprint
from nandoctor.checkpoint.opener import problem_of
from nandoctor.engine.jobs import RegionJob
from nandoctor.engine.overflow import chunk_overflow
from nandoctor.errors import FileChangedError, NandoctorError
from nandoctor.kernels import NAN, NEGINF, POSINF, Kernel, OverflowCounts
from nandoctor.kernels.census import (
    Census,
    batch_census,
    observe_chunk,
    observe_whole,
    to_little,
)
from nandoctor.model import ProgressCallback, ScanProblem
from nandoctor.sources import (
    READ_CHUNK_BYTES,
    BufferFor,
    ChunkSource,
    ThreadBuffers,
    open_source,
)
from nandoctor.views import element_span, locate

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep every core busy
# Regions smaller than this are checked in batches of up to a chunk's bytes (BATCH_PARTS at most) per
# worker task: a checkpoint of a million one-element tensors would otherwise pay a thread hand-off each.
SMALL_REGION_BYTES = 64 << 10
BATCH_PARTS = 1024

ChunkFinding = tuple[int, int, int, int, "int | None"]  # (view slot or -1, nan, +inf, -inf, first)


@dataclass(slots=True)
class ChunkResult:
    """What one chunk (or one small region) holds (empty tuples: no list made per clean small region)."""

    findings: Sequence[ChunkFinding] = ()
    overflows: Sequence[tuple[int, OverflowCounts]] = ()
    census: Census | None = None


class Part(NamedTuple):  # a tuple: made once per small tensor, a frozen dataclass costs ~4x as much
    """``length`` bytes at ``absolute`` in the file: ``start`` bytes into ``job``'s region."""

    job: RegionJob
    absolute: int
    length: int
    start: int


@dataclass
class FileScan:
    """One file in flight: its byte source, chunks not yet finished, and whether it failed."""

    file: Path
    source: ChunkSource
    fingerprint: tuple[int, int]
    pending: int = 0
    submitted_all: bool = False
    closed: bool = False
    failure: ScanProblem | None = None


def chunks_of(job: RegionJob, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, length) in bytes within the region, cut on element (or quantization block) boundaries."""
    unit = job.region.blocks.block_bytes if job.region.blocks is not None else job.spec.itemsize
    step = max(unit, chunk_bytes - chunk_bytes % unit)
    for start in range(0, job.region.nbytes, step):
        yield start, min(step, job.region.nbytes - start)


class Pipeline:
    """Chunks of every file, in file order, through one thread pool; results merged on this thread.

    One pipeline spans all files, so the pool never drains at a shard boundary
    and the next shard's first chunks run while the last ones of this shard
    finish. At most ``workers * IN_FLIGHT_PER_WORKER`` chunks are in flight:
    with the sources' page release, that bounds memory whatever the size.
    """

    def __init__(self, kernel: Kernel, pool: ThreadPoolExecutor, total: int, progress: ProgressCallback | None):
        self.kernel, self.pool, self.total, self.progress = kernel, pool, total, progress
        self.buffers = ThreadBuffers(getattr(kernel, "host_buffer", None))
        self.in_flight: deque[tuple[Future, FileScan, list[Part]]] = deque()
        self.limit = kernel.workers * IN_FLIGHT_PER_WORKER
        self.done = 0
        self.problems: list[ScanProblem] = []
        self.opened: list[FileScan] = []

    def scan_file(self, file: Path, jobs: list[RegionJob], print_: tuple[int, int]) -> None:
        if not jobs:  # nothing to count (integer tensors only), but it may still have changed since it was read
            if fingerprint(file) != print_:
                self.problems.append(problem_of(file, FileChangedError(str(file), "the file changed while it was being scanned")))
            return
        needed = max(j.region.offset + j.region.nbytes for j in jobs)
        try:
            state = FileScan(file, open_source(file, needed), print_)
            self.opened.append(state)
        except (NandoctorError, OSError) as exc:
            self.problems.append(problem_of(file, exc))
            return
        chunk_bytes = self.kernel.chunk_bytes
        if state.source.mode == "read":
            chunk_bytes = max(chunk_bytes, READ_CHUNK_BYTES)
        # In file order: the disk and the page cache read ahead, and released runs stay long.
        batch: list[Part] = []
        batch_bytes = 0
        for job in sorted(jobs, key=lambda j: j.region.offset):
            if state.failure is not None:
                break
            if job.region.nbytes < SMALL_REGION_BYTES:
                batch.append(Part(job, job.region.offset, job.region.nbytes, 0))
                batch_bytes += job.region.nbytes
                if batch_bytes >= chunk_bytes or len(batch) >= BATCH_PARTS:
                    self._submit(state, batch)
                    batch, batch_bytes = [], 0
                continue
            for start, length in chunks_of(job, chunk_bytes):
                if state.failure is not None:
                    break
                self._submit(state, [Part(job, job.region.offset + start, length, start)])
        if batch and state.failure is None:
            self._submit(state, batch)
        state.submitted_all = True
        self._maybe_close(state)

    def _submit(self, state: FileScan, parts: list[Part]) -> None:
        future = self.pool.submit(scan_parts, state.source, parts, self.kernel, self.buffers)
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
            found: list[ChunkResult] = future.result()
        except NandoctorError as exc:
            state.failure = state.failure or problem_of(state.file, exc)
        except OSError as exc:
            state.failure = state.failure or ScanProblem(str(state.file), f"read failed: {exc.strerror or exc}")
        else:
            for part, result in zip(parts, found):
                job = part.job
                for slot, nan, posinf, neginf, first in result.findings:
                    (job.unviewed if slot < 0 else job.tallies[slot]).add(nan, posinf, neginf, first)
                for slot, counts in result.overflows:
                    job.tallies[slot].add_overflow(counts)
                if result.census is not None:
                    if part.length == job.region.nbytes:  # the whole region in one part: nothing to merge into
                        job.census = result.census
                    else:
                        job.census.merge(result.census)
            head, tail = parts[0], parts[-1]
            state.source.release(head.absolute, tail.absolute + tail.length - head.absolute)
            self.done += sum(part.length for part in parts)
            if self.progress:
                self.progress(self.done, self.total, str(state.file))
        self._maybe_close(state)

    def _maybe_close(self, state: FileScan) -> None:
        if state.pending or not state.submitted_all or state.closed:
            return
        state.closed = True
        state.source.close()  # every chunk of it has finished: no worker still reads it
        if state.failure is None and fingerprint(state.file) != state.fingerprint:
            state.failure = problem_of(state.file, FileChangedError(str(state.file), "the file changed while it was being scanned"))
        if state.failure is not None:
            self.problems.append(state.failure)


def scan_parts(source: ChunkSource, parts: list[Part], kernel: Kernel, buffers: BufferFor) -> list[ChunkResult]:
    """One worker task: a chunk of a large region, or a batch of small regions side by side.

    Adjacent small regions of one dtype, each read whole by one view, are first tested together: one
    pass of the fast check for NaN/Inf and one vectorised census (largest magnitude and zeros of each);
    only a region that holds NaN/Inf, or a value at the high level, is looked at on its own.
    """
    if len(parts) == 1:  # a chunk of a large region: the common case, straight through
        return [scan_chunk(source, parts[0], kernel, buffers)]
    out: list[ChunkResult] = []
    i = 0
    while i < len(parts):
        j = i + 1
        if parts[i].job.fast_checkable:
            while j < len(parts) and parts[j].job.fast_checkable and _adjacent(parts[j - 1], parts[j]):
                j += 1
        if j - i > 1:
            out += _scan_batch(source, parts[i:j], kernel, buffers)
        else:
            out.append(scan_chunk(source, parts[i], kernel, buffers))
        i = j
    return out


def _adjacent(before: Part, part: Part) -> bool:
    """The two can share one fast check: the same dtype, and no byte between them."""
    return part.job.spec is before.job.spec and before.absolute + before.length == part.absolute


def _scan_batch(source: ChunkSource, parts: list[Part], kernel: Kernel, buffers: BufferFor) -> list[ChunkResult]:
    """A run of adjacent small regions in one read; a region holding NaN/Inf is then scanned alone."""
    first, last = parts[0], parts[-1]
    spec, info = first.job.spec, first.job.info
    data = source.read(first.absolute, last.absolute + last.length - first.absolute, buffers)
    try:
        flagged: set[int] = set()
        if kernel.any_nonfinite(data, spec):
            # Which regions hold the bad elements: one classify of the batch, not a scan of each region.
            elements, _ = kernel.classify(data, spec)
            offsets = np.fromiter((p.absolute - first.absolute for p in parts), np.int64, len(parts))
            flagged = set(np.searchsorted(offsets, elements * spec.bits // 8, "right").tolist())
        if info is None:
            censuses: list[Census | None] = [None] * len(parts)
        else:
            lane_bytes = info.lane_bits // 8
            starts = [(p.absolute - first.absolute) // lane_bytes for p in parts]
            censuses = list(batch_census(data, info, starts))  # (a flagged region's is replaced below)
    finally:
        del data  # an exported buffer would stop the mmap from closing
    return [
        scan_chunk(source, part, kernel, buffers) if k + 1 in flagged else ChunkResult(census=census)
        for k, (part, census) in enumerate(zip(parts, censuses))
    ]


def scan_chunk(source: ChunkSource, part: Part, kernel: Kernel, buffers: BufferFor) -> ChunkResult:
    job = part.job
    data = source.read(part.absolute, part.length, buffers)
    fields = job.region.blocks
    if fields is not None:
        # A block-quantized tensor: from here on the chunk is its scale fields' lanes, placed in the
        # region's lane space, so the kernel and the census see a plain fp16/fp32 tensor.
        gathered = gather(data, job.region)
        del data  # the gathered copy does not hold the mapped buffer
        lanes_before = part.start // fields.block_bytes * fields.count
        data = gathered
        part = Part(job, part.absolute, int(data.size), lanes_before * job.spec.lane_bits // 8)
    if job.region.byteorder == "big" and job.spec.lane_bits > 8:
        data = to_little(data, job.spec)  # a torch file saved on a big-endian machine: swap a copy
    try:
        overflows = [] if job.threshold is None else chunk_overflow(data, part.start, job, kernel)
        findings, census = _chunk_findings(data, part, kernel)
        return ChunkResult(findings, overflows, census)
    finally:
        del data  # an exported buffer would stop the mmap from closing


def _kind_counts(kinds: np.ndarray) -> tuple[int, int, int]:
    return (
        int(np.count_nonzero(kinds == NAN)),
        int(np.count_nonzero(kinds == POSINF)),
        int(np.count_nonzero(kinds == NEGINF)),
    )


def _census_of(data: np.ndarray, part: Part) -> Census | None:
    info = part.job.info
    if info is None:
        return None
    base_lane = part.start * 8 // info.lane_bits
    if part.job.region.nbytes < SMALL_REGION_BYTES:
        return observe_whole(data, info)
    return observe_chunk(data, info, base_lane)


def _chunk_findings(data: np.ndarray, part: Part, kernel: Kernel) -> tuple[list[ChunkFinding], Census | None]:
    job, start = part.job, part.start
    first_element = start * 8 // job.spec.bits
    info = job.info
    if job.direct:
        census: Census | None
        if info is not None and job.region.nbytes >= SMALL_REGION_BYTES and hasattr(kernel, "census"):
            counts, census = kernel.census(data, job.spec, info, start * 8 // info.lane_bits)  # one read for both
        else:
            counts, census = kernel.check(data, job.spec), _census_of(data, part)
        if not counts.nonfinite:
            return [], census
        return [(0, counts.nan, counts.posinf, counts.neginf, first_element + counts.first_bad)], census
    census = _census_of(data, part)
    if not kernel.any_nonfinite(data, job.spec):
        return [], census
    indices, kinds = kernel.classify(data, job.spec)
    indices = indices + first_element
    order = np.argsort(indices, kind="stable")  # (ascending already; sorted so that the spans below hold)
    indices, kinds = indices[order], kinds[order]
    seen = np.zeros(indices.size, dtype=bool)
    findings: list[ChunkFinding] = []
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
    return findings, census
