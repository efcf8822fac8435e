"""What a worker thread does with one task: a chunk of a large region, or a batch of small regions.

Reads the bytes (a zero-copy mmap view or a reused buffer, sources.py), runs the
kernel over them, and returns plain results that the pipeline merges on its own
thread (pipeline.py); nothing here touches shared state. A chunk that lies in a
torch storage owed a CRC-32 check also gets its CRC-32 computed here, while its
bytes are in cache for the kernel: the scan's one pass pays the check (crcs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from nandoctor.blockfields import gather
from nandoctor.crc import crc32
from nandoctor.dtypes import DTypeSpec
from nandoctor.engine.jobs import RegionJob
from nandoctor.engine.overflow import chunk_overflow
from nandoctor.kernels import NAN, NEGINF, POSINF, ChunkCounts, Kernel, OverflowCounts, fused
from nandoctor.kernels.census import (
    Census,
    LaneInfo,
    observe_chunk,
    observe_whole,
    run_tops,
    tallies,
    to_little,
)
from nandoctor.model import Region
from nandoctor.sources import BufferFor, ChunkSource
from nandoctor.views import element_span, locate

# Regions smaller than this are checked in batches of up to a chunk's bytes per worker task: a checkpoint
# of a million one-element tensors would otherwise pay a thread hand-off each.
SMALL_REGION_BYTES = 64 << 10
BATCH_PARTS = 1024  # small regions per batch at most, besides a chunk's bytes


def batch_bounds(sizes: Sequence[int] | np.ndarray, chunk_bytes: int) -> list[tuple[int, int]]:
    """[first, last) of each batch of small regions (``sizes`` in file order): a batch closes once it holds a
    chunk's bytes or BATCH_PARTS regions. The job path and the columns (small.py) batch alike, so a region
    shares its runs with the same neighbours either way."""
    held = np.cumsum(np.asarray(sizes, dtype=np.int64))
    bounds: list[tuple[int, int]] = []
    first, before = 0, 0
    while first < held.size:
        full = int(np.searchsorted(held, before + chunk_bytes, "left"))  # the region that fills a chunk
        last = min(full + 1, first + BATCH_PARTS, held.size)
        bounds.append((first, last))
        first, before = last, int(held[last - 1])
    return bounds

ChunkFinding = tuple[int, int, int, int, "int | None"]  # (view slot or -1, nan, +inf, -inf, first)


@dataclass(slots=True)
class ChunkResult:
    """What one chunk (or one small region) holds (empty tuples: no list made per clean small region)."""

    findings: Sequence[ChunkFinding] = ()
    overflows: Sequence[tuple[int, OverflowCounts]] = ()
    census: Census | None = None
    crc: int | None = None  # CRC-32 of the part's raw bytes, when the part was claimed for one (Part.crc)

    def then(self, later: ChunkResult) -> ChunkResult:
        """This result followed by the one of the bytes right after it (two chunks scanned in one task);
        ``later.crc`` was continued from this one's, so it is the CRC-32 of both."""
        if self.census is not None and later.census is not None:
            self.census.merge(later.census)
        return ChunkResult([*self.findings, *later.findings], [*self.overflows, *later.overflows],
                           self.census if self.census is not None else later.census, later.crc)

    def apply_to(self, job: RegionJob, length: int) -> None:
        """Add what this part (``length`` bytes of ``job``'s region) holds to the job's tallies and census."""
        for slot, nan, posinf, neginf, first in self.findings:
            (job.unviewed if slot < 0 else job.tallies[slot]).add(nan, posinf, neginf, first)
        for slot, counts in self.overflows:
            job.tallies[slot].add_overflow(counts)
        if self.census is not None:
            if length == job.region.nbytes:  # the whole region in one part: nothing to merge into
                job.census = self.census
            else:
                job.census.merge(self.census)


class Part(NamedTuple):  # a tuple: made once per small tensor, a frozen dataclass costs ~4x as much
    """``length`` bytes at ``absolute`` in the file: ``start`` bytes into ``job``'s region; ``crc``: its
    CRC-32 counts toward a storage's owed check."""

    job: RegionJob
    absolute: int
    length: int
    start: int
    crc: bool = False


class Gap(NamedTuple):
    """Bytes of a storage owed a CRC-32 check that no chunk reads (an integer storage, an unviewed tail):
    read for their CRC-32 alone."""

    absolute: int
    length: int


def gap_crc(source: ChunkSource, gap: Gap, buffers: BufferFor) -> int:
    """One worker task: the CRC-32 of a gap."""
    data = source.read(gap.absolute, gap.length, buffers)
    try:
        return crc32(data, 0)
    finally:
        del data  # an exported buffer would stop the mmap from closing


