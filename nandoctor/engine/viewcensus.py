"""The health census of torch views that do not read their storage whole and in order.

The scan takes its census per region (a torch storage, read once); a view that
reads the region whole and in order takes it as it is (jobs.results). After the
outlier pass, every other view of a floating region gets its own here:

- a view that reads each element of its region once in another order (a
  transpose or permute: conversion scripts' ``.t()``) has the region's census
  (counts and magnitudes do not depend on order), but the index of its first
  outlier is its own: the region's outliers are found again (a few 64 KiB
  segments, read before) and placed in the view (views.locate);
- a view that reads part of its region (q, k and v split from one fused
  storage, a slice, a strided or overlapping view) is read on its own, a block
  at a time, and measured as a small region is (observe_whole: every value
  exact, its own bulk, its own outliers). An overlapping view is measured on
  its distinct storage elements, as its NaN/Inf are counted; one spanning more
  than views.MAX_IRREGULAR_SPAN gets none (the torch reader says so in a note).

A checkpoint of plain tensors reads nothing here: its views all read their
region whole and in order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from nandoctor.checkpoint.roles import judged_as_weight
from nandoctor.dtypes import DTypeSpec
from nandoctor.engine.jobs import OutlierFind, RegionJob, ViewCensus
from nandoctor.engine.work import SMALL_REGION_BYTES
from nandoctor.errors import NandoctorError
from nandoctor.kernels.census import (
    Census,
    HealthLimits,
    LaneInfo,
    lanes_above,
    lanes_of,
    observe_chunk,
    observe_whole,
    to_little,
)
from nandoctor.model import ScanProblem, TensorRef
from nandoctor.sources import ALIGNED_AT, BufferFor, ChunkSource, ThreadBuffers, open_source
from nandoctor.views import (
    census_refused,
    covers_whole_region,
    irregular_elements,
    is_nested,
    locate,
    reads_whole_region,
)

PIECE_BYTES = 8 << 20  # a view's elements are read and measured this many bytes at a time
# What the views that read part of their region may make the census read again, over the regions they view:
# q/k/v split from a fused storage read it once over; 10,000 overlapping slices of one 4 MB storage (a fuzzer's
# 4.8 MB file) would read 40 GB. The views past it are judged on their whole storage's census (a bound: an
# exploded value anywhere in the storage counts for each of them), and a note says so.
VIEW_READ_FACTOR = 8
VIEW_READ_FLOOR = 1 << 30
T = TypeVar("T")


def census_views(jobs: list[RegionJob], limits: HealthLimits, failed: set[str]) -> tuple[list[ScanProblem], list[str]]:
    """Give every view of ``jobs`` that reads its floating region other than whole and in order its census
    (``RegionJob.own``), after the outlier pass; not in the ``failed`` files. Returns the problems (files that
    could not be read again) and the views left without a census because the reads would pass
    VIEW_READ_FACTOR times the regions they view (at least VIEW_READ_FLOOR)."""
    todo: dict[str, list[tuple[RegionJob, int]]] = {}
    viewed: dict[int, int] = {}  # id(job) → its region's bytes, once per region that has such views
    for job in jobs:
        if job.direct or job.info is None or job.region.blocks is not None or job.region.file in failed:
            continue
        for slot, view in enumerate(job.views):
            if view.numel and not covers_whole_region(view, job.spec.bits) and not census_refused(view):
                todo.setdefault(job.region.file, []).append((job, slot))
                viewed[id(job)] = job.region.nbytes
    budget = max(VIEW_READ_FLOOR, VIEW_READ_FACTOR * sum(viewed.values()))
    skipped: list[str] = []
    problems = []
    buffers = ThreadBuffers(None)
    for file, views in todo.items():
        try:
            # Mapped (unless NANDOCTOR_IO=read asks for reads): a piece of a view is then a view of the file's
            # pages, never a copy of all the bytes it spans (a column of a wide matrix spans all of it).
            mode = "read" if os.environ.get("NANDOCTOR_IO") == "read" else "mmap"
            source = open_source(Path(file), max(j.region.offset + j.region.nbytes for j, _ in views), mode)
        except (NandoctorError, OSError) as exc:
            problems.append(ScanProblem(file, f"cannot read it again for the census of its tensor views: {exc}"))
            continue
        try:
            for job, slot in views:
                view = job.views[slot]
                if reads_whole_region(view, job.spec.bits):
                    own = ViewCensus(job.census, job.outliers, _placed_first(job, view, source, buffers))
                else:
                    cost = view.numel * job.spec.itemsize
                    if cost > budget:  # judged on its whole storage, read once already: a bound, never a pass
                        skipped.append(view.name)
                        own = ViewCensus(job.census, job.outliers)
                    else:
                        budget -= cost
                        own = _own_census(job, view, source, buffers, limits)
                if job.own is None:
                    job.own = {}
                job.own[slot] = own
        except (NandoctorError, OSError) as exc:
            problems.append(ScanProblem(file, f"read failed during the census of its tensor views: {exc}"))
        finally:
            source.close()
    notes = [f"{len(skipped):,} tensor view(s) judged on their whole storage ({', '.join(skipped[:3])}"
             f"{' …' if len(skipped) > 3 else ''}): they overlap so much that measuring each on its own would read "
             f"their storage {VIEW_READ_FACTOR}x over; a value of the storage outside a view counts for it, and "
             "their NaN/Inf are counted exactly"] if skipped else []
    return problems, notes


class _Box(NamedTuple):
    """Some elements of a nested view, laid out in storage order, and where each sits in the view."""

    offset: int  # storage element of the first
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # storage elements per step along each dimension (largest first)
    origin: int  # the view's (C-order) index of the first
    steps: tuple[int, ...]  # the view's index per step along each dimension

    def span(self) -> tuple[int, int]:
        """(first storage element, elements from it to the last one read)."""
        return self.offset, sum((n - 1) * s for n, s in zip(self.shape, self.strides)) + 1

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def elements(self, span: np.ndarray) -> np.ndarray:
        """The box's elements in order, from the elements of its span (a view of them where they are in order)."""
        itemsize = span.dtype.itemsize
        return np.ascontiguousarray(
            np.lib.stride_tricks.as_strided(span, self.shape, tuple(s * itemsize for s in self.strides), writeable=False)
        )

    def logical(self, positions: np.ndarray) -> np.ndarray:
        """The view's indices of the box's elements at ``positions``."""
        if not self.shape:  # a 0-d view: its one element
            return np.full_like(positions, self.origin)
        index = np.unravel_index(positions, self.shape)
        return self.origin + sum((i * step for i, step in zip(index, self.steps)), np.zeros_like(positions))


