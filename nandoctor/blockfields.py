"""Block-quantized regions (GGUF ``Q4_K`` …): their scale fields gathered into plain lanes.

A quantized tensor is a run of fixed-size blocks; in each block only the scale
(and min) fields are floats, so only they can hold NaN/Inf. These helpers turn
whole blocks into the contiguous lanes of those fields, in the file's byte
order, so the kernels and the census test them like any fp16/fp32 tensor and
stay format-blind. Lane ``k`` of a region is field ``k % count`` of block
``k // count``.

MXFP4 is the one type whose finite scales can make non-finite elements: ggml
dequantizes an element as ``kvalues_mxfp4[code] * e8m0_to_fp32_half(e)`` in fp32,
and for the scale bytes 0xFD and 0xFE that product overflows to ±Inf for the
larger codes. Its lanes are therefore one per element (:func:`_mxfp4_lanes`), so
the scan counts exactly the elements ggml (and ``gguf.quants.dequantize``) makes
±Inf. Every other type's scale times its largest code stays far inside fp32
(fp16 scales), so counting the scale fields is exact for them (docs/gguf.md).
"""

from __future__ import annotations

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.model import BlockFields, Region

_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# How far above each of its scale fields a block's largest weight stands, per type, the smallest over its fields
# (ggml's dequantize_row_*): Q8_0 is d * q with q an int8 (128); Q4_K d * sc * q - dmin * m with 6-bit sc, m
# and 4-bit q (945 for d, 63 for dmin: 63); Q6_K d * sc * (q - 32) with an int8 sc (4096); Q4_1/Q5_1 store the
# block's minimum weight itself as m (1). A quantizer fills the codes' range (the block's largest weight takes the
# largest code, its largest minimum the largest m), so a field times this is at most a weight of the block, and
# the exploded ceiling is applied to the weights, not to the scales (a trial: Q8_0 scales of 1,490, weights up to
# 1.9e5, passed CLEAN; a review: a per-field factor for d alone called Q5_K minimums of -605 exploded). Types not
# listed (the IQ grids, ternary TQ, MXFP4 whose lanes are its elements) are judged by their scale fields alone.
WEIGHT_PER_SCALE = {
    "Q4_0": 8, "Q5_0": 16, "Q8_0": 128, "Q8_K": 128, "Q2_K": 15, "Q3_K": 128, "Q4_K": 63, "Q5_K": 63,
    "Q6_K": 4096, "IQ4_NL": 127, "IQ4_XS": 4064,
}


def weight_ceiling(ceiling: float, fields: BlockFields | None) -> float:
    """The exploded ceiling of a region's lanes: ``ceiling`` itself, or for a block-quantized region the largest
    scale field whose weights stay under it."""
    return ceiling if fields is None else ceiling / WEIGHT_PER_SCALE.get(fields.kind, 1)