def chunk_step(region: Region, spec: DTypeSpec, chunk_bytes: int) -> int:
    """The bytes of one chunk of ``region``: ``chunk_bytes`` cut down to whole elements (or quantization
    blocks). The census is chunk by chunk, so every way of cutting a region uses this grid."""
    unit = region.blocks.block_bytes if region.blocks is not None else spec.itemsize
    return max(unit, chunk_bytes - chunk_bytes % unit)


def scan_parts(
    source: ChunkSource, parts: list[Part], kernel: Kernel, buffers: BufferFor, chunk_bytes: int = 0,
) -> list[ChunkResult]:
    """One worker task: some chunks of a large region (``chunk_bytes`` each, see chunk_step), or a batch
    of small regions side by side.

    Adjacent small regions of one dtype, each read whole by one view, are first tested together: one
    pass of the fast check for NaN/Inf and one vectorised census (largest magnitude and zeros of each);
    only a region that holds NaN/Inf, or a value at the high level, is looked at on its own.
    """
    if len(parts) == 1:  # chunks of a large region: the common case, straight through
        return [scan_chunks(source, parts[0], kernel, buffers, chunk_bytes)]
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
    """A run of adjacent small regions in one read; a region that needs more is then read whole (run_census)."""
    first, last = parts[0], parts[-1]
    spec, info = first.job.spec, first.job.info
    assert info is not None  # (fast_checkable regions of a dtype that can hold NaN/Inf)
    data = source.read(first.absolute, last.absolute + last.length - first.absolute, buffers)
    try:
        out = []
        starts = np.fromiter((p.absolute - first.absolute for p in parts), np.int64, len(parts))
        tops, zeros, alone = run_census(data, spec, info, starts, kernel)
        alone_at = set(alone)
        for k, (part, top, zero) in enumerate(zip(parts, tops.tolist(), zeros.tolist())):
            start = int(starts[k])
            piece = data[start : start + part.length]
            crc = crc32(piece, 0) if part.crc else None
            if k in alone_at:
                counts, census = read_whole(piece, spec, info, kernel)
                out.append(ChunkResult(direct_findings(counts, 0), census=census, crc=crc))
            else:
                out.append(ChunkResult(census=Census(exact_max=top if part.length else -1, nonzero=top > 0, zeros=zero), crc=crc))
            del piece
        return out
    finally:
        del data  # an exported buffer would stop the mmap from closing


