"""nandoctor: find, localise and repair NaN/Inf weights in model checkpoints without loading them.

The public API is imported lazily so that ``import nandoctor`` stays cheap
(no numpy, no torch until a function is called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from nandoctor.errors import (  # noqa: E402  (light: no heavy imports)
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NandoctorError,
    NonFiniteWeightsError,
    OutputExistsError,
    RepairRefusedError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)

if TYPE_CHECKING:
    from nandoctor.model import ScanReport


def scan(path: str, *, device: str = "auto", progress: Any = None, both_formats: bool = False) -> "ScanReport":
    """Scan a checkpoint file or folder; see docs/api.md."""
    from nandoctor.scan import scan as _scan

    return _scan(path, device=device, progress=progress, both_formats=both_formats)


__all__ = [
    "scan",
    "NandoctorError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
    "NonFiniteWeightsError",
    "RepairRefusedError",
    "OutputExistsError",
]
