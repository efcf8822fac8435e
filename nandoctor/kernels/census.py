"""The health census of raw float bytes: largest magnitude, zeros, values above the ceiling, outliers.

It rides the OR prefilter the NaN sieve already computes (one OR per 64 KiB
segment of an 8 MiB block, see cpu.py) instead of adding passes over memory:

- a segment whose OR holds no magnitude bit is all zeros (exact);
- the top exponent bit of a lane is set exactly when its value is at least the
  dtype's *high level* (2.0 for every IEEE float and fp8 e4m3/e5m2); only
  segments where some lane has it (*high* segments) get exact work: their
  largest finite magnitude, the values above the exploded ceiling (when the
  ceiling is at or above the high level, which the default 1e5 is), and their
  maximum kept for the outlier count;
- a sample of every chunk (the first ``SAMPLE_RUN`` lanes of each 64 KiB
  segment: contiguous, so it costs a few cache lines, where a strided sample
  touched every line again) gives the largest sampled magnitude and tells where
  zeros must be counted;
- a tensor that reaches the high level (where an outlier can be) is sampled
  again after the scan, the same lanes, into an exponent histogram, from which
  its *bulk scale* is read: the magnitude of its k-th largest sampled element, k =
  max(9, n/1000) (about the 99.9th percentile, and no 8 spikes can move it);
  a chunk whose sample holds a zero has its zeros counted exactly;
- for IEEE lanes every NaN/Inf has the top exponent bit set, so it lies in a
  high segment, which is read exactly anyway: the census counts NaN/+Inf/-Inf
  there (:class:`Tally`) and the CPU kernel's sieve does not run at all
  (a NaN in every MiB: one gather and one set of passes per block, not two).

An *outlier* is a finite value whose exponent is at least ``log2(factor)``
(default 10) above the bulk scale's, and at least the high level, but not above
the ceiling (there it is exploded, one finding for one value): the
bit-flip / silent-corruption signature. Measured on 1,995 real tensors
(docs/health.md), no trained weight reaches it; real "super weights" (~100x
their tensor's std) stay far below. The few high segments that may hold an
outlier are read again after the tensor's bulk is known (:func:`count_above`).

``max_abs`` is exact whenever the tensor holds a value at or above the high
level, and for small tensors (read whole); below it, for large tensors, it is
the largest sampled magnitude (``max_abs_exact`` is False).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from nandoctor.dtypes import DTypeSpec, Family
from nandoctor.kernels.targets import (
    decode_magnitude,
    first_nonfinite_magnitude,
    magnitude_mask,
)

SAMPLE_RUN = 64  # lanes sampled at the start of every 64 KiB segment of a large chunk (a few cache lines)
SEGMENT_BYTES = 64 << 10  # the prefilter's segment (cpu.PREFILTER_BYTES)
MIN_OUTLIER_ELEMENTS = 16  # below this a tensor has no bulk to stand out from
DEFAULT_MAX_ABS = 1e5  # the exploded ceiling: real weights measured reach 9.2e3 (docs/health.md)
# fp16 holds nothing above 65,504, so 1e5 could never fire there. A weight of 2^14 overflows fp16 as
# soon as it meets an activation of 4 (a normalised hidden state holds such values by chance alone),
# long before a dot product sums it; the largest real weight measured, 9,151, stays 1.8x below it.
# fp8 is left at the default (it can never fire): fp8 weights are stored scaled to fill the format,
# with a scale beside them, so a magnitude at the format's largest value is the design, not a blow-up.
NARROW_MAX_ABS = {"F16": 2.0**14, "C32": 2.0**14}
DEFAULT_OUTLIER_FACTOR = 2.0**10

_UNSIGNED = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_SIGNED = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}
# Mantissa bits per lane, for the exponent histogram.
_MANTISSA = {"F64": 52, "C128": 52, "F32": 23, "C64": 23, "F16": 10, "C32": 10, "BF16": 7,
             "F8_E5M2": 2, "F8_E4M3": 3, "F8_E4M3FNUZ": 3, "F8_E5M2FNUZ": 2, "F8_E8M0": 0}


def default_ceiling(dtype: str) -> float:
    """The exploded ceiling of a dtype when ``--max-abs`` is not given: 1e5, or 2^14 for fp16."""
    return NARROW_MAX_ABS.get(dtype, DEFAULT_MAX_ABS)


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """The census's thresholds: the absolute ceiling (``--max-abs``; None: each dtype's own default,
    :func:`default_ceiling`) and the outlier factor."""

    max_abs: float | None = None
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR

    def __post_init__(self) -> None:
        if self.max_abs is not None and not (self.max_abs > 0 and math.isfinite(self.max_abs)):
            raise ValueError(f"--max-abs must be a positive finite number; got {self.max_abs!r}")
        if not (self.outlier_factor >= 2 and math.isfinite(self.outlier_factor)):
            raise ValueError(f"--outlier-factor must be a finite number >= 2; got {self.outlier_factor!r}")

    def ceiling(self, dtype: str, loads_as: str | None = None) -> float:
        """The exploded ceiling for tensors of ``dtype`` (a safetensors name: ``F16``, ``BF16``, …); ``loads_as``:
        the dtype they are cast to when loaded (``--target-dtype``, or config.json's), whose own ceiling then
        holds too: a bf16 weight of 30000 loaded as fp16 overflows fp16 activations as a stored one does."""
        if self.max_abs is not None:
            return self.max_abs
        own = default_ceiling(dtype)
        return own if loads_as is None else min(own, default_ceiling(loads_as))


@dataclass(frozen=True, slots=True)
class LaneInfo:
    """What the census needs to know about one dtype's lanes."""

    lane_bits: int
    mag_mask: int
    high_bit: int  # the top exponent bit of the magnitude: set exactly when |x| >= the high level
    limit: int  # first magnitude that is not a finite value
    mantissa: int
    nan_codes: tuple[int, ...]  # NAN_CODES dtypes: whole-lane codes that are NaN (FNUZ: 0x80)
    ceiling_bits: int  # magnitudes above this are exploded (limit when nothing finite can be)
    # a variance (roles.is_variance): negative finite values are counted (Census.negatives) and no magnitude is exploded
    nonnegative: bool = False


@functools.cache
def lane_info(spec: DTypeSpec, ceiling: float, nonnegative: bool = False) -> LaneInfo:
    mask = magnitude_mask(spec)
    limit = first_nonfinite_magnitude(spec)
    lo, hi = 0, limit  # the largest magnitude not above the ceiling, by bisection over decoded values
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if decode_magnitude(spec, mid) <= ceiling:
            lo = mid
        else:
            hi = mid - 1
    codes = spec.nan_codes if spec.family is Family.NAN_CODES else ()
    if nonnegative:  # (its size is no finding: an Adam second moment of large gradients is large)
        return LaneInfo(spec.lane_bits, mask, 1 << (mask.bit_length() - 1), limit, _MANTISSA[spec.name], codes, limit,
                        True)
    return LaneInfo(spec.lane_bits, mask, 1 << (mask.bit_length() - 1), limit, _MANTISSA[spec.name], codes, lo)


@dataclass(slots=True)  # slots: one per tensor, a million of them for a million small tensors
class Census:
    """The census of one tensor (or storage), merged chunk by chunk on the engine's thread."""

    high_max: int = -1  # largest finite magnitude among high lanes, -1 when none
    sample_max: int = -1  # largest finite sampled magnitude
    exact_max: int = -1  # largest finite magnitude of parts read whole (small regions)
    nonzero: bool = False
    zeros: int = 0
    exploded: int = 0
    negatives: int = 0  # finite values below zero (-0.0 is none), counted where LaneInfo.nonnegative
    sampled: int = 0
    histogram: np.ndarray | None = None  # sampled finite non-zero magnitudes by exponent
    high_segments: list[tuple[int, int, int]] = field(default_factory=list)  # (lane start, lanes, max)

    def merge(self, other: Census) -> None:
        self.high_max = max(self.high_max, other.high_max)
        self.sample_max = max(self.sample_max, other.sample_max)
        self.exact_max = max(self.exact_max, other.exact_max)
        self.nonzero |= other.nonzero
        self.zeros += other.zeros
        self.exploded += other.exploded
        self.negatives += other.negatives
        self.sampled += other.sampled
        if other.histogram is not None:
            if self.histogram is None:
                self.histogram = other.histogram.copy()
            else:
                self.histogram += other.histogram
        self.high_segments += other.high_segments

    def max_bits(self) -> tuple[int, bool]:
        """(largest finite magnitude seen, whether it is exact); -1 when no finite value was seen.

        Exact when some value reached the high level (every such segment was read exactly) or the
        region was read whole; else the largest sampled magnitude."""
        exact = max(self.high_max, self.exact_max)
        if not self.nonzero:
            return (0, True) if max(exact, self.sample_max) == 0 else (-1, False)
        if exact >= 0:
            return exact, True
        return self.sample_max, False

    def bulk_exponent(self, per_lane: int = 1) -> int | None:
        """The biased exponent of the k-th largest sampled magnitude, k = max(9, n/1000) elements; None without a
        bulk. ``per_lane``: the elements each lane speaks for (a block's scale field: blockfields.elements_per_lane),
        so that k counts elements whatever the type (a trial: one row 2000x the bulk, 8 blocks, was 8 outliers in
        Q4_0 and none in BF16, where its 256 elements set the bulk themselves)."""
        if self.histogram is None or self.sampled < MIN_OUTLIER_ELEMENTS:
            return None
        counts = self.histogram
        # (at least 2 lanes: one flipped scale alone is never its tensor's bulk, however small the tensor)
        k = max(2, math.ceil(bulk_rank(int(counts.sum()) * per_lane) / per_lane))
        reached = np.flatnonzero(np.cumsum(counts[::-1]) >= k)
        return None if reached.size == 0 else counts.size - 1 - int(reached[0])

    def outlier_threshold(self, info: LaneInfo, limits: HealthLimits, per_lane: int = 1) -> int | None:
        """Magnitude bits from which a value is an outlier of this tensor; None when it has no bulk."""
        exponent = self.bulk_exponent(per_lane)
        if exponent is None:
            return None
        step = max(1, round(math.log2(limits.outlier_factor)))
        return max((exponent + step) << info.mantissa, info.high_bit)

    def bulk_scale(self, spec: DTypeSpec, info: LaneInfo, per_lane: int = 1) -> float | None:
        exponent = self.bulk_exponent(per_lane)
        return None if exponent is None else decode_magnitude(spec, exponent << info.mantissa)


@dataclass(slots=True)
class Tally:
    """NaN/+Inf/-Inf counts of a chunk, kept by the census where it sees every lane that can be non-finite
    (:func:`tallies`): the sieve then need not count them a second time."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first: int = -1  # first non-finite lane of the chunk

    def add(self, nan: int, posinf: int, neginf: int, first: int) -> None:
        self.nan, self.posinf, self.neginf = self.nan + nan, self.posinf + posinf, self.neginf + neginf
        if first >= 0 and (self.first < 0 or first < self.first):
            self.first = first


def tallies(spec: DTypeSpec, info: LaneInfo) -> bool:
    """Can the census count this dtype's NaN/Inf itself? For IEEE lanes, yes: every non-finite lane has
    the top exponent bit set, so it lies in a *high* segment, which the census reads exactly anyway; and a
    non-finite magnitude is exactly one at or above ``limit``."""
    return spec.family is Family.IEEE and spec.lanes_per_element == 1 and not info.nan_codes


def _finite_magnitudes(lanes: np.ndarray, info: LaneInfo) -> tuple[np.ndarray, int]:
    """(magnitudes with every non-finite lane set to 0, how many lanes were non-finite)."""
    mag = lanes & lanes.dtype.type(info.mag_mask)
    if info.nan_codes:
        bad = np.isin(lanes, info.nan_codes)
        if info.limit <= info.mag_mask:
            bad |= mag >= info.limit
    else:
        bad = mag >= info.limit
    nonfinite = int(np.count_nonzero(bad))
    if nonfinite:
        mag[bad] = 0
    return mag, nonfinite


def lanes_of(data: np.ndarray, spec: DTypeSpec) -> np.ndarray:
    """Raw little-endian bytes of ``spec`` as unsigned lanes (see :func:`to_little` for big-endian files)."""
    return data.view(_UNSIGNED[spec.lane_bits])


def to_little(data: np.ndarray, spec: DTypeSpec) -> np.ndarray:
    """A little-endian copy of big-endian bytes of ``spec`` (complex numbers swap each float half)."""
    lane = spec.lane_bits // 8
    return data.view(f">u{lane}").astype(f"<u{lane}").view(np.uint8)


def _histogram(mag: np.ndarray, info: LaneInfo) -> np.ndarray:
    exponents = (mag[mag != 0] >> info.mantissa).astype(np.intp)
    return np.bincount(exponents, minlength=(info.mag_mask >> info.mantissa) + 1)


def whole_histogram(lanes: np.ndarray, info: LaneInfo) -> np.ndarray:
    """The exponent histogram of every finite non-zero magnitude of ``lanes`` (no sample: a tensor read again whole)."""
    mag, _ = _finite_magnitudes(lanes, info)
    return _histogram(mag, info)


def observe_whole(data: np.ndarray, info: LaneInfo) -> Census:
    """The census of a small region read whole: every value exact, every lane in the histogram."""
    out = Census()
    lanes = data.view(_UNSIGNED[info.lane_bits])
    if lanes.size == 0:
        return out
    mag, nonfinite = _finite_magnitudes(lanes, info)
    top = int(mag.max()) if nonfinite < lanes.size else -1  # -1: not one finite value
    out.exact_max = top
    out.nonzero = top > 0
    out.zeros = int(lanes.size - np.count_nonzero(mag)) - nonfinite
    if top > info.ceiling_bits:
        out.exploded = int(np.count_nonzero(mag > info.ceiling_bits))
    if top >= info.high_bit:
        out.high_segments.append((0, lanes.size, top))
    out.sampled = int(lanes.size)
    out.histogram = _histogram(mag, info)
    if info.nonnegative:
        out.negatives = negatives(lanes, info)
    return out


def observe_block(
    block: np.ndarray, ors: np.ndarray | None, info: LaneInfo, base_lane: int, histogram: bool = False,
    tally: Tally | None = None, tally_lane: int = 0,
) -> Census:
    """The census of one block of a large region; ``ors`` is the OR of each 64 KiB segment's uint64
    words when the block is 8-byte aligned (the sieve's prefilter), else None (exact on the block).

    ``histogram``: also the exponent histogram of the sample. The scan leaves it out (it costs a
    third of the census on every block) and samples only the tensors that reach the high level,
    where an outlier can be (:func:`sample_histogram`).

    ``tally`` (dtypes where :func:`tallies` holds): also count the block's NaN/+Inf/-Inf into it, first
    lane numbered from ``tally_lane`` (the block's first lane in its chunk)."""
    lanes = block.view(_UNSIGNED[info.lane_bits])
    out = Census()
    if lanes.size == 0:
        return out
    if info.nonnegative:
        out.negatives = negatives(lanes, info)
    per_segment = SEGMENT_BYTES * 8 // info.lane_bits
    segments = -(-lanes.size // per_segment)
    exact_everywhere = ors is None or info.ceiling_bits < info.high_bit
    if exact_everywhere:
        high = np.ones(segments, dtype=bool)
    else:
        assert ors is not None
        unsigned = _UNSIGNED[info.lane_bits]
        # Every lane position's OR, folded into one lane per segment (a view: no shifts, one reduction).
        lane_or = np.bitwise_or.reduce(ors.view(unsigned).reshape(ors.size, 64 // info.lane_bits), axis=1)
        high = np.zeros(segments, dtype=bool)
        high[: ors.size] = ((lane_or & unsigned(info.high_bit)) != 0)[:segments]
        out.nonzero = bool((lane_or & unsigned(info.mag_mask)).any())
        if block.size % 8:  # lanes past the last whole word: their segment takes the exact path
            high[-1] = True
    if high.any():
        edges = np.flatnonzero(np.diff(np.concatenate(([False], high, [False])).astype(np.int8)))
        runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
        whole = lanes.size // per_segment
        if len(runs) > 2 and runs[-1][1] <= whole and 4 * int(np.count_nonzero(high)) <= segments:
            # Scattered high segments (a NaN in every MiB): gathered into one array and measured with one
            # set of calls, instead of a set per run; each call costs about what 64 KiB of work does.
            picked = np.flatnonzero(high)
            gathered = lanes[: whole * per_segment].reshape(whole, per_segment)[picked]
            _observe_high(out, gathered.reshape(-1), picked * per_segment, per_segment, lanes.size, info, base_lane,
                          tally, tally_lane)
        else:
            # Runs of high segments at once: one temporary and one reduction per run, not per segment.
            for first, last in runs:
                run = lanes[first * per_segment : last * per_segment]
                starts = np.arange(first * per_segment, last * per_segment, per_segment)
                _observe_high(out, run, starts, per_segment, lanes.size, info, base_lane, tally, tally_lane)
    sample = _sample(lanes, per_segment)
    smag, sample_nonfinite = _finite_magnitudes(sample, info)
    out.sample_max = int(smag.max()) if sample_nonfinite < sample.size else -1
    if histogram:
        out.sampled = int(sample.size)
        out.histogram = _histogram(smag, info)
    if not out.nonzero or np.count_nonzero(smag) < smag.size - sample_nonfinite:
        # All zeros (FNUZ's NaN 0x80 has no magnitude bit either), or the sample holds a zero: count exactly.
        mag, nonfinite = _finite_magnitudes(lanes, info)
        out.zeros = int(lanes.size - np.count_nonzero(mag)) - nonfinite
    return out


def _observe_high(
    out: Census, run: np.ndarray, starts: np.ndarray, per_segment: int, block_lanes: int, info: LaneInfo,
    base_lane: int, tally: Tally | None = None, tally_lane: int = 0,
) -> None:
    """Add the census of high segments laid side by side in ``run`` (each ``per_segment`` lanes, the last
    maybe fewer), which start at lanes ``starts`` of their block of ``block_lanes`` lanes; with ``tally``,
    count their NaN/+Inf/-Inf too (the caller's promise: :func:`tallies` holds)."""
    segment_at = np.arange(0, run.size, per_segment)
    mag: np.ndarray | None  # finite magnitudes (non-finite lanes zeroed or absent), None once overwritten
    nonfinite = 0
    if tally is None:
        mag, _ = _finite_magnitudes(run, info)
        tops = np.maximum.reduceat(mag, segment_at)
    else:
        mag = run & run.dtype.type(info.mag_mask)
        tops = np.maximum.reduceat(mag, segment_at)
        if int(tops.max()) >= info.limit:  # NaN/Inf here: count them, and take them out of the maxima
            bad = mag >= info.limit
            nonfinite = int(np.count_nonzero(bad))
            at = int(np.argmax(bad))
            posinf = int(np.count_nonzero(run == info.limit))
            neginf = int(np.count_nonzero(run == (info.limit | (info.mag_mask + 1))))
            first = tally_lane + int(starts[at // per_segment]) + at % per_segment
            tally.add(nonfinite - posinf - neginf, posinf, neginf, first)
            # The largest finite magnitude of each segment without a masked copy: shifted down by ``limit``
            # (wrapping), finite magnitudes land above every non-finite one, in the same order.
            lane = run.dtype.type
            shifted = np.maximum.reduceat(np.subtract(mag, lane(info.limit), out=mag), segment_at)
            finite_top = (shifted + lane(info.limit)).astype(np.int64)  # (back, wrapping again; < 2^63)
            tops = np.where(shifted >= lane((1 << info.lane_bits) - info.limit), finite_top, -1)
            mag = None
    if tops.max() <= 0:
        return
    out.nonzero = True
    for k in np.flatnonzero(tops >= info.high_bit).tolist():
        start = int(starts[k])
        out.high_segments.append((base_lane + start, min(per_segment, block_lanes - start), int(tops[k])))
        out.high_max = max(out.high_max, int(tops[k]))
    if tops.max() > info.ceiling_bits:
        if mag is None:  # NaN/Inf beside values above the ceiling: rare enough to mask again (NaN/Inf zeroed)
            mag, nonfinite = _finite_magnitudes(run, info)[0], 0
        out.exploded += int(np.count_nonzero(mag > info.ceiling_bits)) - nonfinite


def _sample(lanes: np.ndarray, per_segment: int) -> np.ndarray:
    """The first SAMPLE_RUN lanes of every segment, as one small contiguous array."""
    whole = lanes.size // per_segment
    heads = lanes[: whole * per_segment].reshape(whole, per_segment)[:, :SAMPLE_RUN].reshape(-1)
    return np.concatenate((heads, lanes[whole * per_segment :][:SAMPLE_RUN]))


def segment_ors(block: np.ndarray) -> np.ndarray | None:
    """The OR of each 64 KiB segment's uint64 words of an 8-byte aligned block (None if empty): one
    read-only pass that both the NaN prefilter and the census read."""
    words = block[: block.size // 8 * 8].view(np.uint64)
    if words.size == 0:
        return None
    return np.bitwise_or.reduceat(words, _segment_starts(words.size))


@functools.lru_cache(maxsize=8)
def _segment_starts(words: int) -> np.ndarray:
    return np.arange(0, words, SEGMENT_BYTES // 8, dtype=np.intp)


# The sieve's and the census's block (kernels/cpu.py), and the CPU kernel's chunk: each block costs a fixed
# dozen or two numpy calls besides its passes over the bytes, so larger blocks cost less per byte. Measured on
# 4.37 GB bf16, warm, 2 cores (session 6, same hour): 4 MiB 0.160 s clean / 0.498 s NaN in every MiB, 8 MiB
# 0.124 / 0.416, 16 MiB 0.109 / 0.395 (1 and 2 MiB were slower still). 8 MiB keeps a read buffer per worker,
# and what is in flight (2 chunks per worker), where they were with cold reads' 8 MiB requests.
BLOCK_BYTES = 8 << 20


def negatives(lanes: np.ndarray, info: LaneInfo) -> int:
    """The finite values below zero among ``lanes`` (a variance's: LaneInfo.nonnegative): one signed minimum when
    there are none (the rule), an exact count when some lane has its sign bit set (-0.0, -NaN and -Inf are none)."""
    if int(lanes.view(_SIGNED[info.lane_bits]).min()) >= 0:
        return 0
    mag = lanes & lanes.dtype.type(info.mag_mask)
    signed = lanes > lanes.dtype.type(info.mag_mask)  # (the sign bit: every bit above the magnitude's)
    return int(np.count_nonzero(signed & (mag != 0) & (mag < info.limit)))


def observe_chunk(
    data: np.ndarray, info: LaneInfo, base_lane: int, histogram: bool = False, tally: Tally | None = None,
    ors: np.ndarray | None = None,
) -> Census:
    """The census of a chunk on its own (kernels other than the CPU one count NaN elsewhere); with ``tally``
    (:func:`tallies` holds), its NaN/+Inf/-Inf counted into it, lanes numbered from the chunk's start.
    ``ors``: the chunk's segment ORs where its CRC-32 pass computed them already (kernels/fused.py)."""
    out = Census()
    per_block = BLOCK_BYTES // SEGMENT_BYTES
    for start in range(0, data.size, BLOCK_BYTES):
        block = data[start : start + BLOCK_BYTES]
        if ors is not None:  # (8-byte aligned: the fused pass gives none otherwise)
            first = start // SEGMENT_BYTES
            block_ors: np.ndarray | None = ors[first : first + per_block] if first < ors.size else None
        else:
            block_ors = segment_ors(block) if block.ctypes.data % 8 == 0 else None
        lane = start * 8 // info.lane_bits
        out.merge(observe_block(block, block_ors, info, base_lane + lane, histogram, tally, lane))
    return out


def sample_histogram(heads: list[np.ndarray], info: LaneInfo) -> tuple[np.ndarray, int]:
    """(exponent histogram, lanes sampled) of sampled lane runs of one tensor, for its bulk scale."""
    sample = np.concatenate(heads) if heads else np.empty(0, _UNSIGNED[info.lane_bits])
    mag, _ = _finite_magnitudes(sample, info)
    return _histogram(mag, info), int(sample.size)


def run_tops(data: np.ndarray, info: LaneInfo, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest magnitude, zero lanes) of each of adjacent small regions read as one, in two vectorised
    reductions; ``starts``: each region's first lane (ascending). An empty region's top is 0. NaN/Inf lanes
    are not told apart here: a region holding some is read whole (:func:`observe_whole`) by the caller."""
    lanes = data.view(_UNSIGNED[info.lane_bits])
    sizes = np.diff(np.append(starts, lanes.size))
    mag = lanes & lanes.dtype.type(info.mag_mask)
    nonempty = sizes > 0
    tops = np.zeros(starts.size, dtype=np.int64)
    zeros = np.zeros(starts.size, dtype=np.int64)
    if nonempty.any():
        at = starts[nonempty]
        tops[nonempty] = np.maximum.reduceat(mag, at)
        zeros[nonempty] = np.add.reduceat((mag == 0).view(np.uint8), at, dtype=np.int64)
    return tops, zeros


def decode_magnitudes(spec: DTypeSpec, bits: np.ndarray) -> np.ndarray:
    """``decode_magnitude`` of every finite magnitude in ``bits``, as float64 (exact: IEEE views where numpy
    has the format, else a table of the dtype's 256 codes)."""
    # A caller may pass a NaN's bits (a small tensor's top in a run, replaced later by its whole read): widening
    # a signalling NaN (a bit flip's) to float64 sets numpy's "invalid" flag, a RuntimeWarning on the user's
    # terminal; the NaN it makes is all that is wanted.
    with np.errstate(invalid="ignore"):
        width = spec.lane_bits
        if width == 64:
            return bits.astype(np.uint64).view(np.float64)
        if width == 32:
            return bits.astype(np.uint32).view(np.float32).astype(np.float64)
        if spec.name == "BF16":
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if width == 16:  # F16, C32
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return _code_values(spec)[bits.astype(np.intp)]


@functools.cache
def _code_values(spec: DTypeSpec) -> np.ndarray:
    return np.array([decode_magnitude(spec, code) for code in range(256)], dtype=np.float64)


def bulk_rank(elements: int) -> int:
    """Which largest magnitude of ``elements`` values is their bulk: the k-th, k = max(9, n/1000) (no 8 spikes can
    move it): the one rule of the file census, the live one, and chunks merged into their tensor."""
    return max(9, math.ceil(elements / 1000))


def count_above(lanes: np.ndarray, info: LaneInfo, threshold: int) -> tuple[int, int, int]:
    """(count of the outlier lanes: finite, magnitude >= ``threshold`` and not above the ceiling, index of the
    first, its raw lane bits). A value above the ceiling is exploded, and counted once, there: one bad value is
    not two findings (a review: one 1e30 read EXPLODED + OUTLIERS, on two rows of the layer table)."""
    mag, _ = _finite_magnitudes(lanes, info)
    over = (mag >= threshold) & (mag <= info.ceiling_bits)
    count = int(np.count_nonzero(over))
    if not count:
        return 0, -1, 0
    first = int(np.argmax(over))
    worst = int(np.argmax(np.where(over, mag, 0)))
    return count, first, int(lanes[worst])


def first_exploded(lanes: np.ndarray, info: LaneInfo) -> int:
    """The index of the first finite lane above the ceiling (an exploded value), or -1."""
    mag, _ = _finite_magnitudes(lanes, info)
    over = np.flatnonzero(mag > info.ceiling_bits)
    return int(over[0]) if over.size else -1


def lanes_above(lanes: np.ndarray, info: LaneInfo, threshold: int) -> np.ndarray:
    """Indices of the outlier lanes (:func:`count_above`: where a view's outliers lie in it)."""
    mag, _ = _finite_magnitudes(lanes, info)
    return np.flatnonzero((mag >= threshold) & (mag <= info.ceiling_bits))


def signed_value(spec: DTypeSpec, info: LaneInfo, raw: int) -> float:
    """The value of a finite lane from its raw bits (sign included)."""
    magnitude = decode_magnitude(spec, raw & info.mag_mask)
    sign_bit = (info.mag_mask + 1) if info.mag_mask + 1 < (1 << info.lane_bits) else 0
    return -magnitude if sign_bit and raw & sign_bit else magnitude
