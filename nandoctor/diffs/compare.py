"""Read both sides of every pair chunk by chunk and compare: bytes first, values only where needed.

Same dtype, same byte order: each chunk pair is compared with ``memcmp`` (libc
through ctypes, which releases the GIL, so the thread pool runs at memory
speed); only a chunk whose bytes differ is decoded and compared value by
value. Another dtype (a cast) is compared value by value throughout. Bytes
come from the scan's sources (``sources.py``: mmap with pages dropped behind
the reads, or ``pread`` into reused buffers), torch views through
``restore/tensorbytes.py``'s tiles, so memory stays bounded by the chunks in
flight whatever the checkpoint's size.

A tensor stored as chunks on either side (DCP: one per rank) is compared as
its global tensor: the global box is cut by A's chunks and each part by B's
(``line_up``, with repair's ``restore/pieces.py``), so two checkpoints sharded
differently (1 rank against 2, DCP against safetensors) line up element by
element, and every position is given in the global tensor (engine/chunks.py's
``in_global``) in its own dimension order (``TensorRef.coords``). A GGUF tensor
(``ne`` order, ne0 fastest) is the row-major tensor of the reversed shape, the
same bytes in the same order (:func:`row_major`), so it lines up with a
safetensors or torch tensor of that shape.

Block-quantized tensors (GGUF) of the same type and shape are compared block by
block (blocks.py: scale fields as values, the payload as bytes), on chunks cut at
block boundaries; against anything else they cannot be lined up, and nothing is
counted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.diffs import values
from nandoctor.diffs.blocks import compare_blocks
from nandoctor.diffs.result import Change
from nandoctor.dtypes import DTYPES
from nandoctor.engine.chunks import in_global
from nandoctor.errors import NandoctorError
from nandoctor.kernels.census import to_little
from nandoctor.kernels.decode import decode
from nandoctor.model import ChunkOf, ProgressCallback, TensorRef
from nandoctor.restore.pieces import NotRestorable, pieces, view
from nandoctor.restore.tensorbytes import Box, boxes, byte_range, check_bounds, itemsize, read_box
from nandoctor.sources import ChunkSource, ThreadBuffers, open_source

CHUNK_BYTES = 4 << 20  # per side and chunk: numpy and memcmp are fastest near 4 MiB (shared/PERFORMANCE.md)


def _load_memcmp() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        memcmp = libc.memcmp
    except (OSError, AttributeError):
        return None
    memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    memcmp.restype = ctypes.c_int
    return memcmp


_MEMCMP = _load_memcmp()


def same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Byte equality of two uint8 arrays at memcmp speed (numpy when libc is out of reach)."""
    if x.nbytes != y.nbytes:
        return False
    if _MEMCMP is not None and x.flags.c_contiguous and y.flags.c_contiguous:
        return x.nbytes == 0 or _MEMCMP(x.ctypes.data, y.ctypes.data, x.nbytes) == 0
    return bool(np.array_equal(x, y))


@dataclass
class Outcome:
    """One pair's comparison, merged chunk by chunk on the main thread."""

    bytes_differ: bool = False
    values_differ: bool = False
    decodable: bool = True
    changed: int = 0
    max_abs: Change | None = None
    max_rel: Change | None = None
    max_abs_all: Change | None = None  # the largest |a - b| of all elements, roundings included
    rounding: float | None = None
    a_only: int = 0
    b_only: int = 0
    first_a_only: int | None = None
    first_b_only: int | None = None
    error: str | None = None
    bytes_read: int = 0
    per_block: bool = False  # block-quantized, compared block by block: ``changed`` counts blocks
    message: str | None = None  # why nothing was counted although the values differ (not decodable)


@dataclass(frozen=True)
class Work:
    """One tensor to compare: the (A, B) pieces read for it, and the tensor positions are given in.

    A tensor stored whole on both sides is one piece, itself. A chunked one is the parts of its global
    box that A's and B's chunks hold (:func:`line_up`), each piece a ref whose ``chunk`` says where it
    sits in the global tensor."""

    pieces: tuple[tuple[TensorRef, TensorRef], ...]
    whole: TensorRef  # A's tensor as reported (global shape, dimension order): the coordinates'
    error: str | None = None  # why its pieces could not be lined up: the tensor is unreadable


@dataclass
class _Task:
    a: TensorRef
    b: TensorRef
    bytes_first: bool  # same dtype and byte order: memcmp decides unchanged chunks
    rounding: tuple[str, int, int] | None
    whole: TensorRef
    outcome: Outcome = field(default_factory=Outcome)


