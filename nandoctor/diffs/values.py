"""One chunk of A compared with the same chunk of B, as numbers (kernels/decode.py decodes their bytes).

*Identical values across a dtype change* (fp32 → bf16) means: wherever the
two sides differ, both are finite and the difference is at most half a unit
in the last place of the lower-precision side at its value — exactly what
round-to-nearest produces. A value that overflowed to Inf, was clamped
(fp8 saturation) or was changed by more than the rounding is a change.
A real tensor against a complex one is compared as complex numbers, the real
side's imaginary parts 0 (:func:`as_complex`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.kernels.decode import INTEGER_VIEWS as _INTEGERS
from nandoctor.kernels.decode import PRECISION as _PRECISION


def decodable(dtype: str) -> bool:
    """Whether elements of ``dtype`` can be compared value by value (sub-byte floats cannot)."""
    return dtype in _PRECISION or dtype in _INTEGERS


def lanes_per_element(dtype: str) -> int:
    return DTYPES[dtype].lanes_per_element if dtype in _PRECISION else 1


def as_complex(lanes: np.ndarray) -> np.ndarray:
    """Real elements as complex lanes (value, 0): a real tensor is compared with a complex one as the complex
    tensor torch's ``real.to(complex)`` makes, so an imaginary part the real side does not hold is a change."""
    out = np.zeros(2 * lanes.size, dtype=lanes.dtype)
    out[0::2] = lanes
    return out


def narrower(dtype_a: str, dtype_b: str) -> tuple[str, int, int] | None:
    """("a" or "b", mantissa bits, smallest normal exponent) of the lower-precision float side of a
    dtype change; None when neither side rounds (integers both, or the same dtype)."""
    pa, pb = _PRECISION.get(dtype_a), _PRECISION.get(dtype_b)
    if dtype_a == dtype_b or (pa is None and pb is None):
        return None
    if pb is None or (pa is not None and pa[0] < pb[0]) or (pa is not None and pa[0] == pb[0] and pa[1] > pb[1]):
        assert pa is not None
        return ("a", *pa)
    return ("b", *pb)


@dataclass
class ChunkStats:
    """One chunk's comparison; indices are element indices within the chunk."""

    changed: int = 0
    abs_at: int = -1
    abs_a: float = 0.0
    abs_b: float = 0.0
    abs_amount: float = -1.0
    rel_at: int = -1
    rel_a: float = 0.0
    rel_b: float = 0.0
    rel_amount: float = -1.0
    # the largest |a - b| of all lanes finite on both sides, roundings included (abs_* ignores roundings)
    all_at: int = -1
    all_a: float = 0.0
    all_b: float = 0.0
    all_amount: float = -1.0
    rounding: float | None = None
    a_only: int = 0  # NaN/Inf in A where B is finite
    b_only: int = 0
    first_a_only: int = -1
    first_b_only: int = -1
    values_differ: bool = False  # some lanes' values differ at all (changed or rounded)


def _half_ulp(values: np.ndarray, mantissa: int, emin: int) -> np.ndarray:
    _, exponent = np.frexp(values)  # |v| = m * 2**e, m in [0.5, 1): floor(log2|v|) = e - 1
    top = np.where(values == 0, emin, np.maximum(exponent - 1, emin))
    return np.ldexp(1.0, top - mantissa - 1)


