"""Donor bytes → target bytes: byte order, and (``--allow-cast``) a float cast rounded as torch rounds.

A donor tensor's bytes are copied verbatim when donor and target agree on
dtype and byte order. A torch file saved on a big-endian machine keeps its
storages big-endian (its ``byteorder`` entry says so), so a donor and a target
of different byte orders need every lane swapped, and a donor of another float
dtype (an fp32 master copy for a bf16 checkpoint) needs a cast. Both happen
here, on little-endian unsigned lanes, in numpy (no torch in the repair path).

The casts are torch's ``tensor.to(dtype)`` on CPU, bit for bit (tests hold them
to torch): round to nearest, ties to even; subnormals kept, not flushed; and
torch's two-step path for ``float64`` to ``float16``/``bfloat16`` (c10's
``Half`` and ``BFloat16`` are built from a ``float``, so the value is rounded to
fp32 first, then again). A value that is not finite in the target after the
cast (an fp32 1e5 as fp16) is refused by the caller: ``nonfinite`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.model import TensorRef

# Float dtypes a cast may go between (both ways): what torch_dtype / .half() / .bfloat16() move between.
CASTABLE = ("F64", "F32", "F16", "BF16")


def swap_unit(dtype: str) -> int:
    """Bytes swapped together when the byte order changes: one float lane (a complex number's half),
    one integer element; 1 (nothing to swap) for bytes and sub-byte floats."""
    spec = DTYPES[dtype]
    return spec.lane_bits // 8 if spec.lane_bits else spec.itemsize


def swapped(raw: np.ndarray, dtype: str) -> np.ndarray:
    """``raw`` (uint8, whole elements) with each unit's bytes reversed: big ↔ little endian."""
    unit = swap_unit(dtype)
    if unit == 1:
        return raw
    return raw.view(f"<u{unit}").byteswap().view(np.uint8)


def can_cast(source: str, target: str) -> bool:
    return source in CASTABLE and target in CASTABLE


def as_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian ``dtype`` bytes as float32 values (exact for F16/BF16; rounded for F64, as torch does)."""
    if dtype == "F32":
        return raw.view("<f4")
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    if dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return raw.view("<f8").astype(np.float32)  # F64: round to nearest even (numpy's cast, IEEE)


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits, round to nearest, ties to even (c10::round_to_nearest_even)."""
    bits = values.view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    # Only NaN bit patterns (never cast: donors are finite) could carry past 32 bits.
    return ((bits + rounding) >> np.uint32(16)).astype("<u2")


def cast_bytes(raw: np.ndarray, source: str, target: str) -> np.ndarray:
    """Little-endian ``source`` elements (uint8) → little-endian ``target`` elements (uint8)."""
    if source == target:
        return raw
    with np.errstate(over="ignore"):  # an overflow is an Inf in the result: counted by the caller, refused
        return _cast(raw, source, target)


def _cast(raw: np.ndarray, source: str, target: str) -> np.ndarray:
    if target == "F64":  # every other castable dtype widens to fp32 exactly, and fp32 to fp64
        return as_float32(raw, source).astype("<f8").view(np.uint8)
    values = as_float32(raw, source)
    if target == "F32":
        return np.ascontiguousarray(values, dtype="<f4").view(np.uint8)
    if target == "F16":
        return values.astype("<f2").view(np.uint8)  # numpy's float→half rounds to nearest even, keeps subnormals
    return _bf16_bits(np.ascontiguousarray(values)).view(np.uint8)


def nonfinite(raw: np.ndarray, dtype: str) -> int:
    """How many little-endian ``dtype`` elements in ``raw`` are Inf or NaN (IEEE float dtypes)."""
    spec = DTYPES[dtype]
    lanes = raw.view(f"<u{spec.lane_bits // 8}")
    return int(np.count_nonzero((lanes & spec.exp_mask) == spec.exp_mask))


@dataclass(frozen=True)
class Conversion:
    """How a donor tensor's bytes become the target's: swap in, cast, swap out (each possibly nothing)."""

    source: str  # the donor's dtype
    target: str  # the target's dtype
    source_big: bool  # the donor's storage is big-endian
    target_big: bool

    @property
    def verbatim(self) -> bool:
        return self.source == self.target and (self.source_big == self.target_big or swap_unit(self.source) == 1)

    @property
    def cast(self) -> bool:
        return self.source != self.target

    def little(self, raw: np.ndarray) -> np.ndarray:
        """Donor bytes as little-endian donor elements."""
        return swapped(raw, self.source) if self.source_big else raw

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Donor bytes (uint8, whole elements, the donor's byte order) → target bytes (the target's order)."""
        out = cast_bytes(self.little(raw), self.source, self.target)
        return swapped(out, self.target) if self.target_big else out


def conversion(donor: TensorRef, target: TensorRef) -> Conversion:
    return Conversion(donor.dtype, target.dtype, donor.region.byteorder == "big", target.region.byteorder == "big")
