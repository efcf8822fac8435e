"""nandoctor: find, localise and repair NaN/Inf weights in model checkpoints without loading them.

The public API is defined once, in ``api.py``, and re-exported here; it imports
numpy, torch and the repair writer only inside the functions that need them,
so ``import nandoctor`` stays cheap. docs/api.md documents it.
"""

from __future__ import annotations

from typing import Any

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
from nandoctor.checkpoint.runs import RunReport  # noqa: E402

from nandoctor.api import (  # noqa: E402  (light: no numpy, no torch until a function is called)
    assert_finite,
    repair,
    scan,
    scan_module,
    scan_run,
    scan_state_dict,
    to_json,
)

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
    "scan",
    "scan_run",
    "assert_finite",
    "scan_state_dict",
    "scan_module",
    "repair",
    "to_json",
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
