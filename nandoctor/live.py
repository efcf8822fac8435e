"""Live tensors: ``scan_state_dict(mapping)`` and ``scan_module(module)`` count NaN/Inf where the tensors are.

Counting runs on each tensor's own device (a GPU model is counted on the GPU);
only a handful of scalars per tensor come back to the host, never the data.
Two passes, as in the file scan: a cheap one over every tensor (``aminmax`` and a
zero-norm: two reads, no temporaries, one host sync per device) that
clears clean tensors and gives their census figures, then exact counts for the
tensors whose min or max is not finite. torch is imported
here, lazily, never by ``import nandoctor``.

Exact counts come from :mod:`nandoctor.kernels.live` (the file kernels' bit
tests written in torch), so a live scan and a file scan of the same weights agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nandoctor import verdict
from nandoctor.checkpoint.roles import is_variance
from nandoctor.dtypes import TORCH_DTYPE_NAMES
from nandoctor.kernels import CLEAN
from nandoctor.model import PICKLED_FLOAT, Region, ScanProblem, ScanReport, TensorRef, TensorResult, TensorResults

if TYPE_CHECKING:
    import torch

    from nandoctor.kernels.census import HealthLimits

def dtype_name(t: torch.Tensor) -> str:
    short = str(t.dtype).removeprefix("torch.")
    return TORCH_DTYPE_NAMES.get(short, short)


def _can_hold_nonfinite(t: torch.Tensor) -> bool:
    return bool(t.is_floating_point() or t.is_complex())


def _ref(name: str, t: torch.Tensor, rate: bool = False, optimizer: bool = False) -> TensorRef:
    """``rate``: ``t`` holds a Python float of an optimizer's or scheduler's settings (a learning rate), keyed and
    judged as the file scan keys one it read from a pickle (model.PICKLED_FLOAT); ``optimizer``: ``t`` lies inside
    an optimizer state dict (its role whatever its name, as the file scan gives it)."""
    from nandoctor.checkpoint.roles import OPTIMIZER, role_of

    dtype = dtype_name(t)
    region = Region(f"<{t.device}>", 0, t.numel() * t.element_size(), dtype, f"{PICKLED_FLOAT} {name}" if rate else name)
    return TensorRef(name, dtype, tuple(t.shape), region, role=OPTIMIZER if rate or optimizer else role_of(name))


def scan_tensors(
    named: Mapping[str, Any] | Iterable[tuple[str, Any]], *, target: str, target_dtype: str | None = None,
    limits: HealthLimits | None = None,
) -> ScanReport:
    """Count every tensor of ``named`` (a mapping, or (name, value) pairs) on its own device and build a ScanReport
    like a file scan's."""
    import torch

    started = time.perf_counter()
    cast_to = None
    if target_dtype is not None:
        from nandoctor.kernels.targets import target as target_spec

        cast_to = target_spec(target_dtype)

    problems: list[ScanProblem] = []
    live: list[tuple[str, torch.Tensor]] = []
    rates: set[str] = set()
    moments: set[str] = set()
    for name, value in _tensors(named, torch, rates, moments):
        if type(value).__name__ == "DTensor" and hasattr(value, "to_local"):
            # (FSDP2, tensor parallel: this rank's shard, read where it lies. An op on the DTensor itself is a
            # collective, which a check on process zero alone would wait on, and aminmax's raises outright:
            # "Redistribution from one partial type (P(min)) to another (P(sum)) is unsupported")
            value = value.to_local()
        if isinstance(value, torch.nn.parameter.UninitializedTensorMixin):  # type: ignore[attr-defined]
            # (a lazy module's parameter before its first forward: any op on it raises ValueError)
            problems.append(ScanProblem(name, "tensor is an uninitialized parameter of a lazy module (LazyLinear, "
                                        "LazyConv…): it has no values to check",
                                        "run one forward pass (it sizes and initializes it) before scanning"))
            continue
        if value.is_quantized:  # NaN/Inf hide in its scale: counted on the values torch computes from it
            value = value.dequantize()
        if value.is_conj() or value.is_neg():  # (a lazy conj/neg view: view_as_real refuses it; the values are its own)
            value = value.resolve_conj().resolve_neg()
        if str(value.dtype) in _PACKED_SUB_BYTE:  # (two e2m1 floats a byte, no NaN/Inf code: its bytes, as a file scan reads)
            value = value.view(torch.uint8)
        if value.device.type == "meta":
            problems.append(ScanProblem(name, "tensor is on the meta device: it has no values to check",
                                        "materialise the weights (load them) before scanning"))
            continue
        if getattr(value, "is_sparse", False) or value.layout != torch.strided:
            problems.append(ScanProblem(name, f"{value.layout} tensors are not supported", "densify it first"))
            continue
        live.append((name, value))

    from nandoctor.kernels.census import HealthLimits
    from nandoctor.kernels.live import census_tensor, count_tensor, overflow_tensor, quick_stats

    limits = limits or HealthLimits()
    loads_as = cast_to.loads_as if cast_to is not None else None
    # A cheap first pass over every tensor (min, max, non-zeros; one host sync per device) clears the
    # clean ones; exact NaN/Inf counts only where a min or max is not finite (or was not available).
    stats = dict(zip((name for name, _ in live), quick_stats([t for _, t in live])))
    results = []
    with torch.no_grad():
        for name, t in live:
            floating = _can_hold_nonfinite(t)
            quick = stats[name]
            suspicious = floating and (quick is None or not (math.isfinite(quick[0]) and math.isfinite(quick[1])))
            counts = count_tensor(t) if suspicious and t.numel() else CLEAN
            overflow = 0
            if cast_to is not None and floating and t.numel():
                overflow, _ = overflow_tensor(t, cast_to.name)
            ceiling = limits.ceiling(TORCH_DTYPE_NAMES.get(str(t.dtype).removeprefix("torch."), ""), loads_as)
            health = census_tensor(t, ceiling, limits.outlier_factor, quick) if floating else {}
            ref = _ref(name, t, name in rates, name in moments)
            if floating and is_variance(name, ref.role) and not t.is_complex():
                # (as the file census: a variance's exploded values are its negative ones, never its size)
                negative = quick is None or quick[0] < 0
                health["exploded"] = int(((t < 0) & torch.isfinite(t)).sum()) if negative and t.numel() else 0
            results.append(
                TensorResult(
                    ref,
                    counts.nan,
                    counts.posinf,
                    counts.neginf,
                    counts.first_bad if counts.first_bad >= 0 else None,
                    _can_hold_nonfinite(t),
                    overflow=overflow,
                    **health,
                )
            )
    if not live and not problems:  # a gate over nothing would pass anything
        problems.append(ScanProblem(target, "holds no tensors: there is nothing to check",
                                    "pass the model's state_dict() (or the module itself)", kind="empty"))
    devices = sorted({str(t.device) for _, t in live}) or ["cpu"]
    report = ScanReport(
        target=target,
        files=(),
        tensors=TensorResults.of(results),
        layers=(),
        errors=tuple(problems),
        bytes_scanned=sum(t.numel() * t.element_size() for _, t in live),
        seconds=time.perf_counter() - started,
        device=",".join(devices),
        extra={"target_dtype": cast_to.name} if cast_to else {},
    )
    return verdict.judged(report)


