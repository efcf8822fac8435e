"""A tensor's own elements as bytes: read them, compare them, or copy them from one file to another.

A safetensors tensor (or a plain torch storage) is one contiguous byte range:
it is copied with ``copy_file_range`` (kernel side, no user memory) and read
in chunks. A torch view (slice, transpose, strided rows) is handled in tiles
of at most ``TILE_BYTES``: each side of a tile is read or written either as
the one byte span that holds it (when the view is dense enough there) or run by
run along the side's contiguous dimension, so a transpose never touches more
than a tile's worth of the file at a time. Only ``pread``/``pwrite`` are used:
an mmap would map whole page-cache folios around every element a strided
view touches, and a transposed gigabyte would show up whole in resident memory.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator

import numpy as np

from nandoctor.dtypes import DTYPES
from nandoctor.errors import RepairFailedError
from nandoctor.model import TensorRef
from nandoctor.restore.convert import conversion

TILE_BYTES = 8 << 20  # logical bytes per tile of a strided view
CHUNK_BYTES = 8 << 20  # bytes per read of a contiguous tensor
_SPAN_SLACK = 2  # read a tile's whole span when it is at most this many times the tile's own bytes …
_SPAN_SMALL = 64 << 10  # … or this small anyway (one read beats many tiny ones)
_MAX_RUNS = 1 << 24  # beyond this many separate reads a view is too fragmented to patch sensibly

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (origin, extents) in logical indices


def itemsize(ref: TensorRef) -> int:
    """Bytes per element; for a block-quantized tensor (always whole and contiguous), bytes per block."""
    if ref.region.blocks is not None:
        return ref.region.blocks.block_bytes
    return DTYPES[ref.dtype].bits // 8


def nbytes(ref: TensorRef) -> int:
    if ref.region.blocks is not None:  # a GGUF quantized tensor is its whole region, validated by its reader
        return ref.region.nbytes
    return ref.numel * DTYPES[ref.dtype].bits // 8


def byte_range(ref: TensorRef) -> tuple[int, int] | None:
    """(absolute offset, length) when the tensor's elements are one contiguous run, else None."""
    if ref.region.blocks is not None:
        return ref.region.offset, ref.region.nbytes
    if not ref.is_contiguous:
        return None
    bits = DTYPES[ref.dtype].bits
    if bits % 8 and ref.storage_offset:
        return None
    return ref.region.offset + ref.storage_offset * bits // 8, nbytes(ref)


def check_bounds(ref: TensorRef) -> None:
    """Refuse a view that would reach outside its own region, or that cannot be addressed by element."""
    if ref.numel == 0 or ref.region.blocks is not None:  # blocks: the region itself, nothing to overreach
        return
    bits = DTYPES[ref.dtype].bits
    if bits % 8:
        if byte_range(ref) is None:
            raise RepairFailedError(f"{ref.file}: tensor {ref.name!r}: a strided view of a sub-byte dtype cannot be patched")
        end_bits = ref.numel * bits
    else:
        strides = ref.effective_strides
        if any(s < 0 for s in strides) or ref.storage_offset < 0:
            raise RepairFailedError(f"{ref.file}: tensor {ref.name!r} has negative strides; refused")
        end_bits = (ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, strides)) + 1) * bits
    if end_bits > ref.region.nbytes * 8:
        raise RepairFailedError(
            f"{ref.file}: tensor {ref.name!r} reaches past the end of its storage {ref.region.key!r}; refused",
            "the checkpoint is inconsistent; re-save it",
        )


def _unit_dim(ref: TensorRef) -> int | None:
    """The dimension along which the view's elements are adjacent in storage (stride 1), if any."""
    candidates = [k for k, (n, s) in enumerate(zip(ref.shape, ref.effective_strides)) if s == 1 and n > 1]
    return candidates[-1] if candidates else None


