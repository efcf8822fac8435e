"""Where the scan's bytes come from: a read-only mmap when the page cache holds the file, reads otherwise.

Warm page cache: a read-only mmap lets the kernels read the cached pages in
place, with no copy — the fastest way there is. Pages already scanned are
dropped from the process in long runs (``madvise(MADV_DONTNEED)``; the page
cache keeps them), so resident memory stays flat whatever the file's size.

Cold cache: page faults on an mmap read the disk 4 KiB-fault by 4 KiB-fault
with little read-ahead; plain ``pread`` into reused buffers, with
``POSIX_FADV_SEQUENTIAL`` doubling the kernel's read-ahead window, keeps the
disk streaming. Which one a file gets is decided by probing a few of its pages
with ``RWF_NOWAIT`` reads, which fail instead of waiting when a page is not
cached: a file at least half of whose probes are cached is mapped. Partly
cached files are common (proactive reclaim such as DAMON drops pages of a file
left alone for a minute: 82-99.7% of the benchmark's "warm" files were cached
when measured), and mapped they still scan faster than read (1 GB with 1% or 15%
of it evicted: mmap 0.10 / 0.14 s, reads 0.19 / 0.20 s, same runs); when any
uncached probe meant reads, a 99.7%-cached file took the slow way one time in
twenty. ``NANDOCTOR_IO=mmap|read`` forces one way (benchmarks, odd filesystems).

A file truncated while it is mapped would kill the process with SIGBUS on
the next read past its new end, so the mapped source checks the file's size
before each chunk; reads report a short read as a changed file.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from nandoctor.errors import FileChangedError

PAGE = mmap.PAGESIZE
RELEASE_BYTES = 32 << 20  # scanned pages are dropped in runs of this size
RELEASE_GAP_BYTES = 64 << 10  # a run goes on across a gap this short (see MappedSource.release)
READ_CHUNK_BYTES = 8 << 20  # reads of a cold file: larger requests keep a (virtual) disk busier than 4 MiB
ALIGNED_AT = 8  # a chunk whose first byte is not at a multiple of this is copied before it is scanned
PROBES = 16  # pages probed for page-cache residency, spread over the file
MAPPED_FROM = 0.5  # the share of probed pages cached from which a file is mapped rather than read

BufferFor = Callable[[int], np.ndarray]  # nbytes -> a writable uint8 buffer this thread may reuse


class ChunkSource(Protocol):
    mode: str

    def read(self, absolute: int, length: int, buffer_for: BufferFor) -> np.ndarray:
        """The bytes [absolute, absolute + length) as uint8; called on worker threads."""

    def release(self, absolute: int, length: int) -> None:
        """These bytes were scanned; called on the main thread, in file order."""

    def close(self) -> None: ...


POPULATE_FROM = 1 << 20  # chunks this large are mapped in one call before they are read
_MADV_POPULATE_READ = 22  # Linux 5.14+: fault a mapped range in, read-only, without waiting page by page


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise, called through ctypes (which releases the GIL while the kernel maps), on Linux; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def populate(address: int, length: int) -> None:
    """Map the pages of [address, address + length) of a read-only file mapping in one call before a kernel reads
    them: one madvise(MADV_POPULATE_READ) instead of a page fault every 16 pages (measured, warm 4.4 GB, 2 threads:
    the clean scan 22-24 -> 24-25 GB/s, .bin with its CRC-32 17.2 -> 17.8). A kernel without it (EINVAL) or a range
    it cannot map (EFAULT: the scan's own size check reports a truncated file) just leaves the faults to the read."""
    madvise = _madvise()
    if madvise is not None:
        low = address - address % PAGE
        madvise(low, address + length - low, _MADV_POPULATE_READ)


class MappedSource:
    """A read-only mmap of the whole file; chunks are zero-copy views."""

    mode = "mmap"

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        self.mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        self._start = self._end = 0

    def read(self, absolute: int, length: int, buffer_for: BufferFor) -> np.ndarray:
        # A shorter file now would SIGBUS the read below: refuse while it still can be refused.
        if os.fstat(self.fd).st_size < absolute + length:
            raise FileChangedError(str(self.path), "the file was truncated while it was being scanned")
        view = np.frombuffer(self.mapped, dtype=np.uint8, count=length, offset=absolute)
        if length >= POPULATE_FROM:
            populate(view.ctypes.data, length)
        if absolute % ALIGNED_AT:
            # A region at an odd offset (a DCP item's tensors sit wherever the item does in its .distcp)
            # would be viewed as lanes at unaligned addresses, where numpy's reductions take a slow path:
            # 2 GB of them scanned in 0.32 s mapped, 0.13 s copied into an aligned buffer first.
            buffer = buffer_for(length)[:length]
            np.copyto(buffer, view)
            del view
            return buffer
        return view

    def release(self, absolute: int, length: int) -> None:
        # Each release interrupts the other cores (a TLB shootdown): merge runs, release rarely. A short
        # gap (a zip entry's local header between two storages) joins the run: dropping its page costs
        # at most a fault if it is read again, while breaking the run cost a release per storage.
        if not 0 <= absolute - self._end <= RELEASE_GAP_BYTES:
            self._flush()
            self._start = absolute
        self._end = absolute + length
        if self._end - self._start >= RELEASE_BYTES:
            self._flush()

    def _flush(self) -> None:
        start, end = self._start - self._start % PAGE, self._end - self._end % PAGE
        self._start = self._end
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            self.mapped.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        self._flush()
        # BufferError: a chunk's array still views the map (an interrupted scan's traceback holds one); it is
        # unmapped when that array goes
        with contextlib.suppress(BufferError):
            self.mapped.close()
        os.close(self.fd)


class ReadSource:
    """``pread`` into the calling thread's reused buffer; sequential read-ahead hinted to the kernel."""

    mode = "read"

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self, absolute: int, length: int, buffer_for: BufferFor) -> np.ndarray:
        buffer = buffer_for(length)[:length]
        got = 0
        while got < length:  # preadv may return less than asked near signals; loop until EOF
            n = os.preadv(self.fd, [buffer[got:].data], absolute + got)
            if n == 0:
                raise FileChangedError(str(self.path), "the file was truncated while it was being scanned")
            got += n
        return buffer

    def release(self, absolute: int, length: int) -> None:
        pass  # nothing mapped: buffers are reused

    def close(self) -> None:
        os.close(self.fd)


