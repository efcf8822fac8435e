"""The bulk and outliers of a tensor stored in chunks (DCP shards, ZeRO partitions), measured on the whole tensor.

Each chunk is scanned as a tensor of its own, so its outliers were measured against its own bulk. Where the chunks'
scales differ, that is not the whole tensor's answer: a chunk of small values calls a few values of 8 outliers
that the whole tensor's bulk makes ordinary, and they must not hide another chunk's 5e4 (a review: merging by counts
alone passed a DCP tensor CLEAN that the same tensor in one file failed with 3 outliers). So where some chunk's
value could stand out against another chunk's bulk, the chunks are read again as one tensor: the exponent
histogram of every value gives the bulk (kernels/census.py's rule, k = max(9, n/1000)), and the values above its
outlier threshold are counted and located in the global tensor. Healthy chunks of one tensor share a scale and
are never read again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nandoctor.checkpoint.roles import judged_as_weight
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.engine.chunks import Measured, in_global
from nandoctor.errors import NandoctorError
from nandoctor.kernels.census import (
    BLOCK_BYTES,
    Census,
    HealthLimits,
    LaneInfo,
    count_above,
    lane_info,
    lanes_of,
    signed_value,
    to_little,
    whole_histogram,
)
from nandoctor.kernels.targets import checks_overflow, decode_magnitude
from nandoctor.model import Outliers, TensorRef, TensorResult
from nandoctor.sources import ThreadBuffers, open_source


def suspect(chunks: list[TensorResult], limits: HealthLimits) -> bool:
    """Whether a value of one chunk could be an outlier against another chunk's bulk (or is one of its own)."""
    if any(r.outliers is not None and r.outliers.count for r in chunks):
        return True
    bulks = [r.bulk_scale for r in chunks if r.bulk_scale]
    tops = [r.max_abs for r in chunks if r.max_abs is not None]
    return bool(bulks and tops) and max(tops) >= limits.outlier_factor * min(bulks)


def measure_whole(chunks: list[TensorResult], limits: HealthLimits, loads_as: str | None = None) -> Measured | None:
    """The whole tensor's (outliers, bulk scale) from its ``chunks`` read again; None where the chunks need not
    (or cannot) be: no value stands out (:func:`suspect`), not a weight judged by magnitude, a dtype without a
    census, a chunk not laid out contiguously (the chunks' own results are merged then)."""
    first = chunks[0].ref
    spec = DTYPES.get(first.dtype)
    if (spec is None or not checks_overflow(spec) or not judged_as_weight(first.name, first.role)
            or not all(_plain(r.ref) for r in chunks) or not suspect(chunks, limits)):
        return None
    info = lane_info(spec, limits.ceiling(spec.name, loads_as))
    try:
        return _measured(chunks, spec, info, limits)
    except (NandoctorError, OSError):  # (a file gone since its scan: the chunks' own results, read then, stand)
        return None


def _measured(chunks: list[TensorResult], spec: DTypeSpec, info: LaneInfo, limits: HealthLimits) -> Measured:
    census = Census(histogram=None, sampled=0)
    for _, lanes in _lanes(chunks, info):
        part = whole_histogram(lanes, info)
        census.histogram = part if census.histogram is None else census.histogram + part
        census.sampled += int(lanes.size)
    threshold = census.outlier_threshold(info, limits)
    bulk = census.bulk_scale(spec, info)
    if threshold is None:
        return None, bulk
    count, first_at, worst_mag, worst_raw = 0, -1, -1, 0
    for (ref, lane), lanes in _lanes(chunks, info):
        found, at, raw = count_above(lanes, info, threshold)
        if not found:
            continue
        count += found
        where = in_global((lane + at) // spec.lanes_per_element, ref)
        first_at = where if first_at < 0 else min(first_at, where)
        if raw & info.mag_mask > worst_mag:
            worst_mag, worst_raw = raw & info.mag_mask, raw
    if not count:
        return None, bulk
    return Outliers(count, signed_value(spec, info, worst_raw), first_at, decode_magnitude(spec, threshold)), bulk


def _plain(ref: TensorRef) -> bool:
    """Elements stored one after another in C order: a chunk read as a run of bytes."""
    return (ref.region.blocks is None and ref.order == "C" and ref.chunk is not None
            and (ref.strides is None or ref.strides == ref.contiguous_strides))


def _lanes(chunks: list[TensorResult], info: LaneInfo) -> Iterator[tuple[tuple[TensorRef, int], np.ndarray]]:
    """((chunk, its lanes before the block), the block's lanes little-endian) for every block of every chunk."""
    buffers = ThreadBuffers(None)
    for result in chunks:
        ref = result.ref
        spec = DTYPES[ref.dtype]
        start = ref.region.offset + ref.storage_offset * spec.itemsize
        nbytes = ref.numel * spec.itemsize
        step = BLOCK_BYTES - BLOCK_BYTES % spec.itemsize
        source = open_source(Path(ref.file), start + nbytes)
        try:
            for at in range(0, nbytes, step):
                data = source.read(start + at, min(step, nbytes - at), buffers)
                if ref.region.byteorder == "big" and spec.lane_bits > 8:
                    data = to_little(data, spec)
                yield (ref, at * 8 // info.lane_bits), lanes_of(data, spec)
                del data  # an exported buffer would stop the mmap from closing
        finally:
            source.close()
