"""A plainly stored float tensor read again as its elements' bits, a block of rows at a time.

For the few rules that ask which rows or slices of one tensor are zeros (or one value throughout) and so read that
tensor again after the scan: a token embedding beside a norm epsilon of 0 (zeronorm.py), a weight-norm direction
(weightnorm.py). A float zero is one whose bits but the sign are 0 (:func:`magnitude` masks the sign).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.model import TensorRef

# the unsigned view of each float dtype read so (sub-byte and block-quantized floats are not)
BITS = {"F64": "<u8", "F32": "<u4", "F16": "<u2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1"}
_BYTES_AT_ONCE = 8 << 20  # (a block of rows at a time: a very large tensor is never read whole)


def readable(ref: TensorRef) -> bool:
    """Whether ``ref`` can be read as whole rows of its own bytes: a float of :data:`BITS`, C-contiguous, little-endian,
    whole (no DCP chunk, no GGUF order, no quantizer's blocks), its elements inside its region."""
    region = ref.region
    if (ref.dtype not in BITS or not ref.shape or 0 in ref.shape or not ref.is_contiguous or ref.order != "C"
            or region.byteorder != "little" or region.blocks is not None or ref.chunk is not None):
        return False
    itemsize = DTYPES[ref.dtype].bits // 8
    return (ref.storage_offset + math.prod(ref.shape)) * itemsize <= region.nbytes


def magnitude(ref: TensorRef) -> np.ndarray:
    """The mask of every bit but the sign, in ``ref``'s unsigned view."""
    view = np.dtype(BITS[ref.dtype])
    return np.array((1 << (view.itemsize * 8 - 1)) - 1, dtype=view)


def row_blocks(ref: TensorRef) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, the bits of that block of rows, shaped ``(rows, *shape[1:])``) of a :func:`readable` ``ref``, in
    order. Raises OSError where the file cannot be read, or holds fewer bytes than its region."""
    shape, view = tuple(ref.shape), BITS[ref.dtype]
    itemsize = DTYPES[ref.dtype].bits // 8
    row_bytes = math.prod(shape[1:]) * itemsize
    at_once = max(1, _BYTES_AT_ONCE // max(1, row_bytes))
    start = ref.region.offset + ref.storage_offset * itemsize
    with open(ref.region.file, "rb") as handle:
        for first in range(0, shape[0], at_once):
            count = min(at_once, shape[0] - first)
            handle.seek(start + first * row_bytes)
            raw = handle.read(count * row_bytes)
            if len(raw) != count * row_bytes:
                raise OSError(f"{ref.region.file}: shorter than the region of {ref.name!r}")
            yield first, np.frombuffer(raw, dtype=view).reshape((count, *shape[1:]))


__all__ = ["BITS", "magnitude", "readable", "row_blocks"]
