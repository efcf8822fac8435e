"""Block-quantized regions (GGUF ``Q4_K`` …): their scale fields gathered into plain lanes.

A quantized tensor is a run of fixed-size blocks; in each block only the scale
(and min) fields are floats, so only they can hold NaN/Inf. These helpers turn
whole blocks into the contiguous lanes of those fields, in the file's byte
order, so the kernels and the census test them like any fp16/fp32 tensor and
stay format-blind. Lane ``k`` of a region is field ``k % count`` of block
``k // count``.
"""

from __future__ import annotations

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.model import BlockFields, Region

_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def lane_bytes(region: Region) -> int:
    return DTYPES[region.dtype].lane_bits // 8


def lanes_nbytes(region: Region) -> int:
    """Bytes of the region's lanes once gathered: its own bytes when it is not block-quantized."""
    fields = region.blocks
    if fields is None:
        return region.nbytes
    return fields.blocks_in(region.nbytes) * fields.count * lane_bytes(region)


def gather(data: np.ndarray, region: Region) -> np.ndarray:
    """The field lanes of ``data`` (uint8, whole blocks of ``region``) as contiguous uint8, file byte order."""
    fields = region.blocks
    assert fields is not None
    width = lane_bytes(region)
    if fields.packed:
        return _iq1m_scales(data, fields, region.byteorder)
    span = fields.count * width
    if span in _WORDS and fields.offset % span == 0 and fields.block_bytes % span == 0:
        # The fields of a block fit one aligned word: one strided pick, no per-row copy loop.
        words = data.view(_WORDS[span]).reshape(-1, fields.block_bytes // span)
        return np.ascontiguousarray(words[:, fields.offset // span]).view(np.uint8)
    rows = data.reshape(-1, fields.block_bytes)
    return np.ascontiguousarray(rows[:, fields.offset : fields.offset + span]).reshape(-1)


def _iq1m_scales(data: np.ndarray, fields: BlockFields, byteorder: str) -> np.ndarray:
    """IQ1_M keeps its fp16 block scale in the top nibbles of its four uint16 sub-scales (ggml's iq1m_scale_t)."""
    order = "<" if byteorder == "little" else ">"
    rows = data.reshape(-1, fields.block_bytes)
    sc = np.ascontiguousarray(rows[:, fields.offset : fields.offset + 8]).view(f"{order}u2").astype(np.uint16)
    scale = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    return scale.astype(f"{order}u2").view(np.uint8)


def block_span(fields: BlockFields, first_lane: int, lanes: int) -> tuple[int, int]:
    """(first block, number of blocks) holding lanes [first_lane, first_lane + lanes)."""
    first = first_lane // fields.count
    last = (first_lane + lanes - 1) // fields.count
    return first, last - first + 1
