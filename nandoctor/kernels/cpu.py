"""The numpy kernel: bit tests on integer views of the raw bytes, about one read per byte.

numpy has no bf16 or fp8, so every float is tested through its bits, in three
levels, each cheaper than the next and run only where the one before flagged:

1. **Prefilter, 8 MiB blocks**: one OR-reduction per 64 KiB segment of the
   block as uint64 words (a reduceat: the same single read-only pass as plain
   reading). Every non-finite value has all its exponent bits set (for fp8
   e4m3fn the low seven bits, for e8m0 all eight), so if no lane position of
   the block's OR has them all set, the block is clean; if it has, only the
   segments whose own OR has them go on. It can flag a clean segment (the OR
   of a value >= 2.0 and of ordinary small values sets every exponent bit),
   never miss a bad one.
2. **Exact test of the flagged segments, per 8 KiB**: two read-only
   ``maximum.reduceat``, 1 MiB at a time (the second reduction finds it in
   L2). For IEEE lanes an element is non-finite exactly when its
   signed view is >= the exponent mask (positive NaN/+Inf) or its unsigned
   view is >= sign|exponent (negative NaN/-Inf). The per-segment maxima also
   say where the bad values are.
3. **Counting, flagged segments only** (runs of them merged): comparisons
   into scratch masks.

So a clean block costs one pass; a block with an outlier >= 2.0 two more over
L2-resident data; a block with one NaN counts 8 KiB of it; a tensor full of
NaN skips the prefilter after its first bad block and is counted block by block.
A scan with the health census on (``census``) runs none of this for IEEE floats:
the census reads every segment that can hold a NaN/Inf and counts them there.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

from nandoctor.dtypes import DTypeSpec, Family
from nandoctor.kernels import (
    CLEAN,
    NAN,
    NEGINF,
    NO_OVERFLOW,
    POSINF,
    ChunkCounts,
    OverflowCounts,
    counts_of,
    per_element,
)
from nandoctor.kernels.census import (
    BLOCK_BYTES,
    Census,
    LaneInfo,
    Tally,
    observe_block,
    observe_chunk,
    segment_ors,
    tallies,
)
from nandoctor.kernels.targets import (
    checks_overflow,
    first_nonfinite_magnitude,
    magnitude_mask,
)

BlockObserver = Callable[[np.ndarray, "np.ndarray | None", int], None]  # (block, its segment ORs, byte offset)

_UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_SIGNED = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}

DENSE_BYTES = 1 << 20  # flagged runs are counted this much at a time: scratch stays small
SUB_BYTES = 8 << 10  # exact-test granularity inside a flagged block: one reduceat finds them all
PREFILTER_BYTES = 64 << 10  # prefilter granularity within a block (a multiple of SUB_BYTES)
DIRECT_RUNS = 8  # up to this many suspect runs in a block are counted without the exact test first


def _prefilter_bits(spec: DTypeSpec) -> int:
    """Bits every non-finite lane has set (0: no useful prefilter, e.g. FNUZ's NaN is 0x80)."""
    if spec.family is Family.IEEE:
        return spec.exp_mask
    if spec.nan_codes == (0x7F, 0xFF):  # F8_E4M3 (fn): low seven bits all ones
        return 0x7F
    if spec.nan_codes == (0xFF,):  # F8_E8M0
        return 0xFF
    return 0


@functools.cache
def _exact_tests(spec: DTypeSpec) -> tuple[tuple[type, np.ufunc, int], ...]:
    """Read-only reductions that find non-finite lanes exactly: (view dtype, max or min, limit).

    A lane is bad when the reduction of its view reaches the limit (>= for max, <= for min).
    """
    lane = spec.lane_bits
    if spec.family is Family.IEEE:  # positive NaN/+Inf by the signed max, negative ones by the unsigned max
        return ((_SIGNED[lane], np.maximum, spec.exp_mask), (_UNSIGNED[lane], np.maximum, spec.exp_mask | spec.sign_mask))
    codes = spec.nan_codes
    if codes == (0x7F, 0xFF):  # e4m3fn: 0x7F is int8's max, 0xFF uint8's max
        return ((np.int8, np.maximum, 0x7F), (np.uint8, np.maximum, 0xFF))
    if codes == (0xFF,):  # e8m0
        return ((np.uint8, np.maximum, 0xFF),)
    if codes == (0x80,):  # the FNUZ types: 0x80 is int8's min
        return ((np.int8, np.minimum, -128),)
    raise ValueError(f"no exact test for {spec.name}")  # a new dtype must say where its NaNs are


def _exact_any(lanes_u: np.ndarray, spec: DTypeSpec) -> bool:
    """Read-only exact test on unsigned lanes: reductions only, no temporaries."""
    if lanes_u.size == 0:
        return False
    for view, ufunc, limit in _exact_tests(spec):
        value = int(ufunc.reduce(lanes_u.view(view)))
        if (value >= limit) if ufunc is np.maximum else (value <= limit):
            return True
    return False


@functools.lru_cache(maxsize=8)
def _segment_starts(lanes: int, per_segment: int) -> np.ndarray:
    return np.arange(0, lanes, per_segment, dtype=np.intp)


def _flagged_segments(lanes_u: np.ndarray, spec: DTypeSpec, per_segment: int) -> np.ndarray:
    """Bool per segment of ``per_segment`` lanes: does it hold a non-finite lane? One reduceat per test."""
    starts = _segment_starts(lanes_u.size, per_segment)
    flags = np.zeros(starts.size, dtype=bool)
    for view, ufunc, limit in _exact_tests(spec):
        values = ufunc.reduceat(lanes_u.view(view), starts)
        flags |= (values >= limit) if ufunc is np.maximum else (values <= limit)
    return flags


def _bad_mask(lanes_u: np.ndarray, spec: DTypeSpec, out: np.ndarray | None = None,
              scratch: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the non-finite lanes (into ``out`` when given)."""
    if spec.family is Family.IEEE:
        return np.greater_equal(lanes_u & lanes_u.dtype.type(spec.sign_mask - 1), spec.exp_mask, out=out)
    mask = np.equal(lanes_u, spec.nan_codes[0], out=out)
    for code in spec.nan_codes[1:]:
        mask |= np.equal(lanes_u, code, out=scratch)
    return mask


_scratch = threading.local()


def _masks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two bool scratch arrays of ``n`` for this thread, reused across calls.

    Fresh temporaries of this size come from mmap and cost a page fault per
    4 KiB on first touch (expensive in a VM); reused ones cost nothing.
    """
    masks = getattr(_scratch, "masks", None)
    if masks is None or masks[0].size < n:
        masks = _scratch.masks = (np.empty(max(n, DENSE_BYTES), bool), np.empty(max(n, DENSE_BYTES), bool))
    return masks[0][:n], masks[1][:n]


def _gathered(data: np.ndarray, pieces: list[tuple[int, int]], lanes_dtype: type) -> np.ndarray:
    """The byte ranges ``pieces`` of ``data`` side by side, as lanes, in this thread's reused scratch."""
    total = sum(end - start for start, end in pieces)
    buffer = getattr(_scratch, "gather", None)
    if buffer is None or buffer.size < total:
        buffer = _scratch.gather = np.empty(max(total, 2 * DENSE_BYTES), np.uint8)
    at = 0
    for start, end in pieces:
        buffer[at : at + end - start] = data[start:end]
        at += end - start
    return buffer[:total].view(lanes_dtype)


def _dense_count(lanes_u: np.ndarray, spec: DTypeSpec) -> tuple[int, int, int, int]:
    """(nan, +inf, -inf, first bad lane or -1) of a run of lanes (at most a block)."""
    first_mask, second_mask = _masks(lanes_u.size)
    if spec.family is Family.IEEE:
        signed = lanes_u.view(_SIGNED[spec.lane_bits])
        np.greater_equal(signed, spec.exp_mask, out=first_mask)  # positive NaN / +Inf
        n_pos = int(np.count_nonzero(first_mask))
        first = int(np.argmax(first_mask)) if n_pos else -1
        np.greater_equal(lanes_u, spec.exp_mask | spec.sign_mask, out=second_mask)  # negative NaN / -Inf
        n_neg = int(np.count_nonzero(second_mask))
        if n_neg:
            first_neg = int(np.argmax(second_mask))
            first = first_neg if first < 0 else min(first, first_neg)
        posinf = neginf = 0
        if n_pos:
            posinf = int(np.count_nonzero(np.equal(lanes_u, spec.exp_mask, out=first_mask)))
        if n_neg:
            neginf = int(np.count_nonzero(np.equal(lanes_u, spec.exp_mask | spec.sign_mask, out=second_mask)))
        return n_pos + n_neg - posinf - neginf, posinf, neginf, first
    bad = _bad_mask(lanes_u, spec, first_mask, second_mask)
    nan = int(np.count_nonzero(bad))
    return nan, 0, 0, (int(np.argmax(bad)) if nan else -1)


def _word_or(block: np.ndarray, lane_bytes: int) -> tuple[int, int, int] | None:
    """(OR of the block's aligned uint64 words, start, end of that byte range); None when
    lanes straddle word boundaries (an odd data start), where the OR would mix lanes."""
    head = -block.ctypes.data % 8
    if head % lane_bytes:
        return None
    end = head + (block.size - head) // 8 * 8
    if end <= head:
        return 0, 0, 0
    return int(np.bitwise_or.reduce(block[head:end].view(np.uint64))), head, end


def _prefilter_any(block: np.ndarray, ors: np.ndarray | None, lane_bits: int, must: int) -> np.ndarray | None:
    """The prefilter of an 8-byte aligned block from its segment ORs: None when no lane position of
    the OR of its words has all ``must`` bits set (clean); else, per PREFILTER_BYTES segment, whether it
    may hold a non-finite lane (never False for one that does; a ragged tail segment is always True)."""
    if ors is None:
        return None
    if not _fold_hits(int(np.bitwise_or.reduce(ors)), lane_bits, must):
        return None
    lane_mask = np.uint64((1 << lane_bits) - 1)
    need = np.uint64(must)
    hits = np.zeros(-(-block.size // PREFILTER_BYTES), dtype=bool)
    for shift in range(0, 64, lane_bits):
        hits[: ors.size] |= ((ors >> np.uint64(shift)) & lane_mask & need) == need
    hits[ors.size:] = True
    return hits


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) index pairs of the runs of True in ``flags``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flags, [False])).astype(np.int8)))
    return [(int(first), int(last)) for first, last in zip(edges[::2], edges[1::2])]


