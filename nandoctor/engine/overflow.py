"""Overflow counts for ``--target-dtype``: what each view of a region would lose in the cast, chunk by chunk."""

from __future__ import annotations

import numpy as np

from nandoctor.engine.jobs import RegionJob
from nandoctor.kernels import NO_OVERFLOW, Kernel, OverflowCounts
from nandoctor.views import covers_whole_region, element_span, locate

_GATHER_ELEMENTS = 1 << 16  # strided views are gathered in blocks this size: bounded scratch


def chunk_overflow(data: np.ndarray, start: int, job: RegionJob, kernel: Kernel) -> list[tuple[int, OverflowCounts]]:
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
