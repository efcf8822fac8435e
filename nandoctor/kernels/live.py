"""Counting NaN/Inf in live torch tensors, on their own device, with no copy to the host.

The building block of ``scan_module`` / ``scan_state_dict``: a CUDA tensor is
tested on the GPU with the torch kernel's bit tests
(:mod:`nandoctor.kernels.torch_kernel`), and only a handful of scalars cross
to the host; a CPU tensor's memory is handed, uncopied, to the numpy kernel,
which is far faster there than torch's CPU element-wise ops. Large tensors are
walked in slices so that temporaries stay small next to the tensor itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from nandoctor.dtypes import DTYPES, TORCH_DTYPE_NAMES, DTypeSpec
from nandoctor.kernels import CLEAN, ChunkCounts, OverflowCounts
from nandoctor.kernels.census import bulk_rank
from nandoctor.kernels.cpu import CpuKernel
from nandoctor.kernels.targets import decode_magnitude, target, threshold_bits
from nandoctor.kernels.torch_kernel import LANE_DTYPES, lane_counts, lane_overflow
from nandoctor.model import Outliers

_NUMPY = CpuKernel()
SLICE_LANES = 1 << 26  # 64 Mi lanes per step: temporaries of a few hundred MB at most


def spec_of(t: torch.Tensor) -> DTypeSpec | None:
    """The bit layout of ``t``'s dtype, or None when it cannot hold NaN/Inf."""
    spec = DTYPES.get(TORCH_DTYPE_NAMES.get(str(t.dtype).removeprefix("torch."), ""))
    return spec if spec is not None and spec.can_hold_nonfinite else None


