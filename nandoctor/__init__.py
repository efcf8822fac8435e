"""nandoctor: find, localise and repair NaN/Inf weights in model checkpoints without loading them.

The public API is defined once, in ``api.py`` (and ``api_compare.py`` for diff and checksums), and
re-exported here lazily (each name imported on first use); the API imports
numpy, torch and the repair writer only inside the functions that need them,
so ``import nandoctor`` stays cheap. docs/api.md documents it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it. Resolved on first use (PEP 562), so ``import nandoctor`` and the
# CLI's start (``python -m nandoctor`` imports this package first) load none of the API's modules until
# one is asked for: ``nandoctor --help`` stays within tens of milliseconds of ``python -c pass``.
_HOMES = {
    **dict.fromkeys(("assert_finite", "repair", "scan", "scan_module", "scan_run", "scan_state_dict", "to_json"),
                    "nandoctor.api"),
    **dict.fromkeys(("diff", "manifest", "verify_hashes"), "nandoctor.api_compare"),
    "RunReport": "nandoctor.checkpoint.runs",
    **dict.fromkeys((
        "CheckpointNotFoundError", "CorruptCheckpointError", "DeviceUnavailableError", "DivergedError", "NandoctorError",
        "NonFiniteWeightsError",
        "OutputExistsError", "OverflowRiskError", "RepairRefusedError", "UnreadableCheckpointError",
        "UnreadablePathError", "UnsafeCheckpointError", "UnsupportedFormatError",
    ), "nandoctor.errors"),
    **dict.fromkeys(("LayerSummary", "ScanReport", "TensorResult"), "nandoctor.model"),
}

if TYPE_CHECKING:
    from nandoctor.api import (
        assert_finite,
        repair,
        scan,
        scan_module,
        scan_run,
        scan_state_dict,
        to_json,
    )
    from nandoctor.api_compare import diff, manifest, verify_hashes
    from nandoctor.checkpoint.runs import RunReport
    from nandoctor.errors import (
        CheckpointNotFoundError,
        CorruptCheckpointError,
        DeviceUnavailableError,
        DivergedError,
        NandoctorError,
        NonFiniteWeightsError,
        OutputExistsError,
        OverflowRiskError,
        RepairRefusedError,
        UnreadableCheckpointError,
        UnreadablePathError,
        UnsafeCheckpointError,
        UnsupportedFormatError,
    )
    from nandoctor.model import LayerSummary, ScanReport, TensorResult


def __getattr__(name: str) -> Any:
    import importlib

    # ``nandoctor.integrations.transformers.NanDoctorCallback`` without importing transformers up front.
    if name == "integrations":
        return importlib.import_module("nandoctor.integrations")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})  # a name already resolved is in both


__all__ = [
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DeviceUnavailableError",
    "DivergedError",
    "LayerSummary",
    "NandoctorError",
    "NonFiniteWeightsError",
    "OutputExistsError",
    "OverflowRiskError",
    "RepairRefusedError",
    "RunReport",
    "ScanReport",
    "TensorResult",
    "UnreadableCheckpointError",
    "UnreadablePathError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "assert_finite",
    "diff",
    "manifest",
    "repair",
    "scan",
    "scan_module",
    "scan_run",
    "scan_state_dict",
    "to_json",
    "verify_hashes",
]
