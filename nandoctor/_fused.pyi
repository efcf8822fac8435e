"""Types of the compiled extension nandoctor/_fused.c (absent where it was not built: kernels/fused.py)."""

from typing import Any

API_VERSION: int

def crc32_ors(data: Any, value: int | None, ors: Any | None, /) -> int | None: ...
def available() -> bool: ...
