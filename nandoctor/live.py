"""Live tensors: ``scan_state_dict(mapping)`` and ``scan_module(module)`` count NaN/Inf where the tensors are.

Counting runs on each tensor's own device (a GPU model is counted on the GPU);
only a handful of scalars per tensor come back to the host, never the data.
Two passes, as in the file scan: a cheap one that flags tensors (a sum is
non-finite whenever an element is; a sum that merely overflows only costs a
recount; torch sums at tens of GB/s where masks crawl) with one host sync per
device, then exact counts for the flagged tensors only. torch is imported
here, lazily, never by ``import nandoctor``.

Exact counts come from :mod:`nandoctor.kernels.live` (the file kernels' bit
tests written in torch), so a live scan and a file scan of the same weights agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nandoctor import verdict
from nandoctor.dtypes import TORCH_DTYPE_NAMES
from nandoctor.kernels import CLEAN
from nandoctor.model import Region, ScanProblem, ScanReport, TensorRef, TensorResult

if TYPE_CHECKING:
    import torch

    from nandoctor.kernels.census import HealthLimits

def dtype_name(t: torch.Tensor) -> str:
    short = str(t.dtype).removeprefix("torch.")
    return TORCH_DTYPE_NAMES.get(short, short)


def _can_hold_nonfinite(t: torch.Tensor) -> bool:
    return bool(t.is_floating_point() or t.is_complex())


def _real(t: torch.Tensor) -> torch.Tensor:
    """``t`` with complex numbers as pairs of floats; never a copy (sums need no contiguity)."""
    import torch

    t = t.detach()
    return torch.view_as_real(t) if t.is_complex() else t


def _flag(t: torch.Tensor) -> torch.Tensor:
    """A 0-d float tensor that is non-finite whenever some element is (and sometimes when none is)."""
    import torch

    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    if t.dtype in (torch.float32, torch.float64):
        return t.sum().float()  # float64's huge finite sums overflow to Inf here: a recount, never a miss
    return torch.full((), float("nan"), device=t.device)  # narrow floats: always count exactly


def _flags_by_device(tensors: list[tuple[str, torch.Tensor]]) -> dict[str, bool]:
    """name → "might hold NaN/Inf": one stacked sum per device, one host sync per device."""
    import torch

    by_device: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors:
        by_device.setdefault(t.device, []).append((name, t))
    flagged: dict[str, bool] = {}
    with torch.no_grad():
        for items in by_device.values():
            sums = torch.stack([_flag(_real(t)) for _, t in items])
            for (name, _), finite in zip(items, torch.isfinite(sums).tolist()):
                flagged[name] = not finite
    return flagged


def _ref(name: str, t: torch.Tensor) -> TensorRef:
    from nandoctor.checkpoint.roles import role_of

    dtype = dtype_name(t)
    region = Region(f"<{t.device}>", 0, t.numel() * t.element_size(), dtype, name)
    return TensorRef(name, dtype, tuple(t.shape), region, role=role_of(name))


def scan_tensors(
    named: Iterable[tuple[str, Any]], *, target: str, target_dtype: str | None = None,
    limits: HealthLimits | None = None,
) -> ScanReport:
    """Count every tensor of ``named`` on its own device and build a ScanReport like a file scan's."""
    import torch

    started = time.perf_counter()
    cast_to = None
    if target_dtype is not None:
        from nandoctor.kernels.targets import target as target_spec

        cast_to = target_spec(target_dtype)

    problems: list[ScanProblem] = []
    live: list[tuple[str, torch.Tensor]] = []
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            continue  # state dicts may carry extra state (ints, strings): nothing to count
        if value.device.type == "meta":
            problems.append(ScanProblem(name, "tensor is on the meta device: it has no values to check",
                                        "materialise the weights (load them) before scanning"))
            continue
        if getattr(value, "is_sparse", False) or value.layout != torch.strided:
            problems.append(ScanProblem(name, f"{value.layout} tensors are not supported", "densify it first"))
            continue
        live.append((name, value))

    from nandoctor.kernels.census import HealthLimits
    from nandoctor.kernels.live import census_tensor, count_tensor, overflow_tensor

    limits = limits or HealthLimits()

    countable = [(n, t) for n, t in live if _can_hold_nonfinite(t) and t.numel()]
    flags = _flags_by_device(countable)
    results = []
    with torch.no_grad():
        for name, t in live:
            counts = count_tensor(t) if flags.get(name) else CLEAN
            overflow = 0
            if cast_to is not None and name in flags:
                overflow, _ = overflow_tensor(t, cast_to.name)
            health = census_tensor(t, limits.max_abs, limits.outlier_factor) if _can_hold_nonfinite(t) else {}
            results.append(
                TensorResult(
                    _ref(name, t),
                    counts.nan,
                    counts.posinf,
                    counts.neginf,
                    counts.first_bad if counts.first_bad >= 0 else None,
                    _can_hold_nonfinite(t),
                    overflow=overflow,
                    **health,
                )
            )
    devices = sorted({str(t.device) for _, t in live}) or ["cpu"]
    report = ScanReport(
        target=target,
        files=(),
        tensors=tuple(results),
        layers=(),
        errors=tuple(problems),
        bytes_scanned=sum(t.numel() * t.element_size() for _, t in live),
        seconds=time.perf_counter() - started,
        device=",".join(devices),
        extra={"target_dtype": cast_to.name} if cast_to else {},
    )
    return verdict.judged(report)


def scan_state_dict(
    state_dict: Mapping[str, Any], *, target_dtype: str | None = None, name: str = "<state_dict>"
) -> ScanReport:
    """Scan a mapping of names to tensors (``model.state_dict()``, a loaded ``.safetensors``)."""
    return scan_tensors(state_dict.items(), target=name, target_dtype=target_dtype)


def scan_module(module: Any, *, target_dtype: str | None = None) -> ScanReport:
    """Scan a ``torch.nn.Module``'s parameters and buffers where they live (tied weights once)."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return scan_tensors(named, target=f"<{type(module).__name__}>", target_dtype=target_dtype)