def _fold_hits(word: int, lane_bits: int, must: int) -> bool:
    """True when some lane position of an OR-ed uint64 word has all ``must`` bits set."""
    mask = (1 << lane_bits) - 1
    return any((word >> shift) & mask & must == must for shift in range(0, 64, lane_bits))


class CpuKernel:
    name = "cpu"
    chunk_bytes = BLOCK_BYTES  # one block a chunk (census.BLOCK_BYTES says why 8 MiB)
    # numpy reductions release the GIL: one thread per core reads at the memory's pace.
    workers = max(1, min(4, os.cpu_count() or 1))

    # -- the sieve ------------------------------------------------------------------------

    def _suspect_ranges(
        self, data: np.ndarray, spec: DTypeSpec, exact: bool = True, observe: BlockObserver | None = None
    ) -> Iterator[tuple[int, int]]:
        """Yield (byte start, byte end) of runs of sub-blocks that hold a non-finite lane, in order.

        ``exact=False`` (for callers that count exactly anyway) may also yield a few prefilter suspects
        unconfirmed: counting a 64 KiB segment costs less than proving it suspect first. ``observe``
        (the health census) is called with every block and its segment ORs, computed once for both."""
        lane_bytes = spec.lane_bits // 8
        unsigned = _UNSIGNED[spec.lane_bits]
        per_segment = SUB_BYTES // lane_bytes
        must = _prefilter_bits(spec)
        previous_bad = False
        for block_start in range(0, data.size, BLOCK_BYTES):
            block = data[block_start : block_start + BLOCK_BYTES]
            aligned = block.ctypes.data % 8 == 0
            ors = segment_ors(block) if aligned and (observe is not None or (must and not previous_bad)) else None
            if observe is not None:
                observe(block, ors if aligned else None, block_start)
            # Right after a bad block (a tensor full of NaN) the prefilter would only fire again:
            # skip it and go straight to the exact test.
            runs = [(0, -(-block.size // SUB_BYTES))]  # the exact test on all of the block
            if must and not previous_bad and aligned:
                # One OR per 64 KiB segment, in the same single pass as one OR of the block (a reduceat
                # reads memory as fast as a reduce): a flagged block then takes the exact test only in
                # the segments that may hold a bad lane. A NaN in every MiB: 15 GB/s a core, not 10.
                suspects = _prefilter_any(block, ors, spec.lane_bits, must)
                if suspects is None and not self._edges_bad(block, 0, block.size // 8 * 8, spec):
                    continue
                if suspects is None:
                    suspects = np.zeros(-(-block.size // PREFILTER_BYTES), dtype=bool)
                if block.size % 8:  # a ragged tail of lanes: its segment takes the exact test too
                    suspects[-1] = True
                scale = PREFILTER_BYTES // SUB_BYTES
                runs = [(first * scale, last * scale) for first, last in _runs(suspects)]
                if not exact and len(runs) <= DIRECT_RUNS:  # a few scattered suspects: counted as they are
                    for first, last in runs:
                        yield block_start + first * SUB_BYTES, block_start + min(block.size, last * SUB_BYTES)
                    continue
            elif must and not previous_bad:  # lanes off 8-byte boundaries: one OR of the aligned words
                words = _word_or(block, lane_bytes)
                if words is not None:
                    word, head, end = words
                    if not _fold_hits(word, spec.lane_bits, must) and not self._edges_bad(block, head, end, spec):
                        continue
            previous_bad = False
            for run_first, run_last in runs:
                # 1 MiB at a time: the second reduction finds the piece still in L2.
                for piece_start in range(run_first * SUB_BYTES, min(block.size, run_last * SUB_BYTES), DENSE_BYTES):
                    piece = block[piece_start : min(piece_start + DENSE_BYTES, run_last * SUB_BYTES)]
                    flags = _flagged_segments(piece.view(unsigned), spec, per_segment)
                    if not flags.any():
                        continue
                    previous_bad = True
                    base = block_start + piece_start
                    # Merge runs of flagged segments: a piece full of NaN is counted in one go.
                    for first, last in _runs(flags):
                        yield base + first * SUB_BYTES, base + min(piece.size, last * SUB_BYTES)

    @staticmethod
    def _edges_bad(block: np.ndarray, head: int, end: int, spec: DTypeSpec) -> bool:
        """The few lanes outside the aligned words (an unpadded header can misalign tensors)."""
        if end <= head:  # no aligned word at all: test the whole (tiny) block
            return _exact_any(block.view(_UNSIGNED[spec.lane_bits]), spec)
        unsigned = _UNSIGNED[spec.lane_bits]
        return _exact_any(block[:head].view(unsigned), spec) or _exact_any(block[end:].view(unsigned), spec)

    # -- the Kernel protocol ---------------------------------------------------------------

    def any_nonfinite(self, data: np.ndarray, spec: DTypeSpec) -> bool:
        if spec.family is Family.FINITE or data.size == 0:
            return False
        return next(iter(self._suspect_ranges(data, spec)), None) is not None

    def count(self, data: np.ndarray, spec: DTypeSpec, observe: BlockObserver | None = None) -> ChunkCounts:
        """Exact counts of a whole chunk; as cheap as the fast pass where the chunk is clean."""
        if spec.family is Family.FINITE or data.size == 0:
            return CLEAN
        lane_bytes = spec.lane_bits // 8
        unsigned = _UNSIGNED[spec.lane_bits]
        nan = posinf = neginf = 0
        first = -1
        pending: list[tuple[int, int]] = []  # (byte start, end) of pieces to count together
        held = 0

        def count_pending() -> None:
            # Scattered suspect pieces (a NaN in every MiB) are counted side by side in one scratch array:
            # one set of numpy calls for all of them, not one per 64 KiB piece.
            nonlocal nan, posinf, neginf, first, held
            if len(pending) == 1:
                start, end = pending[0]
                lanes = data[start:end].view(unsigned)
            else:
                lanes = _gathered(data, pending, unsigned)
            n, p, m, f = _dense_count(lanes, spec)
            nan, posinf, neginf = nan + n, posinf + p, neginf + m
            if first < 0 and f >= 0:  # back from the side-by-side index to the chunk's lane
                for start, end in pending:
                    width = (end - start) // lane_bytes
                    if f < width:
                        first = start // lane_bytes + f
                        break
                    f -= width
            pending.clear()
            held = 0

        for run_start, run_end in self._suspect_ranges(data, spec, exact=False, observe=observe):
            for start in range(run_start, run_end, DENSE_BYTES):
                end = min(run_end, start + DENSE_BYTES)
                pending.append((start, end))
                held += end - start
                if held >= DENSE_BYTES:
                    count_pending()
        if pending:
            count_pending()
        if nan + posinf + neginf == 0:
            return CLEAN
        if spec.lanes_per_element > 1:  # complex: counted per element, not per float half
            return counts_of(*self.classify(data, spec))
        return ChunkCounts(nan, posinf, neginf, first // spec.lanes_per_element)

    check = count  # the sieve counts only where it flagged: no separate fast pass needed

    def census(
        self, data: np.ndarray, spec: DTypeSpec, info: LaneInfo, base_lane: int, ors: np.ndarray | None = None
    ) -> tuple[ChunkCounts, Census]:
        """Exact NaN/Inf counts and the health census of a chunk, from one read of each block.

        For IEEE lanes the census reads every segment that can hold a NaN/Inf exactly anyway (census.tallies):
        it counts them there and the sieve is not run at all. A NaN in every MiB: 401 -> ~290 us a block.
        ``ors``: the chunk's segment ORs from its CRC-32 pass (kernels/fused.py), used by that census; the
        sieve of other lanes computes its own."""
        if tallies(spec, info):
            tally = Tally()
            found = observe_chunk(data, info, base_lane, tally=tally, ors=ors)
            if tally.nan + tally.posinf + tally.neginf == 0:
                return CLEAN, found
            return ChunkCounts(tally.nan, tally.posinf, tally.neginf, tally.first), found
        found = Census()

        def observe(block: np.ndarray, ors: np.ndarray | None, block_start: int) -> None:
            found.merge(observe_block(block, ors, info, base_lane + block_start * 8 // info.lane_bits))

        return self.count(data, spec, observe), found

    def classify(self, data: np.ndarray, spec: DTypeSpec) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.empty(0, np.int64), np.empty(0, np.uint8))
        if spec.family is Family.FINITE or data.size == 0:
            return empty
        lane_bytes = spec.lane_bits // 8
        all_lanes, all_kinds = [], []
        for start, end in self._suspect_ranges(data, spec, exact=False):
            u = data[start:end].view(_UNSIGNED[spec.lane_bits])
            lanes = np.flatnonzero(_bad_mask(u, spec))
            values = u[lanes]
            kinds = np.full(lanes.size, NAN, np.uint8)
            if spec.family is Family.IEEE:
                kinds[values == spec.exp_mask] = POSINF
                kinds[values == spec.exp_mask | spec.sign_mask] = NEGINF
            all_lanes.append(lanes + start // lane_bytes)
            all_kinds.append(kinds)
        if not all_lanes:
            return empty
        elements, kinds = np.concatenate(all_lanes) // spec.lanes_per_element, np.concatenate(all_kinds)
        return per_element(elements, kinds) if spec.lanes_per_element > 1 else (elements, kinds)

    def overflow(self, data: np.ndarray, spec: DTypeSpec, threshold: int) -> OverflowCounts:
        if not checks_overflow(spec) or data.size == 0:
            return NO_OVERFLOW
        lane = spec.lane_bits
        unsigned = data.view(_UNSIGNED[lane])
        limit = first_nonfinite_magnitude(spec)
        step = DENSE_BYTES * 8 // lane  # 1 MiB: both reductions hit L2, scratch stays small
        total, best = 0, -1
        for start in range(0, unsigned.size, step):
            block = unsigned[start : start + step]
            if spec.family is Family.IEEE:
                # Two reductions also give the largest magnitude of each sign: a positive
                # lane's signed value is its magnitude; a negative lane's unsigned value is
                # sign bit + magnitude. No temporary unless the block holds NaN/Inf.
                top_pos = int(block.view(_SIGNED[lane]).max())
                top_neg = int(block.max()) - spec.sign_mask
                top = max(top_pos, top_neg, -1)
                if top < limit:
                    best = max(best, top)
                    if top >= threshold:
                        magnitude = np.bitwise_and(block, spec.sign_mask - 1, out=_lanes_scratch(block))
                        over, _ = _masks(block.size)
                        total += int(np.count_nonzero(np.greater_equal(magnitude, threshold, out=over)))
                    continue
            n, b = _masked_overflow(block, spec, threshold, limit)
            total += n
            best = max(best, b)
        return OverflowCounts(total, best)


def _lanes_scratch(block: np.ndarray) -> np.ndarray:
    """A reused scratch array shaped like ``block`` (see _masks for why)."""
    buffer = getattr(_scratch, "lanes", None)
    if buffer is None or buffer.size < block.nbytes:
        buffer = _scratch.lanes = np.empty(max(block.nbytes, DENSE_BYTES), np.uint8)
    return buffer[: block.nbytes].view(block.dtype)


def _masked_overflow(block: np.ndarray, spec: DTypeSpec, threshold: int, limit: int) -> tuple[int, int]:
    """Overflow count and max finite magnitude of a block that may hold non-finite lanes."""
    magnitude = np.bitwise_and(block, magnitude_mask(spec), out=_lanes_scratch(block))
    nonfinite, scratch = _masks(block.size)
    if spec.family is Family.NAN_CODES:
        _bad_mask(block, spec, nonfinite, scratch)
    else:
        np.greater_equal(magnitude, limit, out=nonfinite)
    if nonfinite.all():
        return 0, -1
    np.putmask(magnitude, nonfinite, 0)  # thresholds are > 0, so a zeroed lane never counts
    return int(np.count_nonzero(np.greater_equal(magnitude, threshold, out=scratch))), int(magnitude.max())
