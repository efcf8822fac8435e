"""Overflow on a cast: which finite values become Inf/NaN when cast to a smaller float.

``--target-dtype fp16`` asks: if this checkpoint is loaded with
``dtype=torch.float16`` (``torch_dtype=`` before transformers 4.56, or ``model.half()``), which weights blow up?
Casts round to nearest (ties to even), so a value overflows once its magnitude
reaches half an ulp above the target's largest finite value, not the largest
value itself: fp16's limit is 65520, not 65504.

Every float dtype's magnitude (the bits without the sign) grows with its
value, so "|x| overflows" is one integer comparison on the source bits:
``threshold_bits(source, target)`` gives the smallest source magnitude that
overflows, found once per (source, target) pair by bisection over the source's
own decoded values. The kernels then count ``threshold <= magnitude <
first-non-finite-magnitude`` and keep the largest finite magnitude, all on
integer views of the raw bytes.

fp8_e4m3fn has no Inf. A value above 464 (halfway between its largest finite
value 448 and the NaN code 0x7F) cannot be represented: a non-saturating cast
(the OCP spec's default, ``c10`` before saturation was added, many
hand-written kernels) makes it NaN, and torch 2.13's ``x.to(float8_e4m3fn)``
— checked on CPU — clamps it to ±448, even ``inf``. Either way the weight is
not what was trained, so nandoctor counts ``|x| > 464`` as overflow for
fp8_e4m3 (464 itself ties to even: 448). ``max_abs`` says how far out of
range the tensor goes. fp8_e5m2 does have Inf, and torch's cast produces it.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from nandoctor.dtypes import TARGET_DTYPE_NAMES, TORCH_DTYPE_NAMES, DTypeSpec, Family, target_dtype_name


@dataclass(frozen=True)
class TargetSpec:
    """A cast target: its name, and the magnitude from which a cast overflows."""

    name: str
    torch_name: str  # the torch dtype attribute, for tests and the live path
    limit: float  # overflow threshold of a round-to-nearest cast
    inclusive: bool  # True: |x| >= limit overflows (ties round to Inf); False: |x| > limit
    becomes: str  # what an overflowing value turns into
    max_finite: float  # the target's largest finite value, for messages

    @property
    def loads_as(self) -> str | None:
        """The dtype name (``F16``, ``BF16``) weights cast to this target load as: the ceiling HealthLimits lowers."""
        return TORCH_DTYPE_NAMES.get(self.torch_name)


TARGETS: dict[str, TargetSpec] = {
    # 65504 = (2 - 2^-10) * 2^15; its last mantissa bit is odd, so the tie at 65520 rounds up to Inf.
    "fp16": TargetSpec("fp16", "float16", 65520.0, True, "inf", 65504.0),
    # (2 - 2^-7) * 2^127 is bf16's max; the tie at (2 - 2^-8) * 2^127 rounds to Inf.
    "bf16": TargetSpec("bf16", "bfloat16", float((2 - 2**-8) * 2.0**127), True, "inf", float((2 - 2**-7) * 2.0**127)),
    # 448 = 0x7E; 464 ties to even (0x7E, down); above it the nearest code is 0x7F, which is NaN.
    "fp8_e4m3": TargetSpec("fp8_e4m3", "float8_e4m3fn", 464.0, False, "±448 (torch clamps) or NaN", 448.0),
    # 57344 = 0x7B, mantissa odd: the tie at 61440 rounds up to 0x7C = Inf.
    "fp8_e5m2": TargetSpec("fp8_e5m2", "float8_e5m2", 61440.0, True, "inf", 57344.0),
}

assert tuple(TARGETS) == TARGET_DTYPE_NAMES  # one list of target dtypes (dtypes.py), spelled out once here

def target(name: str) -> TargetSpec:
    """The TargetSpec for a user-given name; ValueError lists the choices otherwise."""
    key = target_dtype_name(name)
    if key is None:
        raise ValueError(f"unknown target dtype {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[key]


def checks_overflow(spec: DTypeSpec) -> bool:
    """Only floating tensors are cast by ``.half()`` / ``dtype=``; integers and bools stay."""
    return spec.family is not Family.FINITE


def magnitude_mask(spec: DTypeSpec) -> int:
    """Bits of one lane that hold the magnitude (E8M0 has no sign bit)."""
    if spec.family is Family.IEEE:
        return spec.sign_mask - 1
    return 0xFF if spec.name == "F8_E8M0" else 0x7F


def first_nonfinite_magnitude(spec: DTypeSpec) -> int:
    """Smallest magnitude that is not a finite value: every finite lane's magnitude is below it.

    FNUZ types keep their NaN at 0x80, whose magnitude is 0: it never reaches any
    threshold, so 0x80 (one past the largest magnitude) works for them.
    """
    if spec.family is Family.IEEE:
        return spec.exp_mask
    return {"F8_E4M3": 0x7F, "F8_E8M0": 0xFF}.get(spec.name, 0x80)


# Lane bits -> value through struct (exact, like numpy's view, and ~10x cheaper per call: the census
# decodes one value per tensor, a million times for a million small tensors).
_AS_FLOAT = {
    "64": (struct.Struct("<Q").pack, struct.Struct("<d").unpack),
    "32": (struct.Struct("<I").pack, struct.Struct("<f").unpack),
    "16": (struct.Struct("<H").pack, struct.Struct("<e").unpack),
}
_AS_FLOAT_BY_WIDTH = {64: _AS_FLOAT["64"], 32: _AS_FLOAT["32"]}


def decode_magnitude(spec: DTypeSpec, bits: int) -> float:
    """The (non-negative) value of a finite lane whose magnitude bits are ``bits``."""
    if spec.lane_bits in (64, 32):  # (first, and with no string key: asked once per tensor)
        pack, unpack = _AS_FLOAT_BY_WIDTH[spec.lane_bits]
        return float(unpack(pack(bits))[0])
    return _decode_narrow(spec, bits)


def _decode_narrow(spec: DTypeSpec, bits: int) -> float:
    name = spec.name
    if name in ("F16", "C32"):  # C32: complex32's two fp16 lanes
        pack, unpack = _AS_FLOAT["16"]
        return float(unpack(pack(bits))[0])
    if name == "BF16":
        pack, unpack = _AS_FLOAT["32"]
        return float(unpack(pack(bits << 16))[0])
    if name == "F8_E5M2":  # the top byte of an fp16
        pack, unpack = _AS_FLOAT["16"]
        return float(unpack(pack(bits << 8))[0])
    if name == "F8_E8M0":
        return float(2.0 ** (bits - 127))
    _exp_bits, man_bits, bias = {"F8_E4M3": (4, 3, 7), "F8_E4M3FNUZ": (4, 3, 8), "F8_E5M2FNUZ": (5, 2, 16)}[name]
    exponent, mantissa = bits >> man_bits, bits & ((1 << man_bits) - 1)
    if exponent == 0:
        return mantissa * 2.0 ** (1 - bias - man_bits)
    return (1 + mantissa / (1 << man_bits)) * 2.0 ** (exponent - bias)


@functools.cache
def threshold_bits(spec: DTypeSpec, tgt: TargetSpec) -> int:
    """Smallest magnitude (source bits) that overflows ``tgt``; ``first_nonfinite_magnitude`` if none does."""
    lo, hi = 0, first_nonfinite_magnitude(spec)  # answer in [lo, hi]; hi means "nothing overflows"

    def overflows(bits: int) -> bool:
        value = decode_magnitude(spec, bits)
        return value >= tgt.limit if tgt.inclusive else value > tgt.limit

    while lo < hi:
        mid = (lo + hi) // 2
        if overflows(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def can_overflow(spec: DTypeSpec, tgt: TargetSpec) -> bool:
    """Whether some finite value of ``spec`` overflows a cast to ``tgt``: F32 or BF16 → fp16 can, F16 → fp16 or
    BF16 → bf16 cannot (then a scan for ``tgt`` counts nothing in that dtype and can be spared)."""
    return checks_overflow(spec) and threshold_bits(spec, tgt) < first_nonfinite_magnitude(spec)