def row_major(ref: TensorRef) -> TensorRef:
    """``ref`` with its dimensions in C order (the last fastest), the same elements at the same bytes: a GGUF
    tensor of ``ne`` [32, 64] is the C-contiguous [64, 32] array gguf's reader and torch give. Pieces are
    compared in this order; positions are still reported in the tensor's own order (``Work.whole``)."""
    return ref.row_major()


def line_up(a: TensorRef, stored_a: tuple[TensorRef, ...], b: TensorRef, stored_b: tuple[TensorRef, ...]) -> Work:
    """A tensor of the same global shape on both sides, stored as chunks on one or both (``stored_*``, empty
    for a whole tensor), as the pieces where A's and B's chunks meet: each part of the global box that one
    chunk of A and one of B hold, as views of both. Chunks that do not cover the tensor exactly once make
    an unreadable tensor (``Work.error``), never a guess."""
    side_a, side_b = list(stored_a) or [a], list(stored_b) or [b]
    shape = tuple(a.shape)
    flat = any(r.chunk is not None and r.chunk.flat for r in side_a + side_b)
    try:
        if flat:  # ZeRO's flat runs: everything lined up as runs of the flattened tensor
            side_a, side_b = _runs(side_a, shape), _runs(side_b, shape)
        everything = ((0,), (a.numel,)) if flat else ((0,) * len(shape), shape)
        out = []
        for part_a, chunk_a in pieces(everything, side_a, "A's"):
            for part, chunk_b in pieces(part_a, side_b, "B's"):
                place = ChunkOf(part[0], shape, flat=flat)
                out.append((dataclasses.replace(view(chunk_a, part), chunk=place),
                            dataclasses.replace(view(chunk_b, part), chunk=place)))
    except NotRestorable as exc:
        return Work((), a, f"cannot line its chunks up: {exc}")
    return Work(tuple(out), a)


def _runs(refs: list[TensorRef], shape: tuple[int, ...]) -> list[TensorRef]:
    """Stored refs as runs of the flattened global tensor (boxes of one dimension)."""
    numel = int(np.prod(shape, dtype=np.int64))
    out = []
    for ref in refs:
        if ref.chunk is not None and ref.chunk.flat:
            out.append(dataclasses.replace(ref, chunk=ChunkOf(ref.chunk.offsets, (numel,))))
        elif ref.chunk is None and ref.is_contiguous:
            out.append(dataclasses.replace(ref, shape=(numel,), strides=None))
        else:
            raise NotRestorable(f"{ref.file}: {ref.name!r} is cut into boxes on one side and into flat runs "
                                "(DeepSpeed ZeRO) on the other")
    return out


Chunk = tuple[int, int] | Box  # (first element, elements) of two contiguous tensors, or a box of views


