"""Optional integrations with training frameworks; each submodule imports its framework only when used.

    from nandoctor.integrations.transformers import NanDoctorCallback   # transformers.Trainer
    from nandoctor.integrations.lightning import NanDoctorCallback      # lightning.Trainer
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("transformers", "lightning")


def __getattr__(name: str) -> Any:
    # ``nandoctor.integrations.transformers`` (or ``.lightning``) as an attribute, imported on first use.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
