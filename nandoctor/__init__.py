"""nandoctor: find, localise and repair NaN/Inf weights in model checkpoints without loading them.

The public API is imported lazily so that ``import nandoctor`` stays cheap
(no numpy, no torch until a function is called). docs/api.md documents it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from nandoctor.errors import (  # noqa: E402  (light: no heavy imports)
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NandoctorError,
    NonFiniteWeightsError,
    OutputExistsError,
    OverflowRiskError,
    RepairRefusedError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from nandoctor.model import LayerSummary, ScanReport, TensorResult  # noqa: E402  (plain dataclasses)

if TYPE_CHECKING:
    from nandoctor.restore import RepairResult
    from nandoctor.runs import RunReport

ProgressCallback = Callable[[int, int, str], None]


def scan(
    path: str,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
) -> ScanReport:
    """Scan one checkpoint (file, folder or cached repo id) for NaN/Inf without loading it."""
    from nandoctor.api import scan as _scan

    return _scan(path, device=device, target_dtype=target_dtype, progress=progress, both_formats=both_formats)


def scan_run(
    path: str,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    both_formats: bool = False,
) -> "RunReport":
    """Scan every ``checkpoint-N`` of a training run folder, oldest first, with its trainer log."""
    from nandoctor.api import scan_run as _scan_run

    return _scan_run(path, device=device, target_dtype=target_dtype, progress=progress, both_formats=both_formats)


def assert_finite(
    path: str,
    *,
    device: str = "auto",
    target_dtype: str | None = None,
    fail_on: Iterable[str] | str | None = None,
) -> ScanReport:
    """Raise :class:`NonFiniteWeightsError` (bad layers + the repair command) unless ``path`` is finite."""
    from nandoctor.api import assert_finite as _assert_finite

    return _assert_finite(path, device=device, target_dtype=target_dtype, fail_on=fail_on)


def scan_state_dict(state_dict: Mapping[str, Any], *, target_dtype: str | None = None) -> ScanReport:
    """Count NaN/Inf in a mapping of live tensors, each on its own device (GPU included)."""
    from nandoctor.live import scan_state_dict as _scan_state_dict

    return _scan_state_dict(state_dict, target_dtype=target_dtype)


def scan_module(module: Any, *, target_dtype: str | None = None) -> ScanReport:
    """Count NaN/Inf in a ``torch.nn.Module``'s parameters and buffers where they live, no copy to host."""
    from nandoctor.live import scan_module as _scan_module

    return _scan_module(module, target_dtype=target_dtype)


def repair(
    target: str,
    donors: str | Sequence[str],
    out: str | None = None,
    scope: str = "tensor",
    dry_run: bool = False,
    *,
    progress: ProgressCallback | None = None,
    on_phase: Callable[..., Any] | None = None,
    hash_all: bool = False,
) -> "RepairResult":
    """Restore ``target``'s NaN/Inf tensors from ``donors`` (``"auto"``: earlier checkpoints of the run) into ``out``."""
    from nandoctor.restore import repair as _repair

    return _repair(target, donors, out, scope, dry_run, progress=progress, on_phase=on_phase, hash_all=hash_all)


def __getattr__(name: str) -> Any:
    # ``nandoctor.integrations.transformers.NanDoctorCallback`` without importing transformers up front.
    if name == "integrations":
        import importlib

        return importlib.import_module("nandoctor.integrations")
    if name == "RunReport":
        from nandoctor.runs import RunReport

        return RunReport
    raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")


__all__ = [
    "scan",
    "scan_run",
    "assert_finite",
    "scan_state_dict",
    "scan_module",
    "repair",
    "ScanReport",
    "TensorResult",
    "LayerSummary",
    "RunReport",
    "NandoctorError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "NonFiniteWeightsError",
    "OverflowRiskError",
    "UnreadableCheckpointError",
    "RepairRefusedError",
    "OutputExistsError",
]