class Comparer:
    """Compares pairs of tensors; one per diff (it holds the open files and the thread pool)."""

    def __init__(self, workers: int | None = None, progress: ProgressCallback | None = None, total: int = 0,
                 values: bool = True) -> None:
        self.values = values  # False: bytes only, no element is decoded (repair's proof: which tensors moved)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.progress = progress
        self.total = total
        self.done = 0
        self.sources: dict[str, ChunkSource] = {}
        self.fds: dict[str, int] = {}
        self.buffers = (ThreadBuffers(), ThreadBuffers())
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nandoctor-diff")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for source in self.sources.values():
            source.close()
        for fd in self.fds.values():
            os.close(fd)
        self.sources.clear()
        self.fds.clear()

    def compare_all(self, work: list[Work]) -> list[Outcome]:
        """Compare each tensor's pieces (A and B of the same shape); chunks of all pieces share one pool, in
        order. One :class:`Outcome` per tensor, its pieces merged in global positions."""
        outcomes = [Outcome(error=w.error) for w in work]
        tasks = [self._task(a, b, w.whole, outcome) for w, outcome in zip(work, outcomes) for a, b in w.pieces]
        window = 4 * self.workers
        pending: deque[tuple[_Task, Chunk, Future[Any]]] = deque()
        for task in tasks:
            try:
                for chunk in self._chunks(task):
                    if task.outcome.error is not None:
                        break
                    pending.append((task, chunk, self.pool.submit(self._run, task, chunk)))
                    while len(pending) >= window:
                        self._collect(*pending.popleft())
            except (NandoctorError, OSError) as exc:
                task.outcome.error = _reason(exc)
        while pending:
            self._collect(*pending.popleft())
        return outcomes

    def _task(self, a: TensorRef, b: TensorRef, whole: TensorRef, outcome: Outcome) -> _Task:
        quantized = a.region.blocks is not None or b.region.blocks is not None
        same = a.dtype == b.dtype and (
            quantized or a.region.byteorder == b.region.byteorder or DTYPES[a.dtype].lane_bits <= 8
        )
        task = _Task(a, b, same, values.narrower(a.dtype, b.dtype), whole, outcome)
        if quantized:
            outcome.per_block = _blockwise(a, b)
            outcome.decodable = self.values and outcome.per_block and a.region.byteorder == b.region.byteorder
            if not outcome.per_block:
                outcome.message = (f"{a.dtype} against {b.dtype}: quantized blocks are compared only with "
                                   "blocks of the same type; no value was compared")
            elif not outcome.decodable and self.values:
                outcome.message = ("compared by bytes only (the blocks are stored in other byte orders); "
                                   "the bytes differ")
        else:
            outcome.decodable = self.values and values.decodable(a.dtype) and values.decodable(b.dtype)
        return task

    def _chunks(self, task: _Task) -> Iterator[Chunk]:
        a, b = task.a, task.b
        check_bounds(a)
        check_bounds(b)
        numel = _units(a)
        if numel == 0:
            return
        quantized = a.region.blocks is not None or b.region.blocks is not None
        if quantized and not task.outcome.per_block:  # against another type or shape: nothing lines up
            task.outcome.bytes_differ = task.outcome.values_differ = True
            return
        if byte_range(a) is not None and byte_range(b) is not None:
            for ref in (a, b):
                self._source(ref)
            bits = max(_bits(a), _bits(b))
            step = max(8, (CHUNK_BYTES * 8 // bits) // 8 * 8)  # whole bytes for sub-byte dtypes
            if a.region.blocks is not None:  # whole blocks: each chunk's blocks are compared on their own
                step = max(1, CHUNK_BYTES // a.region.blocks.block_bytes) * a.region.blocks.block_bytes
            for start in range(0, numel, step):
                yield (start, min(step, numel - start))
            return
        for ref in (a, b):
            self._fd(ref.file)
        yield from boxes(a.shape, [a, b], max(itemsize(a), itemsize(b)), CHUNK_BYTES)

    def _source(self, ref: TensorRef) -> ChunkSource:
        source = self.sources.get(ref.file)
        if source is None:
            source = self.sources[ref.file] = open_source(Path(ref.file), ref.region.offset + ref.region.nbytes)
        return source

    def _fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def _read(self, ref: TensorRef, chunk: Chunk, side: int) -> np.ndarray:
        if isinstance(chunk[0], int):
            start, count = chunk
            span = byte_range(ref)
            assert span is not None
            bits = _bits(ref)
            return self.sources[ref.file].read(span[0] + start * bits // 8, count * bits // 8, self.buffers[side])
        return read_box(self.fds[ref.file], ref, chunk).view(np.uint8).reshape(-1)

    def _run(self, task: _Task, chunk: Chunk) -> tuple[bool, values.ChunkStats | None]:
        raw_a, raw_b = self._read(task.a, chunk, 0), self._read(task.b, chunk, 1)
        if task.bytes_first and same_bytes(raw_a, raw_b):
            return False, None
        if not task.outcome.decodable:
            return True, None
        if task.outcome.per_block:
            return True, compare_blocks(raw_a, raw_b, task.a.region, task.b.region)
        x = decode(_little(raw_a, task.a), task.a.dtype)
        y = decode(_little(raw_b, task.b), task.b.dtype)
        lanes_a, lanes_b = values.lanes_per_element(task.a.dtype), values.lanes_per_element(task.b.dtype)
        if lanes_a < lanes_b:  # a real tensor against a complex one: (value, 0) against (re, im)
            x = values.as_complex(x)
        elif lanes_b < lanes_a:
            y = values.as_complex(y)
        return True, values.compare(x, y, max(lanes_a, lanes_b), task.rounding)

    def _collect(self, task: _Task, chunk: Chunk, future: Future[Any]) -> None:
        outcome = task.outcome
        length = _chunk_bytes(task.a, chunk) + _chunk_bytes(task.b, chunk)
        # The worker's exception is taken, not raised here: raised, its traceback would hold this frame, this
        # frame the future, the future the exception (a cycle only the cyclic GC frees), and the worker's
        # frame in it the chunk's views of the mapped file, so close() would find the map still exported
        # ("BufferError: cannot close exported pointers exist"). Its traceback is dropped for the same reason.
        error = future.exception()
        self._release(task, chunk)
        if error is not None:
            if not isinstance(error, (NandoctorError, OSError)):
                raise error
            outcome.error = outcome.error or _reason(error)
            error.__traceback__ = None
            return
        differ, stats = future.result()
        outcome.bytes_read += length
        self.done += length
        if self.progress is not None:
            self.progress(self.done, self.total, task.a.file)
        outcome.bytes_differ |= differ
        if stats is None or not stats.values_differ:
            return
        outcome.values_differ = True
        fields = task.a.region.blocks
        if outcome.per_block and fields is not None and isinstance(chunk[0], int):
            first_block, elems = chunk[0] // fields.block_bytes, fields.block_elems
            _merge(outcome, stats, lambda i: (first_block + i) * elems, task.whole)  # block i: its first element
        else:
            _merge(outcome, stats, lambda i: _global_index(task.a, chunk, i), task.whole)

    def _release(self, task: _Task, chunk: Chunk) -> None:
        if not isinstance(chunk[0], int):
            return
        start, count = chunk
        for ref in (task.a, task.b):
            span = byte_range(ref)
            source = self.sources.get(ref.file)
            if span is not None and source is not None:
                bits = _bits(ref)
                source.release(span[0] + start * bits // 8, count * bits // 8)


def _blockwise(a: TensorRef, b: TensorRef) -> bool:
    """Whether two tensors are runs of the same blocks: the same quantization type and shape."""
    return a.region.blocks is not None and a.region.blocks == b.region.blocks and a.shape == b.shape


def _bits(ref: TensorRef) -> int:
    """Bits per read unit: the dtype's, or a byte for a block-quantized tensor (read as whole blocks of bytes)."""
    return 8 if ref.region.blocks is not None else DTYPES[ref.dtype].bits


def _units(ref: TensorRef) -> int:
    """How many units ``_bits`` measures: the elements, or a block-quantized tensor's bytes."""
    return ref.region.nbytes if ref.region.blocks is not None else ref.numel


def _little(raw: np.ndarray, ref: TensorRef) -> np.ndarray:
    if ref.region.blocks is not None:  # quantized blocks: blocks.py reads their scale fields itself
        return raw
    spec = DTYPES[ref.dtype]
    return to_little(raw, spec) if ref.region.byteorder == "big" and spec.lane_bits > 8 else raw


def _chunk_bytes(ref: TensorRef, chunk: Chunk) -> int:
    if isinstance(chunk[0], int):
        return chunk[1] * _bits(ref) // 8
    _origin, extents = chunk
    return int(np.prod(extents, dtype=np.int64)) * itemsize(ref)


def _global_index(piece: TensorRef, chunk: Chunk, local: int) -> int:
    """Flat index in the compared tensor (the global one for a piece of chunks) of element ``local`` of
    ``chunk`` of ``piece``."""
    shape = piece.shape
    if isinstance(chunk[0], int):
        flat = chunk[0] + local
    else:
        origin, extents = chunk
        inner = np.unravel_index(local, extents)
        coords = tuple(int(o) + int(i) for o, i in zip(origin, inner))
        flat = int(np.ravel_multi_index(coords, shape)) if shape else 0
    return flat if piece.chunk is None else in_global(flat, piece)


def _merge(outcome: Outcome, stats: values.ChunkStats, to_global: Callable[[int], int], whole: TensorRef) -> None:
    def change(at: int, a: float, b: float, amount: float) -> Change:
        index = to_global(at)
        return Change(index, whole.coords(index), float(a), float(b), amount)

    outcome.changed += stats.changed
    if stats.abs_at >= 0 and (outcome.max_abs is None or stats.abs_amount > outcome.max_abs.amount):
        outcome.max_abs = change(stats.abs_at, stats.abs_a, stats.abs_b, stats.abs_amount)
    if stats.rel_at >= 0 and (outcome.max_rel is None or stats.rel_amount > outcome.max_rel.amount):
        outcome.max_rel = change(stats.rel_at, stats.rel_a, stats.rel_b, stats.rel_amount)
    if stats.all_at >= 0 and (outcome.max_abs_all is None or stats.all_amount > outcome.max_abs_all.amount):
        outcome.max_abs_all = change(stats.all_at, stats.all_a, stats.all_b, stats.all_amount)
    if stats.rounding is not None:
        outcome.rounding = max(outcome.rounding or 0.0, stats.rounding)
    outcome.a_only += stats.a_only
    outcome.b_only += stats.b_only
    if stats.first_a_only >= 0:
        index = to_global(stats.first_a_only)
        outcome.first_a_only = index if outcome.first_a_only is None else min(outcome.first_a_only, index)
    if stats.first_b_only >= 0:
        index = to_global(stats.first_b_only)
        outcome.first_b_only = index if outcome.first_b_only is None else min(outcome.first_b_only, index)


def _reason(exc: NandoctorError | OSError) -> str:
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return exc.message


__all__ = ["Comparer", "Outcome", "Work", "line_up", "row_major", "same_bytes"]