def run_census(
    data: np.ndarray, spec: DTypeSpec, info: LaneInfo, starts: np.ndarray, kernel: Kernel,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A run of adjacent small regions of one dtype read as one (``starts``: each one's first byte in
    ``data``): (largest magnitude bits, zero lanes) of each, and which must be read whole (read_whole): those
    holding NaN/Inf (one classify of the run says which), those reaching the high level, where outliers can
    be, and those above the exploded ceiling (below the high level with ``--max-abs`` under 2). The others'
    census is exact from these two numbers."""
    lane_bytes = info.lane_bits // 8
    tops, zeros = run_tops(data, info, starts // lane_bytes)
    alone = tops >= min(info.high_bit, info.ceiling_bits + 1)
    if kernel.any_nonfinite(data, spec):
        elements, _ = kernel.classify(data, spec)
        alone[np.searchsorted(starts, elements * spec.bits // 8, "right") - 1] = True
    return tops, zeros, np.flatnonzero(alone).tolist()


def read_whole(data: np.ndarray, spec: DTypeSpec, info: LaneInfo, kernel: Kernel) -> tuple[ChunkCounts, Census]:
    """A small region read whole: its exact counts and its full census (every lane in the histogram)."""
    return kernel.check(data, spec), observe_whole(data, info)


def direct_findings(counts: ChunkCounts, first_element: int) -> list[ChunkFinding]:
    """The findings of the one view that reads a whole chunk (none when it is finite)."""
    if not counts.nonfinite:
        return []
    return [(0, counts.nan, counts.posinf, counts.neginf, first_element + counts.first_bad)]


def scan_chunks(source: ChunkSource, part: Part, kernel: Kernel, buffers: BufferFor, chunk_bytes: int) -> ChunkResult:
    """A part of a large region that may span several chunks, read and scanned one chunk after another:
    each chunk is read from memory once (by its CRC-32 or by the kernel) and then found in cache, while
    the pipeline's thread hands over and merges one task for all of them."""
    step = chunk_step(part.job.region, part.job.spec, chunk_bytes) if chunk_bytes else part.length
    if part.length <= step:
        return scan_chunk(source, part, kernel, buffers)
    result: ChunkResult | None = None
    for offset in range(0, part.length, step):
        piece = Part(part.job, part.absolute + offset, min(step, part.length - offset), part.start + offset, part.crc)
        found = scan_chunk(source, piece, kernel, buffers, (result.crc or 0) if result is not None else 0)
        result = found if result is None else result.then(found)
    assert result is not None
    return result


def scan_chunk(source: ChunkSource, part: Part, kernel: Kernel, buffers: BufferFor, crc_from: int = 0) -> ChunkResult:
    """One chunk; its CRC-32 (when claimed) continued from ``crc_from``, the CRC-32 of the bytes before it."""
    job = part.job
    data = source.read(part.absolute, part.length, buffers)
    # Before the kernel: the CRC is of the raw bytes (not a gathered or swapped copy), and its read
    # brings the chunk into cache, where the kernel then finds it. Where the census reads the raw bytes
    # as they are, the compiled pass gives their segment ORs in the same read (kernels/fused.py), and
    # gives them alone, faster than numpy, for a chunk owing no CRC-32.
    crc, ors = None, None
    if fused.available() and _census_takes_ors(job, kernel):
        if part.crc:
            crc, ors = fused.crc32_ors(data, crc_from)
        else:
            ors = fused.segment_ors(data)
    elif part.crc:
        crc = crc32(data, crc_from)
    fields = job.region.blocks
    if fields is not None:
        # A block-quantized tensor: from here on the chunk is its scale fields' lanes, placed in the
        # region's lane space, so the kernel and the census see a plain fp16/fp32 tensor.
        gathered = gather(data, job.region)
        del data  # the gathered copy does not hold the mapped buffer
        lanes_before = part.start // fields.block_bytes * fields.count
        data = gathered
        part = Part(job, part.absolute, int(data.size), lanes_before * job.spec.lane_bits // 8, part.crc)
    if job.region.byteorder == "big" and job.spec.lane_bits > 8:
        data = to_little(data, job.spec)  # a torch file saved on a big-endian machine: swap a copy
    try:
        overflows = [] if job.threshold is None else chunk_overflow(data, part.start, job, kernel)
        findings, census = _chunk_findings(data, part, kernel, ors)
        return ChunkResult(findings, overflows, census, crc)
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


def _kernel_census(job: RegionJob, kernel: Kernel) -> Any:
    """The kernel's census where a whole-chunk job's counts and census come from it (one read for both), else
    None (only the CPU kernel has one; small regions take the whole-region census)."""
    census = getattr(kernel, "census", None)
    return census if job.info is not None and job.region.nbytes >= SMALL_REGION_BYTES else None


def _census_takes_ors(job: RegionJob, kernel: Kernel) -> bool:
    """Whether the kernel's census reads the chunk's raw bytes (so it can take their segment ORs): not a
    block-quantized tensor's gathered fields, not a big-endian file's swapped copy."""
    return (job.direct and _kernel_census(job, kernel) is not None and job.region.blocks is None
            and not (job.region.byteorder == "big" and job.spec.lane_bits > 8)
            and job.info is not None and tallies(job.spec, job.info))  # (else the kernel's sieve makes its own)


def _chunk_findings(
    data: np.ndarray, part: Part, kernel: Kernel, ors: np.ndarray | None = None
) -> tuple[list[ChunkFinding], Census | None]:
    job, start = part.job, part.start
    first_element = start * 8 // job.spec.bits
    info = job.info
    if job.direct:
        census: Census | None
        kernel_census = _kernel_census(job, kernel)
        if info is not None and kernel_census is not None:
            # ``ors`` where the chunk's CRC-32 pass computed them (only then: see above)
            counts, census = kernel_census(data, job.spec, info, start * 8 // info.lane_bits, ors)
        else:
            counts, census = kernel.check(data, job.spec), _census_of(data, part)
        return direct_findings(counts, first_element), census
    census = _census_of(data, part)
    if not kernel.any_nonfinite(data, job.spec):
        return [], census
    indices, kinds = kernel.classify(data, job.spec)
    indices = indices + first_element
    order = np.argsort(indices, kind="stable")  # (ascending already; sorted so that the spans below hold)
    indices, kinds = indices[order], kinds[order]
    seen = np.zeros(indices.size, dtype=bool)
    findings: list[ChunkFinding] = []
    spanned = np.zeros(indices.size, dtype=bool)  # within the span of a view whose elements cannot be told apart
    for slot, view in enumerate(job.views):
        # Only the bad elements within the view's span: many views of one storage cost their spans,
        # not views × every bad element of the chunk.
        low, high = element_span(view)
        a, b = int(np.searchsorted(indices, low, "left")), int(np.searchsorted(indices, high, "right"))
        if a >= b:
            continue
        if slot in job.refused:
            # (views.unattributable: NaN/Inf in its span are its finding, with no first index; the engine then
            # refuses it by a problem: exact counts it cannot have)
            spanned[a:b] = True
            findings.append((slot, *_kind_counts(kinds[a:b]), None))
            continue
        inside, logical = locate(view, indices[a:b])
        if inside.any():
            seen[a:b] |= inside
            findings.append((slot, *_kind_counts(kinds[a:b][inside]), int(logical[inside].min())))
    unseen = ~(seen | spanned)
    if unseen.any():
        findings.append((-1, *_kind_counts(kinds[unseen]), None))
    return findings, census
