"""Block-quantized tensors (GGUF ``Q8_0``, ``Q4_K`` …) compared block by block, never dequantized.

Two tensors of the same quantization type and shape are runs of the same
blocks. A block is the same when its scale fields hold the same values (NaN
equals NaN, -0 equals +0, as for floats) and its other bytes (the quantized
payload) are identical; otherwise it is a changed block. NaN/Inf can only sit
in the scale fields, so they are counted there, one per field, exactly as the
scan counts them (``blockfields.gather``, docs/gguf.md): a ``Q8_0`` block
whose fp16 ``d`` is NaN counts 1, not 32.

Indices in the returned :class:`~nandoctor.diffs.values.ChunkStats` are block
indices within the chunk; the comparer turns them into the first element of
the block, as the scan's ``first_bad`` points at a bad block.
"""

from __future__ import annotations

import numpy as np

from nandoctor.blockfields import gather, lane_bytes
from nandoctor.diffs import values
from nandoctor.dtypes import DTYPES
from nandoctor.kernels.census import to_little
from nandoctor.kernels.decode import decode
from nandoctor.model import Region


def _scales(raw: np.ndarray, region: Region) -> np.ndarray:
    """The scale fields of whole blocks ``raw`` as numbers, lane ``k`` field ``k % count`` of block ``k // count``."""
    lanes = gather(raw, region)
    spec = DTYPES[region.dtype]
    if region.byteorder == "big" and spec.lane_bits > 8:
        lanes = to_little(lanes, spec)
    return decode(lanes, region.dtype)


def compare_blocks(raw_a: np.ndarray, raw_b: np.ndarray, region_a: Region, region_b: Region) -> values.ChunkStats:
    """Compare whole blocks ``raw_a`` (A) and ``raw_b`` (B), uint8 of the same quantization type and byte order:
    ``changed`` counts changed blocks, ``a_only``/``b_only`` scale fields NaN/Inf on one side only."""
    fields = region_a.blocks
    assert fields is not None and region_b.blocks == fields
    rows_a = raw_a.reshape(-1, fields.block_bytes)
    rows_b = raw_b.reshape(-1, fields.block_bytes)
    payload = rows_a != rows_b
    if not fields.packed:  # the scale bytes are compared as values below; a packed scale shares its bytes
        start = fields.offset
        payload[:, start : start + fields.count * lane_bytes(region_a)] = False
    changed = payload.any(axis=1)
    stats = values.ChunkStats()
    if fields.count:
        x, y = _scales(raw_a, region_a), _scales(raw_b, region_b)
        changed |= values.differing(x, y).reshape(-1, fields.count).any(axis=1)
        lanes = values.compare(x, y, 1, None)  # per field, as the scan counts them
        stats.a_only, stats.b_only = lanes.a_only, lanes.b_only
        stats.first_a_only = lanes.first_a_only // fields.count if lanes.first_a_only >= 0 else -1
        stats.first_b_only = lanes.first_b_only // fields.count if lanes.first_b_only >= 0 else -1
    stats.changed = int(np.count_nonzero(changed))
    stats.values_differ = stats.changed > 0
    return stats


__all__ = ["compare_blocks"]