_MAX_DEPTH = 100
_PACKED_SUB_BYTE = frozenset({"torch.float4_e2m1fn_x2"})  # torch dtypes of packed sub-byte floats, by name


def _tensors(named: Mapping[str, Any] | Iterable[tuple[str, Any]], torch: Any, rates: set[str],
             moments: set[str]) -> Iterable[tuple[str, Any]]:
    """Every tensor of ``named``, nested mappings, lists and tuples walked with dotted names (what
    ``torch.load("ckpt.pt")`` gives: ``{"model": {...}, "epoch": 3}``), each nested tensor's components as
    ``name.i``, and numpy float/complex arrays as tensors (a file's numpy arrays are counted too: a NaN in a
    loaded checkpoint's ``running_mean`` array passed a live scan CLEAN); other values hold nothing to count,
    but for a non-finite setting a training step uses (an optimizer's ``param_groups`` lr/betas/eps…, a scheduler's
    ``base_lrs`` or gamma: readers/torch/names.breaks_a_step, the file scan's rule), given as a float64 scalar and its name
    added to ``rates`` (a loaded checkpoint with a NaN lr passed CLEAN while its saved file failed). The names of
    the tensors inside an optimizer state dict (by its shape, names.is_optimizer_state) are added to ``moments``."""
    from nandoctor.readers.torch.names import OPTIMIZER_PARTS, breaks_a_step, is_optimizer_state, is_scheduler_state

    seen: set[int] = set()

    def walk(name: str, value: Any, depth: int, path: list[str], scheduler: bool = False,
             optimizer: bool = False) -> Iterable[tuple[str, Any]]:
        if isinstance(value, float):
            if not math.isfinite(value) and breaks_a_step(path, value, scheduler):
                rates.add(name)
                yield name, torch.tensor(value, dtype=torch.float64)
            return
        if _numeric_array(value):  # a numpy array (a loaded checkpoint's running stats): counted as a file's are
            value = torch.from_numpy(_supported(value))
        if isinstance(value, torch.Tensor):
            parts = [(f"{name}.{i}", part) for i, part in enumerate(value.unbind())] if getattr(
                value, "is_nested", False) else [(name, value)]
            if optimizer:
                moments.update(part_name for part_name, _ in parts)
            yield from parts
            return
        if depth > _MAX_DEPTH or id(value) in seen:
            return
        if isinstance(value, Mapping):
            seen.add(id(value))
            yield from entries(value, f"{name}.", depth + 1, path, scheduler, optimizer)
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            for i, child in enumerate(value):
                yield from walk(f"{name}.{i}", child, depth + 1, [*path, str(i)], scheduler, optimizer)

    def entries(mapping: Mapping[Any, Any], prefix: str, depth: int, path: list[str], scheduler: bool,
                optimizer: bool) -> Iterable[tuple[str, Any]]:
        scheduler = scheduler or is_scheduler_state(mapping)
        state = is_optimizer_state(mapping)  # (its state and param_groups only: a model beside them stays weights)
        for key, child in mapping.items():
            yield from walk(f"{prefix}{key}", child, depth, [*path, str(key)], scheduler,
                            optimizer or (state and key in OPTIMIZER_PARTS))

    if isinstance(named, Mapping):  # (itself a bare optimizer.state_dict() or a scheduler's, maybe)
        yield from entries(named, "", 0, [], False, False)
    else:
        for name, value in named:
            yield from walk(str(name), value, 0, [str(name)])