def _slices(t: torch.Tensor, spec: DTypeSpec) -> Iterator[tuple[int, torch.Tensor]]:
    """(first lane, flat integer lanes) in C order, about SLICE_LANES at a time.

    A contiguous tensor is sliced as a view; a strided one is copied (on its own
    device) a block of leading rows at a time, so the copy stays small too.
    """
    if t.is_complex():
        t = torch.view_as_real(t)
    lane_dtype = LANE_DTYPES[spec.lane_bits]
    if t.is_contiguous() or t.dim() == 0:
        flat = t.reshape(-1).view(lane_dtype)
        for start in range(0, flat.numel(), SLICE_LANES):
            yield start, flat[start : start + SLICE_LANES]
        return
    row = t[0].numel() if t.shape[0] else 0
    rows = max(1, SLICE_LANES // max(1, row))
    for first_row in range(0, t.shape[0], rows):
        block = t[first_row : first_row + rows].reshape(-1)  # a device-side copy of these rows only
        yield first_row * row, block.view(lane_dtype)


def count_tensor(t: torch.Tensor, backend: str = "auto") -> ChunkCounts:
    """NaN, +Inf, -Inf counts of ``t`` and the C-order index of its first non-finite element.

    Runs on ``t.device``; ``first_bad`` is -1 when every element is finite. Integer
    and bool tensors are CLEAN by construction. ``backend="torch"`` uses the torch
    bit tests on CPU tensors too (the CUDA code path, for tests).
    """
    spec = spec_of(t)
    if spec is None or t.numel() == 0:
        return CLEAN
    on_cpu = t.device.type == "cpu" and backend == "auto"
    if t.is_complex() and not on_cpu:
        return _complex_counts(t.detach())
    nan = posinf = neginf = 0
    first = -1
    for start, lanes in _slices(t.detach(), spec):
        if on_cpu:  # the numpy kernel reads the tensor's own memory, ~20x faster than torch's CPU ops
            c = _NUMPY.count(lanes.contiguous().view(torch.uint8).numpy(), spec)
            n, p, m, f = c.nan, c.posinf, c.neginf, c.first_bad * spec.lanes_per_element
        else:
            n, p, m, f = lane_counts(lanes, spec).tolist()
        nan, posinf, neginf = nan + n, posinf + p, neginf + m
        if first < 0 and f >= 0:
            first = (start + f) // spec.lanes_per_element
    if nan + posinf + neginf == 0:
        return CLEAN
    return ChunkCounts(nan, posinf, neginf, first)


def _complex_counts(t: torch.Tensor) -> ChunkCounts:
    """Per element, on the tensor's device: NaN when either part is, else the first non-finite part's sign
    (real before imaginary), as the file kernels count complex elements (kernels.per_element)."""
    parts = torch.view_as_real(t).reshape(-1, 2)
    real, imag = parts[:, 0], parts[:, 1]
    nan = torch.isnan(real) | torch.isnan(imag)
    sign = torch.where(torch.isinf(real), real, torch.where(torch.isinf(imag), imag, torch.zeros_like(real)))
    pos, neg = ~nan & (sign > 0), ~nan & (sign < 0)
    bad = nan | pos | neg
    n, p, m, any_bad = (int(x) for x in torch.stack([nan.sum(), pos.sum(), neg.sum(), bad.any()]).tolist())
    if not any_bad:
        return CLEAN
    return ChunkCounts(n, p, m, int(torch.nonzero(bad)[0]))


def overflow_tensor(t: torch.Tensor, target_dtype: str, backend: str = "auto") -> tuple[int, float | None]:
    """(finite values that overflow when cast to ``target_dtype``, largest finite magnitude or None)."""
    spec = spec_of(t)
    if spec is None or t.numel() == 0:
        return 0, None
    threshold = threshold_bits(spec, target(target_dtype))
    total = OverflowCounts()
    on_cpu = t.device.type == "cpu" and backend == "auto"
    for _, lanes in _slices(t.detach(), spec):
        if on_cpu:
            total = total.merge(_NUMPY.overflow(lanes.contiguous().view(torch.uint8).numpy(), spec, threshold))
        else:
            over, top = lane_overflow(lanes, spec, threshold).tolist()
            total = total.merge(OverflowCounts(over, top))
    return total.overflow, decode_magnitude(spec, total.max_bits) if total.max_bits >= 0 else None


# Floating dtypes whose min/max torch reduces in one read (fp8 and complex take the exact path).
_MINMAX_DTYPES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


def quick_stats(tensors: list[torch.Tensor]) -> list[tuple[float, float, int] | None]:
    """(smallest value, largest value, non-zero count) of each tensor, None where not available.

    Two reads of each tensor and no temporaries (``aminmax`` and a zero-norm), and one host
    sync per device for all of them: the figures a clean tensor's census needs, at a fraction of
    the device's copy bandwidth. A NaN or Inf anywhere shows as a non-finite min or max.
    """
    out: list[tuple[float, float, int] | None] = [None] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if str(t.dtype) in _MINMAX_DTYPES and t.numel():
            by_device.setdefault(t.device, []).append(i)
    with torch.no_grad():
        for indices in by_device.values():
            rows = []
            for i in indices:
                lo, hi = torch.aminmax(tensors[i].detach())
                rows.append(torch.stack([lo.double(), hi.double(), _nonzero_count(tensors[i].detach())]))
            for i, (lo, hi, nonzero) in zip(indices, torch.stack(rows).tolist()):
                out[i] = (lo, hi, int(nonzero))
    return out


_EXACT_BLOCK = 1 << 20  # float32 counts are exact up to 2^24: sum blocks of 2^20 elements, then the blocks


def _nonzero_count(t: torch.Tensor) -> torch.Tensor:
    """The number of non-zero elements of a floating tensor, as a 0-d float64 tensor on its device.

    ``count_nonzero`` runs at a tenth of the memory bandwidth on a GPU (it materialises a mask); the
    zero-"norm" is a plain reduction at full speed, and float32 accumulation is exact within a block.
    """
    flat = t.reshape(-1)
    accumulate = torch.float64 if t.dtype == torch.float64 else torch.float32  # (no narrowing allowed)
    body = flat.numel() // _EXACT_BLOCK * _EXACT_BLOCK
    total = torch.linalg.vector_norm(flat[body:], 0, dtype=accumulate).double()
    if body:
        blocks = torch.linalg.vector_norm(flat[:body].view(-1, _EXACT_BLOCK), 0, dim=1, dtype=accumulate)
        total = total + blocks.sum(dtype=torch.float64)
    return total


def census_tensor(
    t: torch.Tensor, max_abs: float, outlier_factor: float, stats: tuple[float, float, int] | None = None
) -> dict:
    """The health census of a live floating tensor, on its own device, as TensorResult fields.

    The same rules as the file census (kernels/census.py), computed exactly: the largest finite
    magnitude, zeros, values above ``max_abs``, and outliers: values whose exponent stands
    ``log2(outlier_factor)`` above that of the tensor's k-th largest non-zero magnitude
    (k = max(9, n/1000)), and at least 2.0.

    With ``stats`` from :func:`quick_stats` (finite min and max), a clean tensor costs nothing more:
    values above ``max_abs`` are counted only when the largest is above it, and the bulk scale (an
    exponent histogram) is needed, and reported, only when the largest magnitude reaches 2.0, the
    least outlier (as in the file census, which histograms only tensors that reach 2.0).
    """
    if stats is None or t.is_complex() or not (math.isfinite(stats[0]) and math.isfinite(stats[1])):
        return _exact_census(t, max_abs, outlier_factor)
    lo, hi, nonzero = stats
    top = max(-lo, hi)
    out: dict = {"max_abs": top, "zeros": t.numel() - nonzero, "exploded": 0}
    if top > max_abs:
        out["exploded"] = int((t.detach().abs() > max_abs).sum())
    if top < 2.0 or nonzero < 16:  # no value can be an outlier: the bulk scale is not needed
        return out
    bulk_exponent = _bulk_exponent(t, nonzero)
    if bulk_exponent is None:  # a subnormal bulk: rare enough to take the exact path
        return _exact_census(t, max_abs, outlier_factor)
    out["bulk_scale"] = 2.0**bulk_exponent
    threshold = _threshold(bulk_exponent, outlier_factor)
    if top >= threshold:
        flat = t.detach().reshape(-1)
        outliers = _outliers(flat, flat.abs().float(), threshold, 1, max_abs)
        if outliers is not None:
            out["outliers"] = outliers
    return out


def _threshold(bulk_exponent: int, outlier_factor: float) -> float:
    return max(2.0 ** (bulk_exponent + max(1, round(math.log2(outlier_factor)))), 2.0)


def _bulk_exponent(t: torch.Tensor, nonzero: int) -> int | None:
    """floor(log2) of the k-th largest non-zero magnitude (k = max(9, n/1000)), from a histogram of the
    exponent bits (finite tensors only); None when that magnitude is subnormal."""
    spec = spec_of(t)
    assert spec is not None
    exp_shift = (spec.exp_mask & -spec.exp_mask).bit_length() - 1
    exp_max = spec.exp_mask >> exp_shift
    lanes = t.detach().reshape(-1).view(LANE_DTYPES[spec.lane_bits])
    exponents = torch.bitwise_and(torch.bitwise_right_shift(lanes, exp_shift), exp_max)
    histogram = torch.bincount(exponents.to(torch.int32), minlength=exp_max + 1).tolist()
    k = bulk_rank(nonzero)
    seen = 0
    for biased in range(exp_max, 0, -1):
        seen += histogram[biased]
        if seen >= k:
            return biased - (exp_max >> 1)
    return None


def _outliers(flat: torch.Tensor, a: torch.Tensor, threshold: float, per: int, max_abs: float) -> Outliers | None:
    over = (a >= threshold) & (a <= max_abs)  # (above max_abs: exploded, counted once there, as in the file census)
    count = int(over.sum())
    if not count:
        return None
    first = int(torch.nonzero(over)[0])
    worst = int(torch.argmax(torch.where(over, a, torch.zeros_like(a))))
    return Outliers(count, float(flat[worst]), first // per, threshold)


def _exact_census(t: torch.Tensor, max_abs: float, outlier_factor: float) -> dict:
    """The census from the values themselves (complex, fp8, non-finite or subnormal-bulk tensors)."""
    flat = torch.view_as_real(t).reshape(-1) if t.is_complex() else t.reshape(-1)
    if flat.dtype.itemsize == 1:  # fp8: torch has no abs (nor ==) for some of them (float8_e8m0fnu), float has
        flat = flat.detach().float()
    a = flat.detach().abs().float()
    finite = torch.isfinite(a)
    a = torch.where(finite, a, torch.zeros((), dtype=a.dtype, device=a.device))
    n = a.numel()
    top = float(a.max()) if n else 0.0
    per = 2 if t.is_complex() else 1
    out: dict = {
        "max_abs": top,
        "zeros": int(((flat == 0) & finite.view(flat.shape)).sum()) // per,
        "exploded": int((a > max_abs).sum()),
    }
    nonzero = a[a > 0]
    if nonzero.numel() >= 16 and top >= 2.0:
        k = bulk_rank(nonzero.numel())
        bulk = float(torch.topk(nonzero, min(k, nonzero.numel())).values[-1])
        exponent = math.floor(math.log2(bulk))
        out["bulk_scale"] = 2.0**exponent
        outliers = _outliers(flat, a, _threshold(exponent, outlier_factor), per, max_abs)
        if outliers is not None:
            out["outliers"] = outliers
    return out
