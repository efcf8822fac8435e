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


_GIL_FREE_FROM = 64 << 10  # below this, a ctypes call's overhead outweighs what releasing the GIL buys


def _best_crc32() -> CrcFunction:
    """ISA-L's CRC-32, called so that it releases the GIL, where the platform allows; else python-isal's; else zlib.

    python-isal's ``crc32`` runs at 30-50 GB/s here (zlib's at ~5) but holds the GIL for the whole
    buffer, so the scan's two workers took turns: a 4 MiB chunk's CRC is as long as its NaN/Inf test,
    and two threads doing both ran at the speed of one for the CRC (measured: 2 threads 47 GB/s against
    51 for one). The same ISA-L function (``crc32_gzip_refl``, exported by python-isal's extension
    module) called through ctypes releases the GIL: 2 threads 73 GB/s against 44 for one. Same
    polynomial, same answers (tested against zlib)."""
    try:
        from isal.isal_zlib import crc32 as isal_crc32
    except ImportError:
        return zlib.crc32
    gil_free = _isal_without_gil()
    if gil_free is None:
        return isal_crc32

    def crc32(data: Any, value: int = 0) -> int:
        # the scan's chunks are numpy arrays (an address to hand over); bytes and memoryviews go to python-isal
        face = getattr(data, "__array_interface__", None)
        if face is None or face["strides"] is not None or data.nbytes < _GIL_FREE_FROM:  # strides: not contiguous
            return isal_crc32(data, value)
        # ISA-L's gzip CRC takes and returns the finished (inverted) value, as zlib.crc32 does
        return gil_free(value & 0xFFFFFFFF, face["data"][0], data.nbytes)

    return crc32


def _isal_without_gil() -> Callable[[int, int, int], int] | None:
    try:
        import ctypes

        from isal import isal_zlib

        function = ctypes.CDLL(isal_zlib.__file__).crc32_gzip_refl  # CDLL: the call releases the GIL
    except (ImportError, OSError, AttributeError):  # no isal, a build without the symbol, no ctypes
        return None
    function.restype = ctypes.c_uint32
    function.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64]
    probe = ctypes.create_string_buffer(bytes(range(256)) * 512, 128 << 10)  # the GIL-free path's sizes
    if function(0, ctypes.addressof(probe), len(probe)) != zlib.crc32(probe):
        return None  # a symbol of that name that is not the zip CRC-32: never trust it
    return function


@lru_cache(maxsize=1)
def implementation() -> CrcFunction:
    """The function ``crc32`` calls (``_best_crc32``), chosen on first use: importing python-isal, loading
    its library through ctypes and probing it cost ~2 ms that a command owing no CRC-32 (a scan of
    safetensors files) never pays."""
    return _best_crc32()


def crc32(data: Any, value: int = 0) -> int:
    """The CRC-32 of ``data`` continued from ``value``, as ``zlib.crc32`` gives it, by the fastest
    implementation at hand (``implementation``)."""
    return implementation()(data, value)


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
        "re-download or re-copy the file from where it was saved; without a good copy, resume from an earlier "
        "checkpoint (a repair needs the bytes the file recorded: it refuses this one)",
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
