"""Optional integrations with training frameworks; each submodule imports its framework only when used.

    from nandoctor.integrations.transformers import NanDoctorCallback
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("transformers",)


def __getattr__(name: str) -> Any:
    # ``nandoctor.integrations.transformers`` as an attribute, imported on first use.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
