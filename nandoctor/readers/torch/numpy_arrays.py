"""numpy arrays pickled inside a torch file, read from the pickle as data and counted.

``torch.save({"w": np.array([1.0, nan])})`` pickles the array through numpy's own
reduce: ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in numpy 2) with a
BUILD state ``(version, shape, dtype, is_fortran, raw bytes)``, the dtype a
``numpy.dtype(code, align, copy)`` with its byte order in its own state, and the bytes
(pickle protocol 2, torch's) as ``_codecs.encode(text, "latin1")``. The restricted
unpickler turns all three globals into inert placeholders, so the arrays are there,
recorded, and nothing of numpy's ran. This module reads them back as plain values
(``str.encode("latin1")``, ``np.frombuffer``): floating arrays are counted for
NaN/+Inf/-Inf, so that a torch file whose numpy arrays hold NaN is never called clean
(``torch.load(weights_only=False)`` loads them). Integer and bool arrays (a numpy RNG
state) cannot hold NaN and are left alone. An array that cannot be decoded is a problem:
nandoctor did not read it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from nandoctor.readers.torch.stubs import Placeholder

RECONSTRUCT = frozenset({"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"})
_DTYPE = frozenset({"numpy.dtype"})
_ENCODE = frozenset({"_codecs.encode", "codecs.encode"})
_FLOAT_CODE = re.compile(r"[fc](2|4|8|16)")  # float16/32/64, complex64/128 (numpy's dtype.str without the order)
_MAX_BYTES = 1 << 31


@dataclass(frozen=True)
class ArrayCount:
    """One numpy floating array of the pickle: its name, dtype, element count and non-finite values."""

    name: str
    dtype: str
    size: int
    nan: int
    posinf: int
    neginf: int


def is_array(value: Any) -> bool:
    """A pickled numpy array (the placeholder numpy's reconstruct call became)."""
    return isinstance(value, Placeholder) and value.global_name in RECONSTRUCT


def count(name: str, array: Placeholder) -> ArrayCount | None:
    """The counts of a pickled numpy array; None for one that cannot hold NaN (integers, bools, strings,
    objects). ValueError, saying why, for a floating array whose pickle cannot be read back as data."""
    state = array.state
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise ValueError("its BUILD state is not numpy's (shape, dtype, order, bytes)")
    shape, dtype, _fortran, raw = state[-4:]
    code, order = _dtype_of(dtype)
    if code is None:
        return None
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError(f"its shape {shape!r} is not a tuple of sizes")
    data = _bytes_of(raw)
    size = math.prod(shape)
    itemsize = int(code[1:])
    if len(data) != size * itemsize:
        raise ValueError(f"{len(data):,} bytes for {size:,} values of {itemsize} bytes")
    import numpy as np

    values = np.frombuffer(data, dtype=np.dtype(order + code))
    if code[0] == "c":  # complex: an element is NaN when either half is, else Inf when either half is
        parts = values.view(np.dtype(order + f"f{itemsize // 2}")).reshape(-1, 2)
        nan_rows = np.isnan(parts).any(axis=1)
        inf = ~nan_rows & np.isinf(parts).any(axis=1)
        signs = np.where(np.isinf(parts[:, 0]), parts[:, 0], parts[:, 1])
        return ArrayCount(name, order + code, size, int(nan_rows.sum()), int((inf & (signs > 0)).sum()),
                          int((inf & (signs < 0)).sum()))
    return ArrayCount(name, order + code, size, int(np.isnan(values).sum()), int(np.isposinf(values).sum()),
                      int(np.isneginf(values).sum()))


def _dtype_of(dtype: Any) -> tuple[str | None, str]:
    """(a floating type code such as ``f4``, or None for any other type; the byte order ``<``/``>``)."""
    if not (isinstance(dtype, Placeholder) and dtype.global_name in _DTYPE and dtype.args):
        raise ValueError("its dtype is not a numpy.dtype")
    code = dtype.args[0]
    if isinstance(code, bytes):
        code = code.decode("latin1")
    if not isinstance(code, str):
        raise ValueError(f"its dtype code {code!r} is not text")
    code = code.lstrip("<>=|")
    if not _FLOAT_CODE.fullmatch(code):
        return None, "<"
    state = dtype.state
    order = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "=") else "<"
    return code, ">" if order == ">" else "<"


def _bytes_of(raw: Any) -> bytes:
    """The array's bytes: raw ``bytes`` (pickle protocol 3+) or protocol 2's ``_codecs.encode(text, "latin1")``."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, Placeholder) and raw.global_name in _ENCODE and len(raw.args) == 2:
        text, encoding = raw.args
        if isinstance(text, str) and isinstance(encoding, str) and encoding.lower().replace("-", "") == "latin1":
            if len(text) > _MAX_BYTES:
                raise ValueError("its bytes are larger than any array a pickle holds")
            try:
                return text.encode("latin1")
            except UnicodeEncodeError:
                raise ValueError("its bytes are not latin-1 text") from None
    raise ValueError("its bytes are not stored as bytes")
