"""A tensor's own elements as bytes: read them in logical order, or copy them between files.

A safetensors tensor (or a plain torch storage) is one contiguous byte range,
copied with ``copy_file_range`` (kernel side, no user memory). A torch view
(slice, transpose, tied storage) is addressed with numpy ``as_strided`` over an
mmap, so only the view's own elements are read or written. Work goes in blocks
of at most ``BLOCK_BYTES`` and mapped pages are dropped as it goes, so memory
stays flat whatever the tensor's size.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nandoctor.dtypes import DTYPES
from nandoctor.errors import RepairFailedError
from nandoctor.model import TensorRef

BLOCK_BYTES = 8 << 20
_RELEASE_EVERY = 64 << 20


def itemsize(ref: TensorRef) -> int:
    return DTYPES[ref.dtype].bits // 8


def nbytes(ref: TensorRef) -> int:
    return ref.numel * DTYPES[ref.dtype].bits // 8


def byte_range(ref: TensorRef) -> tuple[int, int] | None:
    """(absolute offset, length) when the tensor's elements are one contiguous run, else None."""
    if not ref.is_contiguous:
        return None
    bits = DTYPES[ref.dtype].bits
    if bits % 8 and ref.storage_offset:
        return None
    start = ref.region.offset + ref.storage_offset * bits // 8
    return start, nbytes(ref)


def check_bounds(ref: TensorRef) -> None:
    """Refuse a view that would reach outside its own region (or that a write could not honour)."""
    size = DTYPES[ref.dtype].bits
    if ref.numel == 0:
        return
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    if size % 8 and not ref.is_contiguous:
        raise RepairFailedError(f"{ref.file}: tensor {ref.name!r}: a strided view of a sub-byte dtype cannot be patched")
    if any(s < 0 for s in strides) or ref.storage_offset < 0:
        raise RepairFailedError(f"{ref.file}: tensor {ref.name!r} has negative strides; refused")
    high = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, strides))
    end_bits = (high + 1) * size if size % 8 == 0 else ref.storage_offset * size + ref.numel * size
    if end_bits > ref.region.nbytes * 8:
        raise RepairFailedError(
            f"{ref.file}: tensor {ref.name!r} reaches past the end of its storage {ref.region.key!r}; refused",
            "the checkpoint is inconsistent; re-save it",
        )