def _numeric_array(value: Any) -> bool:
    """A numpy array of floats or complex numbers (imported only when the value's class comes from numpy)."""
    if not type(value).__module__.startswith("numpy"):
        return False
    import numpy as np

    return isinstance(value, np.ndarray) and value.dtype.kind in "fc"


def _supported(array: Any) -> Any:
    """``array`` in a dtype torch takes (float16/32/64, complex64/128), contiguous and native-endian; a longdouble
    as float64 (its NaN/Inf kept)."""
    import numpy as np

    kind = array.dtype.kind
    wanted = array.dtype if array.dtype.itemsize <= 16 and array.dtype.type not in (np.longdouble, np.clongdouble) \
        else np.dtype(np.float64 if kind == "f" else np.complex128)
    return np.ascontiguousarray(array, dtype=wanted.newbyteorder("="))


def scan_state_dict(
    state_dict: Mapping[str, Any], *, target_dtype: str | None = None, name: str = "<state_dict>"
) -> ScanReport:
    """Scan a mapping of names to tensors (``model.state_dict()``, a loaded ``.safetensors``, a loaded
    checkpoint dict: nested mappings, lists and tuples are walked, their tensors named ``model.w``, ``opt.0``).
    Quantized tensors are counted on their dequantized values; a mapping without any tensor is a problem of
    kind ``empty`` (exit 3), never CLEAN."""
    return scan_tensors(state_dict, target=name, target_dtype=target_dtype)


def scan_module(module: Any, *, target_dtype: str | None = None) -> ScanReport:
    """Scan a ``torch.nn.Module``'s parameters and buffers where they live (tied weights once)."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return scan_tensors(named, target=f"<{type(module).__name__}>", target_dtype=target_dtype)
