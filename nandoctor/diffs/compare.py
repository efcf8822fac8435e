"""Read both sides of every pair chunk by chunk and compare: bytes first, values only where needed.

Same dtype, same byte order: each chunk pair is compared with ``memcmp`` (libc
through ctypes, which releases the GIL, so the thread pool runs at memory
speed); only a chunk whose bytes differ is decoded and compared value by
value. Another dtype (a cast) is compared value by value throughout. Bytes
come from the scan's sources (``sources.py``: mmap with pages dropped behind
the reads, or ``pread`` into reused buffers), torch views through
``restore/tensorbytes.py``'s tiles, so memory stays bounded by the chunks in
flight whatever the checkpoint's size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nandoctor.diffs import values
from nandoctor.diffs.result import Change
from nandoctor.dtypes import DTYPES
from nandoctor.errors import NandoctorError
from nandoctor.kernels.census import to_little
from nandoctor.model import ProgressCallback, TensorRef, coords_of
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
    rounding: float | None = None
    a_only: int = 0
    b_only: int = 0
    first_a_only: int | None = None
    first_b_only: int | None = None
    error: str | None = None
    bytes_read: int = 0


@dataclass
class _Task:
    a: TensorRef
    b: TensorRef
    bytes_first: bool  # same dtype and byte order: memcmp decides unchanged chunks
    rounding: tuple[str, int, int] | None
    outcome: Outcome = field(default_factory=Outcome)


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

    def compare_all(self, pairs: list[tuple[TensorRef, TensorRef]]) -> list[Outcome]:
        """Compare each (A, B) pair of the same shape; chunks of all pairs share one pool, in order."""
        tasks = [self._task(a, b) for a, b in pairs]
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
        return [t.outcome for t in tasks]

    def _task(self, a: TensorRef, b: TensorRef) -> _Task:
        quantized = a.region.blocks is not None or b.region.blocks is not None
        same = a.dtype == b.dtype and (
            quantized or a.region.byteorder == b.region.byteorder or DTYPES[a.dtype].lane_bits <= 8
        )
        task = _Task(a, b, same, values.narrower(a.dtype, b.dtype))
        task.outcome.decodable = (
            self.values and not quantized and values.decodable(a.dtype) and values.decodable(b.dtype)
        )
        return task

    def _chunks(self, task: _Task) -> Iterator[Chunk]:
        a, b = task.a, task.b
        check_bounds(a)
        check_bounds(b)
        numel = _units(a)
        if numel == 0:
            return
        if (a.region.blocks is None) != (b.region.blocks is None) or (
            a.region.blocks is not None and (a.dtype, a.shape) != (b.dtype, b.shape)
        ):  # a quantized tensor against another type or shape: its values cannot be lined up
            task.outcome.bytes_differ = task.outcome.values_differ = True
            return
        if byte_range(a) is not None and byte_range(b) is not None:
            for ref in (a, b):
                self._source(ref)
            bits = max(_bits(a), _bits(b))
            step = max(8, (CHUNK_BYTES * 8 // bits) // 8 * 8)  # whole bytes for sub-byte dtypes
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
        x = values.decode(_little(raw_a, task.a), task.a.dtype)
        y = values.decode(_little(raw_b, task.b), task.b.dtype)
        lanes = values.lanes_per_element(task.a.dtype)
        if x.size != y.size:  # a real and a complex tensor: compare element by element is meaningless
            raise NandoctorError(f"tensor {task.a.name!r}: {task.a.dtype} and {task.b.dtype} elements do not line up")
        return True, values.compare(x, y, lanes, task.rounding)

    def _collect(self, task: _Task, chunk: Chunk, future: Future[Any]) -> None:
        outcome = task.outcome
        length = _chunk_bytes(task.a, chunk) + _chunk_bytes(task.b, chunk)
        try:
            differ, stats = future.result()
        except (NandoctorError, OSError) as exc:
            outcome.error = outcome.error or _reason(exc)
            return
        finally:
            self._release(task, chunk)
        outcome.bytes_read += length
        self.done += length
        if self.progress is not None:
            self.progress(self.done, self.total, task.a.file)
        outcome.bytes_differ |= differ
        if stats is None or not stats.values_differ:
            return
        outcome.values_differ = True
        _merge(outcome, stats, lambda i: _global_index(task.a.shape, chunk, i), task.a.shape)

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


def _bits(ref: TensorRef) -> int:
    """Bits per compared unit: the dtype's, or a byte for a block-quantized tensor (compared as bytes)."""
    return 8 if ref.region.blocks is not None else DTYPES[ref.dtype].bits


def _units(ref: TensorRef) -> int:
    """How many units ``_bits`` measures: the elements, or a block-quantized tensor's bytes."""
    return ref.region.nbytes if ref.region.blocks is not None else ref.numel


def _little(raw: np.ndarray, ref: TensorRef) -> np.ndarray:
    if ref.region.blocks is not None:  # quantized blocks are compared as bytes, never decoded
        return raw
    spec = DTYPES[ref.dtype]
    return to_little(raw, spec) if ref.region.byteorder == "big" and spec.lane_bits > 8 else raw


def _chunk_bytes(ref: TensorRef, chunk: Chunk) -> int:
    if isinstance(chunk[0], int):
        return chunk[1] * _bits(ref) // 8
    _origin, extents = chunk
    return int(np.prod(extents, dtype=np.int64)) * itemsize(ref)


def _global_index(shape: tuple[int, ...], chunk: Chunk, local: int) -> int:
    if isinstance(chunk[0], int):
        return chunk[0] + local
    origin, extents = chunk
    inner = np.unravel_index(local, extents)
    coords = tuple(int(o) + int(i) for o, i in zip(origin, inner))
    return int(np.ravel_multi_index(coords, shape)) if shape else 0


def _merge(outcome: Outcome, stats: values.ChunkStats, to_global: Callable[[int], int], shape: tuple[int, ...]) -> None:
    def change(at: int, a: float, b: float, amount: float) -> Change:
        index = to_global(at)
        return Change(index, coords_of(index, shape), float(a), float(b), amount)

    outcome.changed += stats.changed
    if stats.abs_at >= 0 and (outcome.max_abs is None or stats.abs_amount > outcome.max_abs.amount):
        outcome.max_abs = change(stats.abs_at, stats.abs_a, stats.abs_b, stats.abs_amount)
    if stats.rel_at >= 0 and (outcome.max_rel is None or stats.rel_amount > outcome.max_rel.amount):
        outcome.max_rel = change(stats.rel_at, stats.rel_a, stats.rel_b, stats.rel_amount)
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


__all__ = ["Comparer", "Outcome", "same_bytes"]
