"""Counting NaN/Inf in live torch tensors, on their own device, with no copy to the host.

The building block of ``scan_module`` / ``scan_state_dict``: a CUDA tensor is
tested on the GPU with the torch kernel's bit tests
(:mod:`nandoctor.kernels.torch_kernel`), and only a handful of scalars cross
to the host; a CPU tensor's memory is handed, uncopied, to the numpy kernel,
which is far faster there than torch's CPU element-wise ops. Large tensors are
walked in slices so that temporaries stay small next to the tensor itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from nandoctor.dtypes import DTYPES, TORCH_DTYPE_NAMES, DTypeSpec
from nandoctor.kernels import CLEAN, ChunkCounts, OverflowCounts
from nandoctor.kernels.cpu import CpuKernel
from nandoctor.kernels.targets import decode_magnitude, target, threshold_bits
from nandoctor.kernels.torch_kernel import LANE_DTYPES, lane_counts, lane_overflow

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
    nan = posinf = neginf = 0
    first = -1
    on_cpu = t.device.type == "cpu" and backend == "auto"
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


def census_tensor(t: torch.Tensor, max_abs: float, outlier_factor: float) -> dict:
    """The health census of a live floating tensor, on its own device, as TensorResult fields.

    The same rules as the file census (kernels/census.py), computed exactly: the largest finite
    magnitude, zeros, values above ``max_abs``, and outliers: values whose exponent stands
    ``log2(outlier_factor)`` above that of the tensor's k-th largest magnitude (k = max(9, n/1000)),
    and at least 2.0.
    """
    import math

    from nandoctor.model import Outliers

    flat = torch.view_as_real(t).reshape(-1) if t.is_complex() else t.reshape(-1)
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
    if nonzero.numel() >= 16:
        k = max(9, math.ceil(nonzero.numel() / 1000))
        bulk = float(torch.topk(nonzero, min(k, nonzero.numel())).values[-1])
        out["bulk_scale"] = 2.0 ** math.floor(math.log2(bulk))
        threshold = max(2.0 ** (math.floor(math.log2(bulk)) + max(1, round(math.log2(outlier_factor)))), 2.0)
        over = a >= threshold
        count = int(over.sum())
        if count:
            first = int(torch.nonzero(over)[0])
            worst = int(torch.argmax(torch.where(over, a, torch.zeros_like(a))))
            out["outliers"] = Outliers(count, float(flat[worst]), first // per, threshold)
    return out
