"""A chunk's CRC-32 and its census segment ORs in one pass, where the compiled extension runs.

``nandoctor._fused`` (one C file, built when the package is installed with a C compiler at hand) reads each
byte once for both: the zip CRC-32 a torch storage owes and the OR of each 64 KiB segment's words that the
census's prefilter needs (census.segment_ors); for a chunk owing no CRC-32 it gives the ORs alone (~1.6× numpy's
reduceat on a cached chunk). It runs on x86-64 CPUs with AVX-512 and VPCLMULQDQ; elsewhere,
without the extension (or with a build of another version), or with ``NANDOCTOR_NATIVE=0``, :func:`available` is False and the scan makes its two
passes as before (crc.py's CRC-32, then numpy's reduction): same answers, one more read of each chunk.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

from nandoctor.kernels.census import SEGMENT_BYTES

NATIVE_ENV = "NANDOCTOR_NATIVE"  # "0": the compiled pass is not used (A/B runs, tests of the other path)
API_VERSION = 2  # _fused.c's: a build of another version (stale, in a source tree) is not used


@lru_cache(maxsize=1)
def _native() -> Any:
    if os.environ.get(NATIVE_ENV, "") == "0":
        return None
    try:
        from nandoctor import _fused
    except ImportError:  # built without a C compiler, or another platform's wheel
        return None
    if getattr(_fused, "API_VERSION", None) != API_VERSION:  # (a stale build: the two passes, same answers)
        return None
    return _fused if _fused.available() else None


def _required() -> Any:
    native = _native()
    if native is None:  # (a caller's bug: available() says where it runs)
        raise RuntimeError("nandoctor._fused is not available here: check kernels.fused.available() first")
    return native


def available() -> bool:
    """Whether the one-pass CRC-32 and segment ORs run here."""
    return _native() is not None


def crc32_ors(data: np.ndarray, value: int) -> tuple[int, np.ndarray | None]:
    """(CRC-32 of ``data`` continued from ``value``, as zlib.crc32 gives it; the OR of each 64 KiB segment's
    uint64 words, as census.segment_ors gives it, or None where ``data`` is not 8-byte aligned or holds no
    whole word). Only to be called where :func:`available` is True."""
    native = _required()
    ors = _ors_for(data)
    return int(native.crc32_ors(data, value, ors) or 0), ors


def segment_ors(data: np.ndarray) -> np.ndarray | None:
    """census.segment_ors of an 8-byte aligned chunk, read at the machine's pace (a chunk owing no CRC-32: the
    census's one pass, compiled); None where ``data`` is not 8-byte aligned or holds no whole word. Only to be
    called where :func:`available` is True."""
    native = _required()
    ors = _ors_for(data)
    if ors is not None:
        native.crc32_ors(data, None, ors)
    return ors


def _ors_for(data: np.ndarray) -> np.ndarray | None:
    """The array the segment ORs of ``data`` go into, or None where its words would mix lanes or there is none."""
    words = data.nbytes // 8
    if not words or data.ctypes.data % 8:
        return None
    return np.empty(-(-words // (SEGMENT_BYTES // 8)), dtype=np.uint64)


def reset() -> None:
    """Forget the choice made (tests that switch ``NANDOCTOR_NATIVE``)."""
    _native.cache_clear()


__all__ = ["NATIVE_ENV", "available", "crc32_ors", "reset", "segment_ors"]
