"""Which elements of a storage a tensor view sees.

A torch storage can back several tensors (tied weights, slices, transposes).
Given the storage-relative indices of non-finite elements, these helpers say
which of them each view holds and at which logical (C-order) position; and
which views read their storage whole (in any order), for the health census.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from nandoctor.errors import UnsupportedFormatError
from nandoctor.model import TensorRef


def covers_whole_region(ref: TensorRef, itemsize_bits: int) -> bool:
    """True when ``ref`` is the one plain, contiguous reading of its whole region."""
    return (
        ref.storage_offset == 0
        and ref.is_contiguous
        and ref.numel * itemsize_bits == ref.region.nbytes * 8
    )


def reads_whole_region(ref: TensorRef, itemsize_bits: int) -> bool:
    """True when ``ref`` reads every element of its whole region exactly once, in any order (a plain view, a
    transpose, a permute): the region's census is then the view's, count for count."""
    return ref.storage_offset == 0 and ref.numel * itemsize_bits == ref.region.nbytes * 8 and ref.is_dense


def element_span(ref: TensorRef) -> tuple[int, int]:
    """[lowest, highest] storage element index the view can touch (inclusive); (0, -1) when empty."""
    if ref.numel == 0:
        return 0, -1
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    high = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, strides))
    return ref.storage_offset, high


# The largest span (in elements) for which an irregular view gets an exact map; beyond it the view is refused
# (8M int64 entries = 64 MB): such views only come from hand-made `as_strided` calls or hostile files.
MAX_IRREGULAR_SPAN = 8 << 20


def census_refused(ref: TensorRef) -> bool:
    """True when the view's own elements get no health census: an irregular (overlapping) view spanning more
    than MAX_IRREGULAR_SPAN elements, whose distinct elements would take a map that large to find."""
    if ref.numel == 0 or is_nested(ref):
        return False
    lo, hi = element_span(ref)
    return hi - lo + 1 > MAX_IRREGULAR_SPAN


def _dims(ref: TensorRef) -> list[tuple[int, int, int]]:
    """(stride, size, C-order stride) of the dims that move through storage, largest stride first."""
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    dims = [(s, n, c) for s, n, c in zip(strides, ref.shape, ref.contiguous_strides) if s > 0 and n > 1]
    return sorted(dims, key=lambda d: -d[0])


def is_nested(ref: TensorRef) -> bool:
    """True when every storage element the view reads has exactly one index (slices, transposes, permutes).

    Then a greedy largest-stride-first decomposition is exact. Overlapping (``as_strided`` with small
    strides) or interleaved views are not nested.
    """
    dims = _dims(ref)
    reach = 0  # the furthest offset the inner dims can add
    for stride, size, _ in reversed(dims):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


def unattributable(ref: TensorRef) -> UnsupportedFormatError | None:
    """Why the elements a view reads cannot be told apart (an overlapping view too wide to map), or None: the
    engine checks it before reading, so the other views of its storage are still scanned, and refuses it by this
    problem where its span holds NaN/Inf (an adversarial round: a refusal while reading left every view of the
    storage at 0 NaN, a plain view of it holding NaN included)."""
    if is_nested(ref):
        return None
    lo, hi = element_span(ref)
    span = hi - lo + 1
    if span <= MAX_IRREGULAR_SPAN:
        return None
    return UnsupportedFormatError(
        f"{ref.file}: tensor {ref.name!r} is an overlapping view (strides {ref.strides}) spanning {span:,} "
        "elements; nandoctor cannot attribute its values to positions (a scan gives it the NaN/Inf of the storage "
        "elements within its span, not exact counts)",
        hint="re-save the tensor with .contiguous() (or as safetensors) and scan again",
    )


@lru_cache(maxsize=64)
def _irregular_map(ref: TensorRef) -> tuple[int, np.ndarray]:
    """For a non-nested view: (lowest storage index, the smallest logical index reading each element or -1)."""
    refused = unattributable(ref)
    if refused is not None:
        raise refused
    lo, hi = element_span(ref)
    span = hi - lo + 1
    unreached = np.iinfo(np.int64).max
    best = np.full(span, unreached, dtype=np.int64)
    best[0] = 0
    for stride, size, logical_step in _dims(ref):
        # Union of `size` shifted copies by doubling: O(span · log size) instead of O(span · size).
        acc, have = best.copy(), 1  # acc: positions reachable with i < have along this dim
        result = np.full(span, unreached, dtype=np.int64)
        offset, remaining = 0, size
        while remaining:
            if remaining & 1:
                _shift_min(result, acc, offset * stride, offset * logical_step)
                offset += have
            remaining >>= 1
            if remaining:
                _shift_min(acc, acc.copy(), have * stride, have * logical_step)
                have *= 2
        best = result
    best[best == unreached] = -1
    return lo, best


def irregular_elements(ref: TensorRef) -> tuple[int, np.ndarray, np.ndarray]:
    """For a non-nested view: (lowest storage index, the distinct storage elements it reads as offsets from
    it, ascending, and the smallest logical index reading each)."""
    lo, best = _irregular_map(ref)
    picked = np.flatnonzero(best >= 0)
    return lo, picked, best[picked]


def _shift_min(into: np.ndarray, source: np.ndarray, shift: int, add: int) -> None:
    """into[x] = min(into[x], source[x - shift] + add) for reachable source entries."""
    if shift >= into.size:
        return
    moved = source[: into.size - shift]
    reachable = moved != np.iinfo(np.int64).max
    target = into[shift:]
    np.minimum(target, np.where(reachable, moved + add, np.iinfo(np.int64).max), out=target)


def locate(ref: TensorRef, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For storage indices, return (mask of those inside the view, their smallest logical flat indices).

    An element an overlapping view reads at several positions counts once, at its first position.
    """
    if ref.numel == 0:  # reads nothing (its offset may be anything torch accepts, even past int64)
        return np.zeros(indices.shape, dtype=bool), np.full(indices.shape, -1, dtype=np.int64)
    lo, hi = element_span(ref)
    inside = (indices >= lo) & (indices <= hi)
    if ref.is_contiguous:
        logical = indices - ref.storage_offset
        return inside, np.where(inside, logical, -1)
    if not is_nested(ref):
        base, best = _irregular_map(ref)
        logical = np.full(indices.shape, -1, dtype=np.int64)
        logical[inside] = best[indices[inside] - base]
        inside &= logical >= 0
        return inside, logical
    rest = indices - ref.storage_offset
    logical = np.zeros_like(indices)
    for stride, size, logical_step in _dims(ref):
        step = np.where(rest >= 0, rest // stride, -1)
        inside &= (step >= 0) & (step < size)
        step = np.clip(step, 0, size - 1)
        rest = rest - step * stride
        logical += step * logical_step
    inside &= rest == 0
    return inside, np.where(inside, logical, -1)
