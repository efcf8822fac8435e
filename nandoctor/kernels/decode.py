"""Raw element bytes as numbers, for any dtype with whole-byte elements.

numpy has no bf16 or fp8, so elements are decoded from their bit patterns: bf16 is the top half of an fp32, fp8
codes go through a 256-entry table built from dtypes.py/targets.py (the same decoding the census trusts).
Integers keep their own type so that large int64 values stay exact. diff compares what this decodes
(diffs/values.py); the scan reads a quantizer's scales with it (engine/scaled.py).
"""

from __future__ import annotations

import functools

import numpy as np

from nandoctor.dtypes import DTYPES, Family
from nandoctor.kernels.targets import decode_magnitude, first_nonfinite_magnitude, magnitude_mask

# Float formats: (mantissa bits, exponent of the smallest normal value) of one lane.
PRECISION: dict[str, tuple[int, int]] = {
    "F64": (52, -1022), "C128": (52, -1022), "F32": (23, -126), "C64": (23, -126),
    "F16": (10, -14), "C32": (10, -14), "BF16": (7, -126),
    "F8_E4M3": (3, -6), "F8_E5M2": (2, -14), "F8_E4M3FNUZ": (3, -7), "F8_E5M2FNUZ": (2, -15),
    "F8_E8M0": (0, -127),
}
INTEGER_VIEWS = {"BOOL": "<u1", "U8": "<u1", "I8": "<i1", "I16": "<i2", "U16": "<u2", "I32": "<i4",
                 "U32": "<u4", "I64": "<i8", "U64": "<u8"}
_NATIVE_FLOATS = {"F64": "<f8", "C128": "<f8", "F32": "<f4", "C64": "<f4", "F16": "<f2", "C32": "<f2"}


@functools.cache
def _table(name: str) -> np.ndarray:
    """float64 value of each of the 256 codes of an 8-bit float."""
    spec = DTYPES[name]
    mask = magnitude_mask(spec)
    limit = first_nonfinite_magnitude(spec)
    out = np.empty(256, dtype=np.float64)
    for code in range(256):
        magnitude = code & mask
        negative = bool(code & 0x80) and mask != 0xFF
        if code in spec.nan_codes:
            value = float("nan")
        elif spec.family is Family.IEEE and magnitude >= limit:
            value = float("inf") if magnitude == spec.exp_mask else float("nan")
        else:
            value = decode_magnitude(spec, magnitude)
        out[code] = -value if negative else value
    return out


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian element bytes as one number per lane (complex numbers: two lanes per element)."""
    if dtype in INTEGER_VIEWS:
        return raw.view(INTEGER_VIEWS[dtype])
    if dtype in _NATIVE_FLOATS:
        return raw.view(_NATIVE_FLOATS[dtype])
    if dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype in PRECISION:
        return _table(dtype)[raw]
    raise ValueError(f"no element decoding for dtype {dtype}")


__all__ = ["INTEGER_VIEWS", "PRECISION", "decode"]
