"""CRC-32 (the zip polynomial): the fastest implementation at hand, combination of pieces, owed checks.

A zip entry's CRC-32 can be computed piece by piece on any threads and the
pieces combined afterwards, in order, with ``crc32_combine`` (zlib's
arithmetic: multiplying by x^(8·len) modulo the CRC polynomial over GF(2)).
Python's zlib does not expose that function, so it is written here. That lets
the scan compute a chunk's CRC-32 while the chunk is in cache for the NaN/Inf
check, instead of reading every storage a second time (engine/crcs.py).

A torch reader owes one check per storage entry (:class:`~nandoctor.model.OwedCrc`):
either the scan pays it in its own pass, or ``check_owed`` pays it in a
separate pass over the file (every other consumer of a reader's result).
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from nandoctor.model import OwedCrc, ScanProblem

CrcFunction = Callable[[Any, int], int]  # (any contiguous buffer: bytes, a memoryview, a uint8 array; start value)
_POLY = 0xEDB88320  # the zip / zlib CRC-32 polynomial, bit-reflected
_CHUNK = 4 << 20  # pieces of the separate pass: pages dropped after each
_WORKERS = 2


def _best_crc32() -> CrcFunction:
    # python-isal's CRC-32 runs ~7-25 GB/s here against zlib's ~2.5-3.7 GB/s; same polynomial, same answers.
    try:
        from isal.isal_zlib import crc32 as isal_crc32
    except ImportError:
        return zlib.crc32
    return isal_crc32


crc32: CrcFunction = _best_crc32()


def _multiply(a: int, b: int) -> int:
    """a·b modulo the polynomial, both bit-reflected (zlib's multmodp)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0..31: x^(2^(k+1)) is the square of x^(2^k)."""
    out, p = [], 1 << 30  # x^1, reflected
    for _ in range(32):
        out.append(p)
        p = _multiply(p, p)
    return out


_X_TO_2K = _powers()


@lru_cache(maxsize=64)  # a scan's pieces have a few lengths (the chunk size, each storage's tail)
def shift_operator(nbytes: int) -> int:
    """x^(8·nbytes) modulo the polynomial: what a CRC is multiplied by to move it ``nbytes`` further on."""
    p, k, n = 1 << 31, 3, nbytes  # 1, reflected; 8 = 2^3 bits a byte
    while n:
        if n & 1:
            p = _multiply(_X_TO_2K[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc1 = CRC-32(A), crc2 = CRC-32(B) and len2 = len(B) (zlib's crc32_combine)."""
    return _multiply(shift_operator(len2), crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


def mismatch(owed: OwedCrc, value: int) -> ScanProblem | None:
    """The problem a storage whose bytes give CRC-32 ``value`` is, if any: the one verdict of both passes."""
    if value & 0xFFFFFFFF == owed.expected:
        return None
    return ScanProblem(
        owed.path,
        f"storage {owed.label} fails its CRC-32 check (zip says {owed.expected:08x}, bytes give {value:08x}): "
        f"its bytes changed after saving, so values in {owed.tensors or 'it'} cannot be trusted, NaN or not",
        "re-download or re-copy the file; if it was written this way, restore these tensors from an "
        "earlier checkpoint",
    )


def check_owed(fileno: int, owed: Sequence[OwedCrc]) -> list[ScanProblem]:
    """The separate pass: the CRC-32 of every owed entry of the open file ``fileno``, read in place.

    For callers that read no storage byte themselves (a reader's result used as it is, a diff, a
    repair donor, a scan split into parts); the full scan pays these checks in its own pass instead.
    """
    if not any(o.size for o in owed):
        return [p for o in owed if (p := mismatch(o, 0)) is not None]
    # zlib releases the GIL on large buffers, so two storages are checked at once.
    with (
        mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) as mapped,
        ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="nandoctor-crc") as pool,
    ):
        values = list(pool.map(lambda o: span_crc32(mapped, o.offset, o.size), owed))
    return [p for o, value in zip(owed, values) if (p := mismatch(o, value)) is not None]


def span_crc32(mapped: mmap.mmap, offset: int, size: int) -> int:
    """CRC-32 of ``size`` bytes at ``offset`` of a mapping, in pieces whose pages are dropped after (RSS flat)."""
    value = 0
    view = memoryview(mapped)
    try:
        for start in range(offset, offset + size, _CHUNK):
            stop = min(start + _CHUNK, offset + size)
            value = crc32(view[start:stop], value)
            _release(mapped, start, stop)
    finally:
        view.release()
    return value & 0xFFFFFFFF


def _release(mapped: mmap.mmap, start: int, stop: int) -> None:
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    first, last = start - start % mmap.PAGESIZE, stop - stop % mmap.PAGESIZE
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


__all__ = ["OwedCrc", "check_owed", "crc32", "crc32_combine", "mismatch", "shift_operator", "span_crc32"]