def differing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which lanes of ``x`` and ``y`` hold other values: NaN equals NaN (whatever its payload), -0 equals +0.
    Integers compare exactly, against floats and against each other: numpy compares an int64 or uint64 with a
    float (or an int64 with a uint64) as float64, where 2**53 + 1 equals 2**53 (an adversarial trial: a diff
    called int64 [2**53 + 1] and float64 [2**53] the same values)."""
    if x.dtype.kind in "iu" and y.dtype.kind in "iu" and {x.dtype.kind, y.dtype.kind} == {"i", "u"} \
            and max(x.dtype.itemsize, y.dtype.itemsize) == 8:
        signed, unsigned = (x, y) if x.dtype.kind == "i" else (y, x)
        return (signed < 0) | (signed.astype(np.uint64) != unsigned.astype(np.uint64))
    if x.dtype.kind in "iu" and y.dtype.kind == "f" and x.dtype.itemsize == 8:
        return _integer_differs(x, y)
    if y.dtype.kind in "iu" and x.dtype.kind == "f" and y.dtype.itemsize == 8:
        return _integer_differs(y, x)
    differ = x != y
    if x.dtype.kind in "fc" and y.dtype.kind in "fc":
        differ &= ~(np.isnan(x) & np.isnan(y))
    return differ


def _integer_differs(integers: np.ndarray, floats: np.ndarray) -> np.ndarray:
    """Which 64-bit integers the floats beside them do not hold exactly (a float holds an integer when it is
    integral, within the integer dtype's range, and converts to it)."""
    wide = floats.astype(np.float64)
    info = np.iinfo(integers.dtype)
    held = np.isfinite(wide) & (np.floor(wide) == wide) & (wide >= float(info.min)) & (wide < 2.0 ** (info.bits - (info.min < 0)))
    as_integers = np.zeros(integers.shape, dtype=integers.dtype)
    as_integers[held] = wide[held].astype(integers.dtype)
    return ~held | (as_integers != integers)


def compare(x: np.ndarray, y: np.ndarray, lanes: int, rounding: tuple[str, int, int] | None) -> ChunkStats:
    """Compare decoded lanes ``x`` (A) and ``y`` (B) of the same elements.

    NaN equals NaN (whatever its payload), -0 equals +0. With ``rounding`` (see :func:`narrower`),
    finite differences within half an ulp of the narrower side are rounding, not changes.
    """
    # NaN and Inf are expected here and handled explicitly: numpy's warnings about them (a signalling NaN
    # widened to float64, Inf - Inf, an F64 difference overflowing) must never reach the user's terminal.
    with np.errstate(all="ignore"):
        return _compare(x, y, lanes, rounding)


def _compare(x: np.ndarray, y: np.ndarray, lanes: int, rounding: tuple[str, int, int] | None) -> ChunkStats:
    stats = ChunkStats()
    where = np.flatnonzero(differing(x, y))
    if where.size == 0:
        return stats
    stats.values_differ = True
    xd, yd = x[where].astype(np.float64), y[where].astype(np.float64)
    fin_x, fin_y = np.isfinite(xd), np.isfinite(yd)
    both = fin_x & fin_y
    a_only, b_only = where[~fin_x & fin_y], where[fin_x & ~fin_y]
    stats.a_only = len(np.unique(a_only // lanes)) if lanes > 1 else a_only.size
    stats.b_only = len(np.unique(b_only // lanes)) if lanes > 1 else b_only.size
    if a_only.size:
        stats.first_a_only = int(a_only[0]) // lanes
    if b_only.size:
        stats.first_b_only = int(b_only[0]) // lanes
    delta = np.zeros_like(xd)
    np.subtract(xd, yd, out=delta, where=both)
    np.abs(delta, out=delta)
    changed = np.ones(where.size, dtype=bool)
    if rounding is not None:
        side, mantissa, emin = rounding
        narrow = yd if side == "b" else xd
        half = _half_ulp(np.where(both, narrow, 0.0), mantissa, emin)
        # (a tie rounds to the even neighbour, as torch's casts do: F32 1.00390625 is BF16 1.0, not 1.0078125, and
        # F32 65520 is F16 Inf, not 65504; an adversarial round's diff called the odd one "its rounding")
        even = np.fmod(np.abs(np.where(both, narrow, 0.0)) / (2 * half), 2.0) == 0
        rounded = both & ((delta < half) | ((delta == half) & even))
        changed = ~rounded
        if rounded.any():
            stats.rounding = float(delta[rounded].max())
    if both.any():
        k = int(np.argmax(np.where(both, delta, -1.0)))
        stats.all_at, stats.all_a, stats.all_b, stats.all_amount = int(where[k]) // lanes, xd[k], yd[k], float(delta[k])
    changed_lanes = where[changed]
    stats.changed = len(np.unique(changed_lanes // lanes)) if lanes > 1 else changed_lanes.size
    measured = changed & both
    if measured.any():
        k = int(np.argmax(np.where(measured, delta, -1.0)))
        stats.abs_at, stats.abs_a, stats.abs_b, stats.abs_amount = int(where[k]) // lanes, xd[k], yd[k], float(delta[k])
        relative = np.full_like(delta, -1.0)
        usable = measured & (yd != 0)  # relative to the reference, B
        np.divide(delta, np.abs(yd), out=relative, where=usable)
        if usable.any():
            k = int(np.argmax(relative))
            stats.rel_at, stats.rel_a, stats.rel_b, stats.rel_amount = (
                int(where[k]) // lanes, xd[k], yd[k], float(relative[k]))
    return stats
