"""What each checkpoint dtype can hold, and where its NaN/Inf bit patterns live.

Names are safetensors' (``F32``, ``BF16`` …); readers of other formats map
their own names onto these. Facts come from ../shared/FORMATS.md and were
checked against torch for every 8-bit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Family(Enum):
    IEEE = "ieee"  # exponent all ones = Inf (mantissa 0) or NaN (mantissa != 0)
    NAN_CODES = "nan_codes"  # no Inf; NaN only at listed codes
    FINITE = "finite"  # integers, bool, sub-byte floats: cannot hold NaN/Inf


@dataclass(frozen=True)
class DTypeSpec:
    name: str
    bits: int  # bits per element (4 and 6 for the sub-byte floats)
    family: Family
    lane_bits: int = 0  # width of the unsigned word the bit tests run on
    exp_mask: int = 0  # IEEE: exponent bits of one lane
    sign_mask: int = 0  # IEEE: sign bit of one lane
    nan_codes: tuple[int, ...] = ()  # NAN_CODES: the byte values that are NaN

    @property
    def can_hold_nonfinite(self) -> bool:
        return self.family is not Family.FINITE

    @property
    def itemsize(self) -> int:
        """Bytes per element (1 for the sub-byte floats' packed bytes)."""
        return max(1, self.bits // 8)

    @property
    def lanes_per_element(self) -> int:
        """Complex numbers are two float lanes per element."""
        return max(1, self.bits // self.lane_bits) if self.lane_bits else 1


def _ieee(name: str, bits: int, lane: int, exp: int, sign: int) -> DTypeSpec:
    return DTypeSpec(name, bits, Family.IEEE, lane, exp, sign)


def _finite(name: str, bits: int) -> DTypeSpec:
    return DTypeSpec(name, bits, Family.FINITE)


DTYPES: dict[str, DTypeSpec] = {
    "F64": _ieee("F64", 64, 64, 0x7FF0000000000000, 0x8000000000000000),
    "F32": _ieee("F32", 32, 32, 0x7F800000, 0x80000000),
    "F16": _ieee("F16", 16, 16, 0x7C00, 0x8000),
    "BF16": _ieee("BF16", 16, 16, 0x7F80, 0x8000),
    "C32": _ieee("C32", 32, 16, 0x7C00, 0x8000),  # torch.complex32: two fp16 lanes
    "C64": _ieee("C64", 64, 32, 0x7F800000, 0x80000000),
    "C128": _ieee("C128", 128, 64, 0x7FF0000000000000, 0x8000000000000000),
    "F8_E5M2": _ieee("F8_E5M2", 8, 8, 0x7C, 0x80),
    "F8_E4M3": DTypeSpec("F8_E4M3", 8, Family.NAN_CODES, 8, nan_codes=(0x7F, 0xFF)),
    "F8_E4M3FNUZ": DTypeSpec("F8_E4M3FNUZ", 8, Family.NAN_CODES, 8, nan_codes=(0x80,)),
    "F8_E5M2FNUZ": DTypeSpec("F8_E5M2FNUZ", 8, Family.NAN_CODES, 8, nan_codes=(0x80,)),
    "F8_E8M0": DTypeSpec("F8_E8M0", 8, Family.NAN_CODES, 8, nan_codes=(0xFF,)),
    "BOOL": _finite("BOOL", 8),
    "U8": _finite("U8", 8),
    "I8": _finite("I8", 8),
    "I16": _finite("I16", 16),
    "U16": _finite("U16", 16),
    "I32": _finite("I32", 32),
    "U32": _finite("U32", 32),
    "I64": _finite("I64", 64),
    "U64": _finite("U64", 64),
    "F4": _finite("F4", 4),
    "F6_E2M3": _finite("F6_E2M3", 6),
    "F6_E3M2": _finite("F6_E3M2", 6),
}

# Integer dtypes whose values can pass a float weight's exploded ceiling (2^14 at the least) once a loader
# casts them to the model's float dtype (checkpoint/loadability.cast_to_float); I8/U8 values never can.
CAST_INTEGERS = frozenset(("I16", "U16", "I32", "U32", "I64", "U64"))
INTEGERS = CAST_INTEGERS | {"I8", "U8"}

# torch dtype names (``torch.<name>``, as pickles and live tensors spell them) → the names above.
# One table for the torch file reader and for live tensors, so both report the same words.
TORCH_DTYPE_NAMES: dict[str, str] = {
    "float64": "F64", "double": "F64",
    "float32": "F32", "float": "F32",
    "float16": "F16", "half": "F16",
    "bfloat16": "BF16",
    "complex32": "C32", "chalf": "C32",
    "complex64": "C64", "cfloat": "C64",
    "complex128": "C128", "cdouble": "C128",
    "int64": "I64", "long": "I64",
    "int32": "I32", "int": "I32",
    "int16": "I16", "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "quint8": "U8", "qint8": "I8", "qint32": "I32", "quint4x2": "U8", "quint2x4": "U8",
    # Two fp4 codes packed per byte; torch counts bytes, so the shape is in bytes too.
    "float4_e2m1fn_x2": "U8",
    # Sub-byte integers and raw bit types: one or two bytes per element, never NaN.
    **{f"uint{n}": "U8" for n in range(1, 8)},
    **{f"int{n}": "I8" for n in range(1, 8)},
    "bits8": "U8", "bits1x8": "U8", "bits2x4": "U8", "bits4x2": "U8", "bits16": "U16",
}

# The dtypes the safetensors format itself defines (C32 and C128 are only reachable from torch files).
SAFETENSORS_DTYPES = frozenset(DTYPES) - {"C32", "C128"}
# Of those, the ones safetensors.torch cannot load: torch (2.13) has no 6-bit float, so ``load_file`` and
# ``safe_open(framework="pt").get_tensor`` (what transformers calls) fail with "Dtype not understood" on them.
# Every other safetensors dtype loads (F4 as float4_e2m1fn_x2, F8_E8M0 as float8_e8m0fnu, U16/U32/U64);
# tests/test_safetensors_torch_dtypes.py holds this set to safetensors.torch itself.
TORCH_UNLOADABLE_SAFETENSORS = frozenset({"F6_E2M3", "F6_E3M2"})
# Of the ones it loads, those it loads as a tensor torch cannot cast to any other dtype: F4 becomes
# float4_e2m1fn_x2 (two codes a byte: the last dimension halved), for which torch has no copy kernel, so
# from_pretrained cannot put it into a float parameter (checkpoint/loadability.uncastable). Also held to
# safetensors.torch by tests/test_safetensors_torch_dtypes.py.
TORCH_UNCASTABLE_SAFETENSORS = frozenset({"F4"})


def byte_length(dtype: DTypeSpec, numel: int) -> int | None:
    """Bytes for ``numel`` elements, or None when they are not a whole number of bytes."""
    total_bits = numel * dtype.bits
    if total_bits % 8:
        return None
    return total_bits // 8


# The dtypes ``--target-dtype`` casts to (their overflow arithmetic: kernels/targets.py). Here, with no
# numpy, so the command line can offer them without importing the kernels.
TARGET_DTYPE_NAMES: tuple[str, ...] = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")
# Other names users type for them (torch's and config.json's spelling among them), mapped onto TARGET_DTYPE_NAMES.
TARGET_DTYPE_ALIASES: dict[str, str] = {
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8_e4m3", "f8_e4m3": "fp8_e4m3", "e4m3": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2", "f8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2",
}


def target_dtype_name(name: str) -> str | None:
    """The TARGET_DTYPE_NAMES entry a user's ``name`` means (any case, ``torch.`` or not, ``-`` for ``_``), or None."""
    key = name.strip().lower().replace("-", "_").removeprefix("torch.")
    key = TARGET_DTYPE_ALIASES.get(key, key)
    return key if key in TARGET_DTYPE_NAMES else None
