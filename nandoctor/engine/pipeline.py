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

from nandoctor.checkpoint.layout import fingerprint
from nandoctor.checkpoint.opener import problem_of
from nandoctor.engine.crcs import CrcLedger
from nandoctor.engine.jobs import RegionJob
from nandoctor.engine.work import SMALL_REGION_BYTES, ChunkResult, Gap, Part, gap_crc, scan_parts
from nandoctor.errors import FileChangedError, NandoctorError
from nandoctor.kernels import Kernel
from nandoctor.model import OwedCrc, ProgressCallback, ScanProblem
from nandoctor.sources import READ_CHUNK_BYTES, ChunkSource, ThreadBuffers, open_source

IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: enough to keep every core busy
BATCH_PARTS = 1024  # small regions (work.SMALL_REGION_BYTES) per batch at most, besides a chunk's bytes


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
    crcs: CrcLedger = field(default_factory=lambda: CrcLedger(()))


def chunks_of(job: RegionJob, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, length) in bytes within the region, cut on element (or quantization block) boundaries;
    of a region cut across parts, the chunks of its span (which starts and ends on chunk boundaries, so
    every part reads the very chunks a single scan reads: the census is chunk by chunk)."""
    unit = job.region.blocks.block_bytes if job.region.blocks is not None else job.spec.itemsize
    step = max(unit, chunk_bytes - chunk_bytes % unit)
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
        self.in_flight: deque[tuple[Future, FileScan, list[Part] | Gap]] = deque()
        self.limit = kernel.workers * IN_FLIGHT_PER_WORKER
        self.done = 0
        self.problems: list[ScanProblem] = []
        self.crc_problems: list[ScanProblem] = []  # storages failing their CRC-32: the rest of the file is sound
        self.opened: list[FileScan] = []

    def scan_file(self, file: Path, jobs: list[RegionJob], print_: tuple[int, int], owed: Sequence[OwedCrc] = ()) -> None:
        """Read ``jobs`` (the file's regions that can hold NaN/Inf) and pay its ``owed`` CRC-32 checks."""
        if not jobs and not owed:  # nothing to read, but it may still have changed since it was read
            if fingerprint(file) != print_:
                self.problems.append(problem_of(file, FileChangedError(str(file), "the file changed while it was being scanned")))
            return
        needed = max([j.region.offset + j.region.nbytes for j in jobs] + [o.offset + o.size for o in owed])
        try:
            state = FileScan(file, open_source(file, needed), print_, crcs=CrcLedger(owed))
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
        claim = state.crcs.claim  # (claims are made in file order, as the ledger needs)
        for job in sorted(jobs, key=lambda j: j.region.offset):
            if state.failure is not None:
                break
            if job.region.nbytes < SMALL_REGION_BYTES:
                batch.append(Part(job, job.region.offset, job.region.nbytes, 0, claim(job.region.offset, job.region.nbytes)))
                batch_bytes += job.region.nbytes
                if batch_bytes >= chunk_bytes or len(batch) >= BATCH_PARTS:
                    self._submit(state, batch)
                    batch, batch_bytes = [], 0
                continue
            for start, length in chunks_of(job, chunk_bytes):
                if state.failure is not None:
                    break
                at = job.region.offset + start
                self._submit(state, [Part(job, at, length, start, claim(at, length))])
        if batch and state.failure is None:
            self._submit(state, batch)
        for at, length in state.crcs.gaps(chunk_bytes):  # owed bytes that no chunk reads
            if state.failure is not None:
                break
            self._submit(state, Gap(at, length))
        state.submitted_all = True
        self._maybe_close(state)

    def _submit(self, state: FileScan, parts: list[Part] | Gap) -> None:
        future: Future
        if isinstance(parts, Gap):
            future = self.pool.submit(gap_crc, state.source, parts, self.buffers)
        else:
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
            found = future.result()
        except NandoctorError as exc:
            state.failure = state.failure or problem_of(state.file, exc)
        except OSError as exc:
            state.failure = state.failure or ScanProblem(str(state.file), f"read failed: {exc.strerror or exc}")
        else:
            if isinstance(parts, Gap):
                state.crcs.add(parts.absolute, parts.length, found)
                state.source.release(parts.absolute, parts.length)
            else:
                self._merge(state, parts, found)
        self._maybe_close(state)

    def _merge(self, state: FileScan, parts: list[Part], found: list[ChunkResult]) -> None:
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
            if result.crc is not None:
                state.crcs.add(part.absolute, part.length, result.crc)
        head, tail = parts[0], parts[-1]
        state.source.release(head.absolute, tail.absolute + tail.length - head.absolute)
        self.done += sum(part.length for part in parts)
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
