"""Which elements of a storage a tensor view sees.

A torch storage can back several tensors (tied weights, slices, transposes).
Given the storage-relative indices of non-finite elements, these helpers say
which of them each view holds and at which logical (C-order) position.
"""

from __future__ import annotations

import numpy as np

from nandoctor.model import TensorRef


def covers_whole_region(ref: TensorRef, itemsize_bits: int) -> bool:
    """True when ``ref`` is the one plain, contiguous reading of its whole region."""
    return (
        ref.storage_offset == 0
        and ref.is_contiguous
        and ref.numel * itemsize_bits == ref.region.nbytes * 8
    )


def element_span(ref: TensorRef) -> tuple[int, int]:
    """[lowest, highest] storage element index the view can touch (inclusive); (0, -1) when empty."""
    if ref.numel == 0:
        return 0, -1
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    high = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, strides))
    return ref.storage_offset, high


def locate(ref: TensorRef, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For storage indices, return (mask of those inside the view, their logical flat indices)."""
    lo, hi = element_span(ref)
    inside = (indices >= lo) & (indices <= hi)
    if ref.is_contiguous:
        logical = indices - ref.storage_offset
        return inside, np.where(inside, logical, -1)
    strides = ref.strides or ref.contiguous_strides
    contiguous = ref.contiguous_strides
    rest = indices - ref.storage_offset
    logical = np.zeros_like(indices)
    # Greedy decomposition from the largest stride down is exact for non-overlapping views,
    # which is what slicing and transposing produce (negative strides are refused earlier).
    for dim in sorted(range(len(ref.shape)), key=lambda d: -strides[d]):
        stride, size = strides[dim], ref.shape[dim]
        if stride == 0 or size == 1:
            continue
        step = np.where(rest >= 0, rest // stride, -1)
        inside &= (step >= 0) & (step < size)
        step = np.clip(step, 0, size - 1)
        rest = rest - step * stride
        logical += step * contiguous[dim]
    inside &= rest == 0
    return inside, np.where(inside, logical, -1)
