"""The chunk pipeline: every file's regions cut into chunks, checked by a thread pool, merged on one thread.

Chunks are zero-copy mmap views when the page cache holds the file, ``pread``
into reused buffers when it does not (sources.py). One pipeline feeds the
chunks of all files, in file order, to a small pool (numpy releases the GIL)
with a bounded number in flight, and merges results on the calling thread.
Scanned pages are released, so memory stays flat whatever the size. A file
whose size or mtime changes while it is read is reported, never trusted.
The CRC-32 checks a torch file's storages are owed are paid in the same pass:
workers compute each claimed chunk's CRC-32 and a ledger per file combines
them (crcs.py); what a worker does with one task is in work.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nandoctor.checkpoint.opener import problem_of
from nandoctor.engine.crcs import CrcLedger
from nandoctor.engine.jobs import RegionJob
from nandoctor.engine.small import SmallBatch, SmallFound, SmallTensors, scan_small
from nandoctor.engine.work import (
    SMALL_REGION_BYTES,
    ChunkResult,
    Gap,
    Part,
    batch_bounds,
    chunk_step,
    gap_crc,
    scan_parts,
)
from nandoctor.errors import FileChangedError, NandoctorError
from nandoctor.fileidentity import FileIdentity, fingerprint
from nandoctor.kernels import Kernel
from nandoctor.model import OwedCrc, ProgressCallback, ScanProblem
from nandoctor.sources import READ_CHUNK_BYTES, ChunkSource, ThreadBuffers, open_source

IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep every core busy
# Chunks of a large region per worker task: each task costs this thread a hand-off, a result, a merge and
# a release, which on two cores it takes from the workers (2 chunks a task: 4.37 GB .bin 0.25 -> 0.24 s).
CHUNKS_PER_TASK = 2
Task = list[Part] | Gap | SmallBatch  # a chunk or a batch of small regions, a CRC gap, a batch of small columns


@dataclass
class FileScan:
    """One file in flight: its byte source, chunks not yet finished, and whether it failed."""

    file: Path
    source: ChunkSource
    fingerprint: FileIdentity
    pending: int = 0
    submitted_all: bool = False
    closed: bool = False
    failure: ScanProblem | None = None
    crcs: CrcLedger = field(default_factory=lambda: CrcLedger(()))
    chunk_bytes: int = 0  # the chunks its tasks are cut into (chunks_of)


def chunks_of(job: RegionJob, chunk_bytes: int, per_task: int = 1) -> Iterator[tuple[int, int]]:
    """(start, length) in bytes within the region of each task of ``per_task`` chunks (chunk_step: cut on
    element or quantization block boundaries); of a region cut across parts, the tasks of its span (which
    starts and ends on chunk boundaries, so every part reads the very chunks a single scan reads: the
    census is chunk by chunk)."""
    step = chunk_step(job.region, job.spec, chunk_bytes) * per_task
    first, length = job.span_bytes
    for start in range(first, first + length, step):
        yield start, min(step, first + length - start)


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
        self.in_flight: deque[tuple[Future, FileScan, Task]] = deque()
        self.limit = kernel.workers * IN_FLIGHT_PER_WORKER
        self.done = 0
        self.problems: list[ScanProblem] = []
        self.crc_problems: list[ScanProblem] = []  # storages failing their CRC-32: the rest of the file is sound
        self.opened: list[FileScan] = []

    def scan_file(
        self, file: Path, jobs: list[RegionJob], print_: FileIdentity, owed: Sequence[OwedCrc] = (),
        small: SmallTensors | None = None,
    ) -> None:
        """Read ``jobs`` (the file's regions that can hold NaN/Inf) and ``small`` (its small tensors as
        columns, small.py), and pay its ``owed`` CRC-32 checks."""
        smalls = small is not None and small.rows.size > 0
        if not jobs and not owed and not smalls:  # nothing to read, but it may still have changed since it was read
            if fingerprint(file) != print_:
                self.problems.append(problem_of(file, FileChangedError(str(file), "the file changed while it was being scanned")))
            return
        needed = max([j.region.offset + j.region.nbytes for j in jobs] + [o.offset + o.size for o in owed]
                     + ([int((small.offsets + small.nbytes).max())] if small is not None and smalls else []))
        try:
            state = FileScan(file, open_source(file, needed), print_, crcs=CrcLedger(owed))
            self.opened.append(state)
        except (NandoctorError, OSError) as exc:
            self.problems.append(problem_of(file, exc))
            return
        chunk_bytes = self.kernel.chunk_bytes
        if state.source.mode == "read":
            chunk_bytes = max(chunk_bytes, READ_CHUNK_BYTES)
        state.chunk_bytes = chunk_bytes
        # In file order: the disk and the page cache read ahead, and released runs stay long. Small regions
        # go in batches (work.batch_bounds), the columns' batches among the jobs by where they start.
        ordered = sorted(jobs, key=lambda j: j.region.offset)
        closes = {last for _, last in batch_bounds([j.region.nbytes for j in ordered if j.region.nbytes < SMALL_REGION_BYTES], chunk_bytes)}
        columns = deque(small.batches(chunk_bytes) if small is not None and smalls else ())
        batch: list[Part] = []
        smalls_seen = 0
        claim = state.crcs.claim  # (claims are made in file order, as the ledger needs)
        for job in ordered:
            while columns and columns[0].absolute < job.region.offset and state.failure is None:
                self._submit(state, columns.popleft())
            if state.failure is not None:
                break
            if job.region.nbytes < SMALL_REGION_BYTES:
                batch.append(Part(job, job.region.offset, job.region.nbytes, 0, claim(job.region.offset, job.region.nbytes)))
                smalls_seen += 1
                if smalls_seen in closes:
                    self._submit(state, batch)
                    batch = []
                continue
            for start, length in chunks_of(job, chunk_bytes, CHUNKS_PER_TASK):
                if state.failure is not None:
                    break
                at = job.region.offset + start
                self._submit(state, [Part(job, at, length, start, claim(at, length))])
        while columns and state.failure is None:
            self._submit(state, columns.popleft())
        if batch and state.failure is None:
            self._submit(state, batch)
        for at, length in state.crcs.gaps(chunk_bytes):  # owed bytes that no chunk reads
            if state.failure is not None:
                break
            self._submit(state, Gap(at, length))
        state.submitted_all = True
        self._maybe_close(state)

    def _submit(self, state: FileScan, parts: Task) -> None:
        future: Future
        if isinstance(parts, Gap):
            future = self.pool.submit(gap_crc, state.source, parts, self.buffers)
        elif isinstance(parts, SmallBatch):
            future = self.pool.submit(scan_small, state.source, parts, self.kernel, self.buffers)
        else:
            future = self.pool.submit(scan_parts, state.source, parts, self.kernel, self.buffers, state.chunk_bytes)
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
            found = future.result()
        except NandoctorError as exc:
            state.failure = state.failure or problem_of(state.file, exc)
        except OSError as exc:
            state.failure = state.failure or ScanProblem(str(state.file), f"read failed: {exc.strerror or exc}")
        else:
            if isinstance(parts, Gap):
                state.crcs.add(parts.absolute, parts.length, found)
                state.source.release(parts.absolute, parts.length)
            elif isinstance(parts, SmallBatch):
                self._merge_small(state, parts, found)
            else:
                self._merge(state, parts, found)
        self._maybe_close(state)

    def _merge(self, state: FileScan, parts: list[Part], found: list[ChunkResult]) -> None:
        for part, result in zip(parts, found):
            result.apply_to(part.job, part.length)
            if result.crc is not None:
                state.crcs.add(part.absolute, part.length, result.crc)
        head, tail = parts[0], parts[-1]
        self._done(state, head.absolute, tail.absolute + tail.length - head.absolute, sum(part.length for part in parts))

    def _merge_small(self, state: FileScan, batch: SmallBatch, found: SmallFound) -> None:
        batch.small.merge(found)
        self._done(state, batch.absolute, batch.length, batch.nbytes)

    def _done(self, state: FileScan, absolute: int, length: int, nbytes: int) -> None:
        """``length`` bytes from ``absolute`` are read (``nbytes`` of them scanned): release them, count them."""
        state.source.release(absolute, length)
        self.done += nbytes
        if self.progress:
            self.progress(self.done, self.total, str(state.file))

    def _maybe_close(self, state: FileScan) -> None:
        if state.pending or not state.submitted_all or state.closed:
            return
        state.closed = True
        state.source.close()  # every chunk of it has finished: no worker still reads it
        self.crc_problems += state.crcs.problems()  # (before the change check: a write now is caught too)
        if state.failure is None and fingerprint(state.file) != state.fingerprint:
            state.failure = problem_of(state.file, FileChangedError(str(state.file), "the file changed while it was being scanned"))
        if state.failure is not None:
            self.problems.append(state.failure)