class _Picked(NamedTuple):
    """The distinct storage elements of an irregular (non-nested) view, in storage order."""

    offset: int  # lowest storage element the view reads
    length: int  # elements from it to the highest
    picks: np.ndarray  # each distinct element's place from ``offset``
    indices: np.ndarray  # the smallest view index reading each

    @property
    def size(self) -> int:
        return int(self.picks.size)

    def span(self) -> tuple[int, int]:
        return self.offset, self.length

    def elements(self, span: np.ndarray) -> np.ndarray:
        """The distinct elements, copied, from the elements of the view's span."""
        return span[self.picks]

    def logical(self, positions: np.ndarray) -> np.ndarray:
        return self.indices[positions]


def _boxes(view: TensorRef, budget: int) -> Iterator[_Box]:
    """A nested view in boxes of at most ``budget`` elements, each laid out largest stride first, so that a box reads one compact run of the storage however the view orders its dimensions. A
    dimension of stride 0 (``expand``) is read at its first index: the distinct elements, at their smallest
    view index, as views.locate places them."""
    dims = sorted(zip(view.effective_strides, view.shape, view.contiguous_strides), key=lambda d: -d[0])
    strides = tuple(stride for stride, _, _ in dims)
    shape = tuple(size if stride else 1 for stride, size, _ in dims)
    steps = tuple(step for _, _, step in dims)
    yield from _split(_Box(view.storage_offset, shape, strides, 0, steps), budget)


def _split(box: _Box, budget: int) -> Iterator[_Box]:
    """The box itself when it holds at most ``budget`` elements; else blocks of its leading rows, or, when one
    row holds more, each row split in turn."""
    offset, shape, strides, origin, steps = box
    if not shape or math.prod(shape) <= budget:
        yield box
        return
    inner = math.prod(shape[1:])  # (1 for a 1-D box: runs of ``budget`` elements)
    if inner > budget:
        for i in range(shape[0]):
            yield from _split(_Box(offset + i * strides[0], shape[1:], strides[1:], origin + i * steps[0], steps[1:]),
                              budget)
        return
    rows = budget // inner
    for i in range(0, shape[0], rows):
        yield _Box(offset + i * strides[0], (min(rows, shape[0] - i), *shape[1:]), strides, origin + i * steps[0], steps)


