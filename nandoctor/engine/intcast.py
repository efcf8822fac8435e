"""Integer tensors that ``from_pretrained`` casts to float, judged as the floats they become.

transformers casts every stored tensor to its parameter's dtype: a model weight stored as I32 (a broken
conversion, a crafted file) loads as float16, where 100000 is Inf, and ``generate`` dies although no stored
byte is NaN. checkpoint/loadability.cast_to_float says which tensors are cast; here their values are read
(integers: a few, and small) and counted as a float tensor's census counts them: the largest magnitude,
values past the target dtype's range (``overflow``, with a target dtype: config.json's float16 or
``--target-dtype``) and values above the exploded ceiling of the dtype they load as (``exploded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nandoctor.kernels.census import HealthLimits
from nandoctor.kernels.targets import TargetSpec
from nandoctor.model import ScanProblem, TensorRef, TensorResults

_NUMPY = {"BOOL": "u1", "I8": "i1", "U8": "u1", "I16": "i2", "U16": "u2", "I32": "i4", "U32": "u4", "I64": "i8", "U64": "u8"}
_BLOCK = 1 << 22  # elements read at a time


def judged_casts(
    tensors: TensorResults, cast: Sequence[TensorRef], cast_to: TargetSpec | None, limits: HealthLimits,
) -> tuple[TensorResults, list[ScanProblem]]:
    """``tensors`` with the integer tensors ``cast`` counted as the floats from_pretrained makes of them
    (``max_abs``, ``overflow`` for ``cast_to``, ``exploded`` above the ceiling of the dtype they load as:
    ``cast_to``'s, else fp32's); a problem for one that cannot be read."""
    if not cast:
        return tensors, []
    wanted = {(ref.region.file, ref.name): ref for ref in cast}
    rows = {key: i for i, key in enumerate(zip(tensors.refs.files, tensors.refs.names)) if key in wanted}
    ceiling = limits.ceiling("F32", {"fp16": "F16", "bf16": "BF16"}.get(cast_to.name) if cast_to else None)
    problems: list[ScanProblem] = []
    max_abs, exact, overflow, exploded = (list(c) for c in (tensors.max_abs, tensors.max_abs_exact, tensors.overflow,
                                                             tensors.exploded))
    for key, i in rows.items():
        try:
            top, beyond, above = _count(wanted[key], cast_to, ceiling)
        except (OSError, ValueError) as exc:
            problems.append(ScanProblem(key[0], f"cannot read tensor {key[1]!r}: {exc}"))
            continue
        max_abs[i], exact[i], overflow[i], exploded[i] = top, True, beyond, above
    columns = {"max_abs": max_abs, "max_abs_exact": exact, "overflow": overflow, "exploded": exploded}
    return tensors.with_columns(columns), problems


def _count(ref: TensorRef, cast_to: TargetSpec | None, ceiling: float) -> tuple[float, int, int]:
    """(largest magnitude, values a cast to ``cast_to`` overflows, other values above ``ceiling``) of one
    integer tensor: its own elements when it reads them in order, else its whole storage."""
    region = ref.region
    dtype = np.dtype(("<" if region.byteorder == "little" else ">") + _NUMPY[ref.dtype])
    if ref.is_contiguous:
        start, count = region.offset + ref.storage_offset * dtype.itemsize, ref.numel
    else:
        start, count = region.offset, region.nbytes // dtype.itemsize
    limit = (cast_to.limit, cast_to.inclusive) if cast_to is not None else None
    top = beyond = above = 0
    for at in range(0, count, _BLOCK):
        n = min(_BLOCK, count - at)
        values = np.fromfile(Path(region.file), dtype=dtype, count=n, offset=start + at * dtype.itemsize)
        if values.size != n:
            raise ValueError(f"the file ends inside it ({values.size:,} of {n:,} values)")
        high, low = int(values.max()), int(values.min())
        top = max(top, high, -low)
        if max(high, -low) <= ceiling:
            continue  # (the common case: every value small)
        magnitude = np.abs(values.astype(np.float64))  # exact below 2^53; above, far past any ceiling anyway
        over = np.zeros(n, dtype=bool) if limit is None else (
            magnitude >= limit[0] if limit[1] else magnitude > limit[0])
        beyond += int(np.count_nonzero(over))
        above += int(np.count_nonzero((magnitude > ceiling) & ~over))  # (an overflow is that finding's alone)
    return float(top), beyond, above


__all__ = ["judged_casts"]