def elements_per_lane(fields: BlockFields | None) -> int:
    """How many elements each lane of a region speaks for: a block's elements shared by its scale fields (32 for
    Q4_0's one d), 1 for a plain tensor and for MXFP4, whose lanes are its elements."""
    return 1 if fields is None or not fields.count else max(1, fields.block_elems // fields.count)


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
    if fields.kind == "MXFP4":
        return _mxfp4_lanes(data, fields, region.byteorder)
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


# MXFP4 (ggml-common.h block_mxfp4: an E8M0 byte, then 16 bytes of fp4 codes, element j < 16 in the low
# nibble of byte j, element j + 16 in its high nibble). Values are ggml's kvalues_mxfp4 (e2m1, doubled) times
# e8m0_to_fp32_half(e) = 2^(e - 128), in fp32 (ggml-impl.h; gguf.quants mirrors both).
MXFP4_KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
MXFP4_NAN = 0xFF  # E8M0's NaN (OCP MX): a NaN scale, counted once per block as a NaN fp16 scale is


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """ggml's ``e8m0_to_fp32_half``: 2^(e - 128) as fp32 (denormal for e < 2), for uint8 ``e``."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - 1) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _bf16(values: np.ndarray) -> np.ndarray:
    """fp32 values whose low 16 bits are zero (powers of two, ±Inf) as BF16 bit patterns, exactly."""
    return (np.ascontiguousarray(values, np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def _mxfp4_tables() -> tuple[np.ndarray, int]:
    """(the BF16 lanes of each scale byte, four to a uint64; the first scale byte whose products can overflow)."""
    scales = np.arange(256, dtype=np.uint8)
    with np.errstate(over="ignore"):
        products = e8m0_half(scales)[:, None] * MXFP4_KVALUES[None, :]
    hot = int(np.flatnonzero(~np.isfinite(products).all(axis=1))[0])
    # The lane of a block that cannot overflow is its scale 2^(e - 127) (the E8M0 value, exact in BF16: the
    # census reads the same scales as ever); 0xFF's is never used (those blocks are hot).
    lane = _bf16(np.minimum(e8m0_half(scales), np.float32(2.0**126)) * np.float32(2))
    return lane.astype(np.uint64) * np.uint64(0x0001_0001_0001_0001), hot


_MXFP4_LANES4, MXFP4_FIRST_HOT = _mxfp4_tables()  # 0xFD: below it, 12 * 2^(e - 128) stays finite in fp32
_SMALLEST_SCALE = 0x0040  # BF16 2^-127, E8M0's smallest scale: the filler of a NaN-scale block's other lanes


def _mxfp4_lanes(data: np.ndarray, fields: BlockFields, byteorder: str) -> np.ndarray:
    """One BF16 lane per element of whole MXFP4 blocks ``data``, in the file's byte order (the engine swaps
    big-endian lanes as it does fp16 fields): the block's scale 2^(e - 127) wherever ggml's fp32 product is
    finite, ±Inf (its code's sign) where it overflows (scale bytes 0xFD, 0xFE), exactly as gguf.quants
    dequantizes; a 0xFF block is one NaN lane (its other lanes E8M0's smallest scale, so the census of the
    tensor's other blocks is not moved). The blocks that cannot overflow, all but a corrupt few, cost one
    broadcast of their scale."""
    rows = data.reshape(-1, fields.block_bytes)
    scales = rows[:, 0]
    lanes = np.repeat(_MXFP4_LANES4[scales], fields.count // 4)
    hot = np.flatnonzero(scales >= MXFP4_FIRST_HOT)
    if hot.size:
        out = lanes.view(np.uint16).reshape(-1, fields.count)
        out[hot] = _mxfp4_hot(rows[hot])
    if byteorder != "little":
        lanes = lanes.view(np.uint16).byteswap()
    return lanes.view(np.uint8)


def _mxfp4_hot(rows: np.ndarray) -> np.ndarray:
    """The lanes of blocks whose scale byte is MXFP4_FIRST_HOT or above: ggml's fp32 products computed."""
    codes = np.concatenate([rows[:, 1:17] & 0x0F, rows[:, 1:17] >> 4], axis=1)  # elements 0–15, then 16–31
    scales = rows[:, :1]
    with np.errstate(over="ignore", invalid="ignore"):
        products = e8m0_half(scales) * MXFP4_KVALUES[codes]
        scale = e8m0_half(scales) * np.float32(2)  # (0xFF's 2^128 is Inf here: its lanes are set below)
    lanes = np.where(np.isinf(products), _bf16(products), _bf16(scale))
    nan_scale = scales[:, 0] == MXFP4_NAN
    lanes[nan_scale] = _SMALLEST_SCALE
    lanes[nan_scale, 0] = 0x7FC0  # BF16 NaN
    return lanes


def block_span(fields: BlockFields, first_lane: int, lanes: int) -> tuple[int, int]:
    """(first block, number of blocks) holding lanes [first_lane, first_lane + lanes)."""
    first = first_lane // fields.count
    last = (first_lane + lanes - 1) // fields.count
    return first, last - first + 1