def _blocks(shape: tuple[int, ...], item: int, limit: int) -> Iterator[tuple]:
    """Index tuples cutting an array of ``shape`` into blocks of at most ``limit`` bytes."""
    if not shape:
        yield ()
        return
    inner = math.prod(shape[1:]) * item
    if inner * shape[0] <= limit:
        yield (slice(None),)
        return
    if inner <= limit:
        step = max(1, limit // max(inner, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, min(start + step, shape[0])),)
        return
    for i in range(shape[0]):
        for rest in _blocks(shape[1:], item, limit):
            yield (i, *rest)


def _strided(buffer: mmap.mmap, ref: TensorRef, writeable: bool) -> np.ndarray:
    """The view's elements as a numpy array over ``buffer`` (read-only or writing through to the file)."""
    item = itemsize(ref)
    element = np.dtype((np.void, item))
    if ref.numel == 0:
        return np.empty(ref.shape, dtype=element)
    start = ref.region.offset + ref.storage_offset * item
    end = ref.region.offset + ref.region.nbytes
    count = (end - start) // item  # check_bounds guarantees the view stays inside [start, end)
    elements = np.frombuffer(buffer, dtype=element, count=count, offset=start)
    strides = ref.strides if ref.strides is not None else ref.contiguous_strides
    return as_strided(elements, shape=ref.shape, strides=tuple(s * item for s in strides), writeable=writeable)


def _release(buffer: mmap.mmap) -> None:
    """Drop this process's mapped pages (dirty shared pages stay in the page cache)."""
    if hasattr(mmap, "MADV_DONTNEED"):
        buffer.madvise(mmap.MADV_DONTNEED)


def iter_logical(path: str, ref: TensorRef, limit: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's elements in C order, as uint8 blocks of whole elements (at most ``limit`` bytes)."""
    check_bounds(ref)
    span = byte_range(ref)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if ref.region.offset + ref.region.nbytes > size:
            raise RepairFailedError(f"{path}: tensor {ref.name!r} lies past the end of the file")
        if size == 0 or nbytes(ref) == 0:
            return
        buffer = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if span is not None:
            start, length = span
            step = max(1, limit - limit % max(1, itemsize(ref) or 1))
            done = 0
            for offset in range(start, start + length, step):
                block = np.frombuffer(buffer, dtype=np.uint8, count=min(step, start + length - offset), offset=offset)
                yield block
                del block
                done += step
                if done >= _RELEASE_EVERY:
                    _release(buffer)
                    done = 0
            return
        array = _strided(buffer, ref, writeable=False)
        done = 0
        for index in _blocks(ref.shape, itemsize(ref), limit):
            block = np.ascontiguousarray(array[index]).view(np.uint8).reshape(-1)
            yield block
            done += block.size
            if done >= _RELEASE_EVERY:
                _release(buffer)
                done = 0
        del array
    finally:
        try:
            buffer.close()
        except BufferError:
            pass  # the caller still holds the last block; the mapping goes when it does


def copy_elements(donor_path: str, donor: TensorRef, out_fd: int, target: TensorRef) -> int:
    """Write the donor tensor's elements into the target's own elements in ``out_fd``; returns bytes."""
    if donor.dtype != target.dtype or tuple(donor.shape) != tuple(target.shape):
        raise RepairFailedError(f"{target.file}: tensor {target.name!r}: donor dtype/shape differ; refused")
    check_bounds(donor)
    check_bounds(target)
    if any(n > 1 and s == 0 for n, s in zip(target.shape, target.strides or ())):
        raise RepairFailedError(f"{target.file}: tensor {target.name!r} is a broadcast view; it cannot be written")
    length = nbytes(target)
    if length == 0:
        return 0
    src_span, dst_span = byte_range(donor), byte_range(target)
    with open(donor_path, "rb") as src:
        if src_span is not None and dst_span is not None:
            _copy_range(src.fileno(), src_span[0], out_fd, dst_span[0], length)
            return length
        src_map = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ)
    dst_map = mmap.mmap(out_fd, 0, access=mmap.ACCESS_WRITE)
    try:
        src_array = _strided(src_map, donor, writeable=False)
        dst_array = _strided(dst_map, target, writeable=True)
        done = 0
        for index in _blocks(target.shape, itemsize(target), BLOCK_BYTES):
            dst_array[index] = src_array[index]
            done += dst_array[index].nbytes
            if done >= _RELEASE_EVERY:
                _release(src_map)
                _release(dst_map)
                done = 0
        del src_array, dst_array
        dst_map.flush()
    finally:
        src_map.close()
        dst_map.close()
    return length


def _copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, length: int) -> None:
    """Kernel-side copy (no user memory) with a pread/pwrite fallback."""
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < length:
                n = os.copy_file_range(src_fd, dst_fd, length - copied, src_offset + copied, dst_offset + copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            pass  # EXDEV, ENOSYS, EINVAL on some filesystems: fall back below
    buffer = bytearray(min(BLOCK_BYTES, length - copied)) if copied < length else bytearray()
    while copied < length:
        n = os.preadv(src_fd, [memoryview(buffer)[: min(len(buffer), length - copied)]], src_offset + copied)
        if n <= 0:
            raise RepairFailedError(f"donor file ended early while copying {length} bytes")
        written = 0
        while written < n:
            written += os.pwrite(dst_fd, memoryview(buffer)[written:n], dst_offset + copied + written)
        copied += n