def boxes(shape: tuple[int, ...], refs: list[TensorRef], item: int, limit: int = TILE_BYTES) -> Iterator[Box]:
    """Tiles of the logical index space, at most ``limit`` bytes each, shaped so that every ref in
    ``refs`` reads long runs: its stride-1 dimension gets the largest extent the budget allows."""
    if not shape:
        yield (), ()
        return
    budget = max(1, limit // item)
    extents = [1] * len(shape)
    units = []
    for ref in refs:
        unit = _unit_dim(ref)
        if unit is not None and unit not in units:
            units.append(unit)
    if len(units) == 2:  # a transpose: share the budget so both sides read runs of about √budget
        side = max(1, math.isqrt(budget))
        a, b = units
        extents[a] = min(shape[a], side)
        extents[b] = min(shape[b], budget // extents[a])
        extents[a] = min(shape[a], budget // extents[b])
    elif units:
        extents[units[0]] = min(shape[units[0]], budget)
    used = math.prod(extents)
    for k in reversed(range(len(shape))):  # fill the rest of the budget, innermost dimensions first
        if k in units:
            continue
        extents[k] = max(1, min(shape[k], budget // used))
        used *= extents[k]
    ranges = [range(0, n, e) for n, e in zip(shape, extents)]
    for origin in itertools.product(*ranges):
        yield origin, tuple(min(e, n - o) for o, e, n in zip(origin, extents, shape))


def _side_plan(ref: TensorRef, origin: tuple[int, ...], extents: tuple[int, ...]) -> tuple[int, int, int | None]:
    """(first byte, span bytes, run dim or None = read the span whole) for one side of a box."""
    item = itemsize(ref)
    strides = ref.effective_strides
    first = ref.storage_offset + sum(o * s for o, s in zip(origin, strides))
    last = first + sum((e - 1) * s for e, s in zip(extents, strides))
    start = ref.region.offset + first * item
    span = (last - first + 1) * item
    useful = math.prod(extents) * item
    if span <= _SPAN_SLACK * useful or span <= _SPAN_SMALL:
        return start, span, None
    unit = _unit_dim(ref)
    return start, span, unit if unit is not None and extents[unit] > 1 else -1


def _runs(ref: TensorRef, origin: tuple[int, ...], extents: tuple[int, ...], run_dim: int) -> Iterator[tuple[tuple, int, int]]:
    """(logical index of the run within the box, absolute byte offset, elements) of each run."""
    item = itemsize(ref)
    strides = ref.effective_strides
    length = extents[run_dim] if run_dim >= 0 else 1
    others = [range(e) if (k != run_dim) else range(1) for k, e in enumerate(extents)]
    count = math.prod(extents) // length
    if count > _MAX_RUNS:
        raise RepairFailedError(
            f"{ref.file}: tensor {ref.name!r} is a view too fragmented to patch element by element",
            "re-save the checkpoint so the tensor is contiguous (tensor.contiguous()), then repair",
        )
    for index in itertools.product(*others):
        element = ref.storage_offset + sum((o + i) * s for o, i, s in zip(origin, index, strides))
        yield index, ref.region.offset + element * item, length


def _element_type(item: int) -> np.dtype:
    return np.dtype((np.void, item))


def _bytes_view(array: np.ndarray, n: int | None = None) -> memoryview:
    """The first ``n`` (default: all) bytes of a contiguous uint8 array, writable in place. ``ndarray.data``
    is that memoryview (and typed as one, which ``memoryview(array)`` is not in numpy's stubs)."""
    view = array.data
    return view if n is None else view[:n]


def _pread_into(fd: int, view: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise RepairFailedError(f"{path}: file ended early while reading tensor bytes at {offset + done}")
        done += n


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _box_plan(ref: TensorRef, box: Box) -> tuple[np.dtype, int, int, int | None]:
    """(element type, first byte, byte span, run dim or None) for reading or writing a box of ``ref``."""
    origin, extents = box
    start, span, run_dim = _side_plan(ref, origin, extents)
    return _element_type(itemsize(ref)), start, span, run_dim


def _span_view(fd: int, ref: TensorRef, extents: tuple[int, ...], element: np.dtype, start: int, span: int,
               *, writeable: bool) -> tuple[np.ndarray, np.ndarray]:
    """The span's bytes read into memory, and the box's elements as a strided view onto them."""
    raw = np.empty(span, dtype=np.uint8)
    _pread_into(fd, _bytes_view(raw), start, ref.file)
    item = itemsize(ref)
    strided = np.lib.stride_tricks.as_strided(
        raw.view(element), shape=extents, strides=tuple(s * item for s in ref.effective_strides), writeable=writeable
    )
    return raw, strided


def _run_order(extents: tuple[int, ...], run_dim: int) -> list[int]:
    return [k for k in range(len(extents)) if k != run_dim] + ([run_dim] if run_dim >= 0 else [])


def read_box(fd: int, ref: TensorRef, box: Box) -> np.ndarray:
    """The box's elements of ``ref`` as a C-ordered array of fixed-size byte elements."""
    origin, extents = box
    element, start, span, run_dim = _box_plan(ref, box)
    if run_dim is None:
        _raw, strided = _span_view(fd, ref, extents, element, start, span, writeable=False)
        return np.ascontiguousarray(strided)
    # Run by run: lay the runs out contiguously (run dim last), then view them in logical order.
    order = _run_order(extents, run_dim)
    laid = np.empty(tuple(extents[k] for k in order), dtype=element)
    rows = laid.reshape(-1, extents[run_dim] if run_dim >= 0 else 1)
    for row, (_, offset, _) in zip(rows, _runs(ref, origin, extents, run_dim)):
        _pread_into(fd, _bytes_view(row.view(np.uint8)), offset, ref.file)
    return np.ascontiguousarray(laid.transpose(np.argsort(order)))


def write_box(fd: int, ref: TensorRef, box: Box, values: np.ndarray) -> None:
    """Write ``values`` (C-ordered, the box's shape) into exactly the box's elements of ``ref``."""
    origin, extents = box
    element, start, span, run_dim = _box_plan(ref, box)
    if run_dim is None:
        # Read-modify-write the span: bytes between the view's elements keep their values.
        raw, strided = _span_view(fd, ref, extents, element, start, span, writeable=True)
        strided[...] = values
        _pwrite_all(fd, _bytes_view(raw), start)
        return
    order = _run_order(extents, run_dim)
    laid = np.ascontiguousarray(values.transpose(order))
    rows = laid.reshape(-1, extents[run_dim] if run_dim >= 0 else 1)
    for row, (_, offset, _) in zip(rows, _runs(ref, origin, extents, run_dim)):
        _pwrite_all(fd, _bytes_view(row.view(np.uint8)), offset)


def _check_file(fd: int, ref: TensorRef, path: str) -> None:
    if ref.region.offset + ref.region.nbytes > os.fstat(fd).st_size:
        raise RepairFailedError(f"{path}: tensor {ref.name!r} lies past the end of the file")


def iter_elements(path: str, ref: TensorRef, limit: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """All of the tensor's elements as uint8 blocks of whole elements (tile by tile for a view,
    so not necessarily in C order): for counting, not for hashing."""
    check_bounds(ref)
    if nbytes(ref) == 0:
        return
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        _check_file(fd, ref, path)
        span = byte_range(ref)
        if span is not None:
            start, length = span
            step = max(1, limit - limit % max(1, itemsize(ref)))
            buffer = np.empty(min(step, length), dtype=np.uint8)
            for offset in range(start, start + length, step):
                n = min(step, start + length - offset)
                _pread_into(fd, _bytes_view(buffer, n), offset, path)
                yield buffer[:n]
            return
        for box in boxes(ref.shape, [ref], itemsize(ref), limit):
            yield read_box(fd, ref, box).view(np.uint8).reshape(-1)


def same_elements(path_a: str, a: TensorRef, path_b: str, b: TensorRef, *, cast: bool = False) -> bool:
    """True when ``a`` holds exactly ``b``'s elements as they would be written into it: byte-identical
    when both agree on dtype and byte order, else ``b`` swapped (and, with ``cast``, cast) to ``a``'s. (In C order:
    a GGUF tensor's ``ne`` is reversed.)"""
    a, b = a.row_major(), b.row_major()
    if tuple(a.shape) != tuple(b.shape) or (a.dtype != b.dtype and not cast):
        return False
    check_bounds(a)
    check_bounds(b)
    if nbytes(a) == 0:
        return True
    into_a = conversion(b, a)
    with open(path_a, "rb", buffering=0) as fa, open(path_b, "rb", buffering=0) as fb:
        _check_file(fa.fileno(), a, path_a)
        _check_file(fb.fileno(), b, path_b)
        span_a, span_b = byte_range(a), byte_range(b)
        if into_a.verbatim and span_a is not None and span_b is not None:
            length = span_a[1]
            buf_a = np.empty(min(CHUNK_BYTES, length), dtype=np.uint8)
            buf_b = np.empty_like(buf_a)
            for done in range(0, length, CHUNK_BYTES):
                n = min(CHUNK_BYTES, length - done)
                _pread_into(fa.fileno(), _bytes_view(buf_a, n), span_a[0] + done, path_a)
                _pread_into(fb.fileno(), _bytes_view(buf_b, n), span_b[0] + done, path_b)
                if not np.array_equal(buf_a[:n], buf_b[:n]):
                    return False
            return True
        for box in boxes(a.shape, [a, b], max(itemsize(a), itemsize(b))):
            left = read_box(fa.fileno(), a, box).view(np.uint8).reshape(-1)
            right = read_box(fb.fileno(), b, box).view(np.uint8).reshape(-1)
            if not np.array_equal(left, right if into_a.verbatim else into_a.apply(right)):
                return False
    return True


def copy_elements(donor_path: str, donor: TensorRef, out_fd: int, target: TensorRef, *, cast: bool = False) -> int:
    """Write the donor tensor's elements into the target's own elements in ``out_fd``; returns bytes.

    Bytes are copied as they are when donor and target agree on dtype and byte order; otherwise each
    element is swapped into the target's byte order and, with ``cast``, cast to its dtype (convert.py). Both in C
    order (a GGUF tensor's ``ne`` reversed): a safetensors [4, 8] donor restores a GGUF ne [8, 4] target."""
    donor, target = donor.row_major(), target.row_major()
    if tuple(donor.shape) != tuple(target.shape) or (donor.dtype != target.dtype and not cast):
        raise RepairFailedError(f"{target.file}: tensor {target.name!r}: donor dtype/shape differ; refused")
    check_bounds(donor)
    check_bounds(target)
    if any(n > 1 and s == 0 for n, s in zip(target.shape, target.effective_strides)):
        raise RepairFailedError(f"{target.file}: tensor {target.name!r} is a broadcast view; it cannot be written")
    length = nbytes(target)
    if length == 0:
        return 0
    into = conversion(donor, target)
    with open(donor_path, "rb", buffering=0) as src:
        _check_file(src.fileno(), donor, donor_path)
        src_span, dst_span = byte_range(donor), byte_range(target)
        if into.verbatim and src_span is not None and dst_span is not None:
            _copy_range(src.fileno(), src_span[0], out_fd, dst_span[0], length)
            return length
        element = _element_type(itemsize(target))
        for box in boxes(target.shape, [donor, target], max(itemsize(donor), itemsize(target))):
            values = read_box(src.fileno(), donor, box)
            if not into.verbatim:
                values = into.apply(values.view(np.uint8).reshape(-1)).view(element).reshape(box[1])
            write_box(out_fd, target, box, values)
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
    if copied >= length:
        return
    buffer = np.empty(min(CHUNK_BYTES, length - copied), dtype=np.uint8)
    while copied < length:
        n = min(len(buffer), length - copied)
        _pread_into(src_fd, _bytes_view(buffer, n), src_offset + copied, "donor")
        _pwrite_all(dst_fd, _bytes_view(buffer, n), dst_offset + copied)
        copied += n