def _pieces(view: TensorRef, itemsize: int) -> Iterator[_Box | _Picked]:
    """The view's distinct elements, a piece at a time (an irregular view, at most MAX_IRREGULAR_SPAN, in one)."""
    if is_nested(view):
        yield from _boxes(view, max(1, PIECE_BYTES // itemsize))
        return
    low, picks, indices = irregular_elements(view)
    yield _Picked(low, int(picks[-1]) + 1, picks, indices)


def _measured(job: RegionJob, source: ChunkSource, buffers: BufferFor, piece: _Box | _Picked,
              measure: Callable[..., T], *args: object) -> T:
    """``measure(elements, *args)`` of the piece's elements as little-endian bytes: a view of the mapped file
    where they lie in order at an aligned address, else a copy; ``measure`` must not keep them."""
    spec = job.spec
    first, count = piece.span()
    start = job.region.offset + first * spec.itemsize
    pad = start % ALIGNED_AT  # read from an aligned byte: a mapped source then hands a view, not a copy
    raw = source.read(start - pad, pad + count * spec.itemsize, buffers)
    data = raw
    try:
        data = piece.elements(raw[pad:].view(np.dtype((np.void, spec.itemsize)))).reshape(-1).view(np.uint8)
        if data.ctypes.data % ALIGNED_AT:  # the census's prefilter reads aligned 64-bit words
            data = data.copy()
        if job.region.byteorder == "big" and spec.lane_bits > 8:
            data = to_little(data, spec)
        return measure(data, *args)
    finally:
        del raw, data  # an exported buffer would stop the mmap from closing


def _census_of(data: np.ndarray, info: LaneInfo, small: bool, lane: int) -> Census:
    """As the scan measures a region of the view's size: a small one read whole, a large one chunk by chunk
    (its largest magnitude exact from the high level up, its zeros where a sample finds one), with the
    sampled histogram its bulk is read from."""
    return observe_whole(data, info) if small else observe_chunk(data, info, lane, histogram=True)


def _above(data: np.ndarray, spec: DTypeSpec, info: LaneInfo, threshold: int) -> tuple[np.ndarray, int]:
    """(the lanes of ``data`` at or above ``threshold``, the raw bits of the largest of them)."""
    lanes = lanes_of(data, spec)
    at = lanes_above(lanes, info, threshold)
    worst = int(lanes[at[int(np.argmax(lanes[at] & lanes.dtype.type(info.mag_mask)))]]) if at.size else 0
    return at, worst


def _own_census(job: RegionJob, view: TensorRef, source: ChunkSource, buffers: BufferFor,
                limits: HealthLimits) -> ViewCensus:
    """The census of a view that reads part of its region, from its own elements; its outliers (a weight's)
    against its own bulk, read again from the pieces that reach its outlier threshold."""
    spec, info = job.spec, job.info
    assert info is not None
    small = view.numel * spec.itemsize < SMALL_REGION_BYTES
    census = Census()
    high: list[tuple[_Box | _Picked, int]] = []  # pieces where an outlier can be, with their largest magnitude
    lane = 0  # the view's lanes before the piece
    for piece in _pieces(view, spec.itemsize):
        part = _measured(job, source, buffers, piece, _census_of, info, small, lane)
        census.merge(part)
        top = max(part.high_max, part.exact_max)
        if top >= info.high_bit:
            high.append((piece, top))
        lane += piece.size * spec.lanes_per_element
    own = ViewCensus(census)
    threshold = census.outlier_threshold(info, limits) if high and judged_as_weight(view.name, view.role) else None
    if threshold is None or all(top < threshold for _, top in high):
        return own
    own.outliers = found = OutlierFind(threshold=threshold)
    for piece, top in high:
        if top < threshold:
            continue
        at, worst = _measured(job, source, buffers, piece, _above, spec, info, threshold)
        if not at.size:
            continue
        found.count += int(at.size)
        if worst & info.mag_mask > found.worst_mag:
            found.worst_mag, found.worst_raw = worst & info.mag_mask, worst
        first = int(piece.logical(at // spec.lanes_per_element).min())
        own.first = first if own.first < 0 else min(own.first, first)
    return own


def _placed_first(job: RegionJob, view: TensorRef, source: ChunkSource, buffers: BufferFor) -> int:
    """The view's index of the first of its region's outliers (a view reading the whole region in another
    order); -1 when the region has none."""
    found, info, spec = job.outliers, job.info, job.spec
    if found is None or not found.count or info is None:
        return -1
    lane_bytes = spec.lane_bits // 8
    first = -1
    for start, lanes, top in job.census.high_segments:
        if top < found.threshold:
            continue
        data = source.read(job.region.offset + start * lane_bytes, lanes * lane_bytes, buffers)
        try:
            little = to_little(data, spec) if job.region.byteorder == "big" and lane_bytes > 1 else data
            at = lanes_above(lanes_of(little, spec), info, found.threshold)
            del little
        finally:
            del data  # an exported buffer would stop the mmap from closing
        if at.size:
            _, logical = locate(view, (start + at) // spec.lanes_per_element)
            low = int(logical.min())
            first = low if first < 0 else min(first, low)
    return first
