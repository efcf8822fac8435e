"""Quantized tensors (``torch._utils._rebuild_qtensor``): the scale and zero point that give them their values.

A quantized tensor's storage holds integers, which cannot be NaN; its real
values are ``(q - zero_point) * scale``, so a NaN or infinite per-tensor scale
makes every value NaN/Inf (torch loads such a file and dequantizes to NaN).
That scale is a float in the pickle itself, so it is scanned where it lies:
the 8 big-endian bytes of its ``BINFLOAT`` opcode become a one-element F64
tensor ``<name>.<scale>``, a finding like any other. What cannot be pointed at or counted is refused: a non-finite
scale written as text, a finite scale whose values overflow float32 (torch
dequantizes to float32, so they are Inf), a zero point that is not an integer
or lies outside the quantized type's range. Per-channel scales and zero
points are tensors of their own and are scanned like any other.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nandoctor.model import PICKLED_FLOAT, QUANTIZER_SCALE, Region, TensorRef
from nandoctor.readers.torch.prescan import LARGE_FLOAT
from nandoctor.readers.torch.stubs import PickleFormatError, RefusesBuild, TensorStub

# Integer range of each quantized storage's elements.
_QRANGE = {"I8": (-128, 127), "U8": (0, 255), "I32": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class QScheme(RefusesBuild):
    """``torch.per_tensor_affine`` and its kin, as the pickle names them."""

    name: str


@dataclass(frozen=True)
class Quantizer:
    scheme: str
    scale: float | None  # per-tensor schemes only
    zero_point: int | None
    channels: tuple[TensorStub, TensorStub] | None = None  # per-channel schemes: the scales and zero points tensors


def check_quantizer(params: Any, stub: TensorStub) -> Quantizer:
    """``quantizer_params`` of a quantized tensor, checked; a non-finite scale is kept (it is a finding)."""
    if not isinstance(params, tuple) or not params or not isinstance(params[0], QScheme):
        raise PickleFormatError("a quantized tensor's parameters do not start with a torch quantization scheme")
    scheme = params[0].name
    if not scheme.startswith("per_tensor"):
        # (scheme, scales, zero_points, axis): tensors, built by their own rebuild calls and registered.
        if len(params) != 4 or not isinstance(params[1], TensorStub) or not isinstance(params[2], TensorStub):
            raise PickleFormatError(f"a {scheme} quantized tensor's scales and zero points must be tensors")
        return Quantizer(scheme, None, None, (params[1], params[2]))
    if len(params) != 3:
        raise PickleFormatError(f"a {scheme} quantized tensor needs (scheme, scale, zero point)")
    _, scale, zero_point = params
    if type(scale) not in (float, int) or type(zero_point) is not int:
        raise PickleFormatError("a quantized tensor's scale must be a number and its zero point an integer")
    low, high = _QRANGE.get(stub.dtype, (-(2**63), 2**63 - 1))
    if not low <= zero_point <= high:
        raise PickleFormatError(
            f"a quantized tensor's zero point {zero_point} lies outside its {stub.dtype} range [{low}, {high}]: "
            "its values cannot be computed"
        )
    # (a finite scale past float32's range, whose dequantized values are Inf, is kept too: scale_refs makes it a
    # tensor the exploded rule fails, as a huge one; refused before, "0 tensors read", where torch loads the file)
    return Quantizer(scheme, float(scale), zero_point)


def scale_refs(path: str, named: list[tuple[str, TensorStub]], float_offsets: Mapping[bytes, int]) -> list[TensorRef]:
    """One F64 tensor per per-tensor scale that is non-finite or at least ``LARGE_FLOAT`` (every value it scales is
    that large or Inf: a trial's scale of 1e30 was CLEAN): the bytes of the BINFLOAT opcode that wrote it, judged as
    the weight's values are (NaN/Inf; exploded above the ceiling).

    ``float_offsets`` maps each such BINFLOAT's 8 bytes to where they lie in the file. Raises PickleFormatError for
    a non-finite scale that no BINFLOAT wrote.
    """
    scales = [(f"{name}{QUANTIZER_SCALE}", scale) for name, stub in named
              if stub.quantizer is not None and (scale := stub.quantizer.scale) is not None
              and (not math.isfinite(scale) or abs(scale) >= LARGE_FLOAT)]
    return pickled_float_refs(path, scales, float_offsets)


def pickled_float_refs(path: str, floats: list[tuple[str, float]], float_offsets: Mapping[bytes, int]) -> list[TensorRef]:
    """One F64 tensor of no dimensions per pickled Python float (``floats``: name, value; non-finite or huge), at the 8
    bytes of the BINFLOAT opcode that wrote it (a quantizer's scale, an optimizer's learning rate), so that it is
    counted, judged and located as a tensor's element is. Raises PickleFormatError for one that no BINFLOAT wrote."""
    refs = []
    for name, value in floats:
        at = float_offsets.get(struct.pack(">d", value))
        if at is None:
            raise PickleFormatError(f"{name!r} is a non-finite or huge float that is not stored as a binary float; it "
                                    "cannot be pointed at")
        refs.append(TensorRef(name, "F64", (), Region(path, at, 8, "F64", f"{PICKLED_FLOAT} {name}", byteorder="big"), 0, ()))
    return refs
