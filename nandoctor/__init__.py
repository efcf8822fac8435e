"""nandoctor: find, localise and repair NaN/Inf weights in model checkpoints without loading them.

The public API is defined once, in ``api.py`` (and ``api_compare.py`` for diff and checksums), and
re-exported here; it imports
numpy, torch and the repair writer only inside the functions that need them,
so ``import nandoctor`` stays cheap. docs/api.md documents it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

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
    NandoctorError,
    NonFiniteWeightsError,
    OutputExistsError,
    OverflowRiskError,
    RepairRefusedError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from nandoctor.model import LayerSummary, ScanReport, TensorResult


def __getattr__(name: str) -> Any:
    # ``nandoctor.integrations.transformers.NanDoctorCallback`` without importing transformers up front.
    if name == "integrations":
        import importlib

        return importlib.import_module("nandoctor.integrations")
    if name == "RunReport":
        from nandoctor.checkpoint.runs import RunReport

        return RunReport
    raise AttributeError(f"module 'nandoctor' has no attribute {name!r}")


__all__ = [
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
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