def cached_fraction(fd: int, size: int, probes: int = PROBES) -> float:
    """The share of sampled pages of the file that are in the page cache (a non-blocking read succeeds)."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None or size == 0:
        return 1.0  # cannot tell: mmap is right for the common, warm case
    byte = bytearray(1)
    cached = 0
    for i in range(probes):
        offset = (size - 1) * i // max(1, probes - 1)
        try:
            os.preadv(fd, [byte], offset, flag)
        except BlockingIOError:
            continue
        except OSError:  # RWF_NOWAIT unsupported on this filesystem
            return 1.0
        cached += 1
    return cached / probes


def page_cached(fd: int, size: int, probes: int = PROBES) -> bool:
    """Whether the file is cached enough to be mapped: at least half of the sampled pages."""
    return cached_fraction(fd, size, probes) >= MAPPED_FROM


def open_source(path: Path, size_needed: int = 0, mode: str | None = None) -> ChunkSource:
    """Open ``path`` for chunked reading, choosing mmap or reads (``mode`` or NANDOCTOR_IO, else by probing)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < size_needed:
            raise FileChangedError(str(path), "tensor data lies past the end of the file")
        mode = mode or os.environ.get("NANDOCTOR_IO", "auto")
        if mode == "auto":
            mode = "mmap" if page_cached(fd, size) else "read"
        if mode == "mmap" and size > 0:
            return MappedSource(path, fd, size)
        return ReadSource(path, fd, size)
    except BaseException:
        os.close(fd)
        raise


class ThreadBuffers:
    """One reusable read buffer per worker thread (or the kernel's own staging, e.g. pinned memory)."""

    def __init__(self, kernel_buffer: Callable[[int], np.ndarray] | None = None) -> None:
        self._kernel_buffer = kernel_buffer
        self._local = threading.local()

    def __call__(self, nbytes: int) -> np.ndarray:
        if self._kernel_buffer is not None:
            return self._kernel_buffer(nbytes)
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size < nbytes:
            buffer = self._local.buffer = np.empty(nbytes, dtype=np.uint8)
        return buffer
