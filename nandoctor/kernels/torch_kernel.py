"""The torch kernel: the numpy kernel's bit tests, written once in torch, for any device.

``TorchKernel("cuda")`` is the GPU backend; ``TorchKernel("cpu")`` runs the very
same code on CPU tensors so the test suite holds it to the numpy kernel's
answers on machines without a GPU. Bytes take one path on both: copied from
the mapped file into this thread's staging buffer (pinned host memory on CUDA),
then moved to the device (``non_blocking``, on this thread's own CUDA stream;
a no-op on CPU), then tested there. Only a few scalars come back.

Overlap comes from the engine's worker threads: each owns a staging buffer
and a stream, so while one thread's host-to-device copy runs, another's
kernel runs and a third fills its buffer from the page cache — the three
stages of a double-buffered pipeline, without a hand-written scheduler.

torch lacks bit operations on uint16/32/64, so lanes are read as the signed
integer of the same width: the magnitude mask (sign bit clear) and every
threshold are positive there, and a pattern with the sign bit set is compared
through its two's-complement value. The lane functions below also serve
:mod:`nandoctor.kernels.live` for tensors already on a device.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from nandoctor.dtypes import DTypeSpec, Family
from nandoctor.kernels import (
    CLEAN,
    NAN,
    NEGINF,
    NO_OVERFLOW,
    POSINF,
    ChunkCounts,
    OverflowCounts,
    counts_of,
    per_element,
)
from nandoctor.kernels.targets import (
    checks_overflow,
    first_nonfinite_magnitude,
    magnitude_mask,
)

LANE_DTYPES = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}


def signed(value: int, bits: int) -> int:
    """The two's-complement reading of a ``bits``-wide pattern (how torch's signed lanes see it)."""
    if bits == 8:  # 8-bit lanes are torch.uint8: no reinterpretation
        return value
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _nonfinite_mask(lanes: torch.Tensor, spec: DTypeSpec) -> torch.Tensor:
    if spec.family is Family.NAN_CODES:
        mask = lanes == spec.nan_codes[0]
        for code in spec.nan_codes[1:]:
            mask |= lanes == code
        return mask
    return (lanes & (spec.sign_mask - 1)) >= spec.exp_mask


def lane_any(lanes: torch.Tensor, spec: DTypeSpec) -> torch.Tensor:
    """0-d bool tensor on the lanes' device: anything non-finite?"""
    return _nonfinite_mask(lanes, spec).any()


def lane_counts(lanes: torch.Tensor, spec: DTypeSpec) -> torch.Tensor:
    """int64[4] on the lanes' device: nan, +inf, -inf, first bad lane (or -1)."""
    bad = _nonfinite_mask(lanes, spec)
    total = bad.sum(dtype=torch.int64)
    if spec.family is Family.NAN_CODES:
        posinf = neginf = torch.zeros((), dtype=torch.int64, device=lanes.device)
    else:
        bits = spec.lane_bits
        posinf = (lanes == signed(spec.exp_mask, bits)).sum(dtype=torch.int64)
        neginf = (lanes == signed(spec.exp_mask | spec.sign_mask, bits)).sum(dtype=torch.int64)
    # argmax returns the first maximal index; -1 when nothing is bad.
    first = torch.where(total > 0, bad.to(torch.uint8).argmax(), torch.full_like(total, -1))
    return torch.stack([total - posinf - neginf, posinf, neginf, first])


def lane_overflow(lanes: torch.Tensor, spec: DTypeSpec, threshold: int) -> torch.Tensor:
    """int64[2] on the lanes' device: finite lanes with magnitude >= threshold, max finite magnitude (or -1)."""
    magnitude = lanes & magnitude_mask(spec)  # non-negative in every lane dtype
    if spec.family is Family.NAN_CODES:
        finite = ~_nonfinite_mask(lanes, spec)
    else:
        finite = magnitude < first_nonfinite_magnitude(spec)
    over = ((magnitude >= threshold) & finite).sum(dtype=torch.int64)
    top = torch.where(finite, magnitude, torch.zeros_like(magnitude)).max().to(torch.int64)
    return torch.stack([over, torch.where(finite.any(), top, torch.full_like(top, -1))])


class TorchKernel:
    """The Kernel protocol on torch tensors of ``device``; answers equal the numpy kernel's."""

    def __init__(self, device: str = "cpu", chunk_bytes: int = 16 << 20, workers: int = 2, pinned: bool | None = None):
        self.device = torch.device(device)
        self.name = f"torch-{self.device.type}"
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self._pinned = self.device.type == "cuda" if pinned is None else pinned
        self._local = threading.local()

    # -- staging ---------------------------------------------------------------------------

    def _staging(self, nbytes: int) -> torch.Tensor:
        local = self._local
        staging = getattr(local, "staging", None)
        if staging is None or staging.numel() < nbytes:
            staging = torch.empty(max(self.chunk_bytes, nbytes), dtype=torch.uint8, pin_memory=self._pinned)
            local.staging = staging
        return staging

    def host_buffer(self, nbytes: int) -> np.ndarray:
        """This thread's staging buffer as numpy: the engine reads a cold file straight into it
        (into pinned memory on CUDA), saving a copy."""
        return self._staging(nbytes).numpy()

    def _lanes(self, data: np.ndarray, spec: DTypeSpec) -> torch.Tensor:
        """``data`` (uint8) on the device, as lanes."""
        host = self._staging(data.size)[: data.size]
        # The buffer is refilled only after the previous upload finished: every call below
        # ends in a host read of its result, which waits for this thread's stream.
        if data.ctypes.data != host.data_ptr():  # already there when the engine read into it
            np.copyto(host.numpy(), data)  # page cache -> staging buffer; numpy drops the GIL
        stream = self._stream()
        if stream is not None:
            with torch.cuda.stream(stream):
                on_device = host.to(self.device, non_blocking=True)
        else:
            on_device = host
        return on_device.view(LANE_DTYPES[spec.lane_bits])

    def _stream(self) -> torch.cuda.Stream | None:
        """This thread's CUDA stream, made on first use (None on the CPU).

        The upload in ``_lanes`` and the bit tests after it must run on this one stream: before, a
        thread's first chunk ran its tests on the default stream while its upload, on the stream made
        meanwhile, could still be in flight, and NaN in that chunk were missed (seen on an H200 with
        NANDOCTOR_IO=read)."""
        if self.device.type != "cuda":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(device=self.device)
        return stream

    def _run(self, fn: Any, *args: Any) -> list[int]:
        stream = self._stream()
        if stream is not None:
            with torch.cuda.stream(stream):
                return fn(*args).tolist()  # waits for this stream only
        return fn(*args).tolist()

    # -- the Kernel protocol ---------------------------------------------------------------

    def any_nonfinite(self, data: np.ndarray, spec: DTypeSpec) -> bool:
        if spec.family is Family.FINITE or data.size == 0:
            return False
        return bool(self._run(lambda: lane_any(self._lanes(data, spec), spec).reshape(1))[0])

    def count(self, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        if spec.family is Family.FINITE or data.size == 0:
            return CLEAN
        return self._per_element(self._counts(self._run(lambda: lane_counts(self._lanes(data, spec), spec)), spec),
                                 data, spec)

    def check(self, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        """One upload for both steps; the counting kernels run only when the fast pass flagged."""
        if spec.family is Family.FINITE or data.size == 0:
            return CLEAN

        def work() -> torch.Tensor:
            lanes = self._lanes(data, spec)
            if not bool(lane_any(lanes, spec)):  # one scalar back: the common, clean case
                return torch.zeros(4, dtype=torch.int64)
            return lane_counts(lanes, spec)

        return self._per_element(self._counts(self._run(work), spec), data, spec)

    def _per_element(self, counts: ChunkCounts, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        """Complex chunks that hold NaN/Inf are recounted per element (kernels.per_element)."""
        if spec.lanes_per_element > 1 and counts.nonfinite:
            return counts_of(*self.classify(data, spec))
        return counts

    @staticmethod
    def _counts(values: list[int], spec: DTypeSpec) -> ChunkCounts:
        nan, posinf, neginf, first = values
        if nan + posinf + neginf == 0:
            return CLEAN
        return ChunkCounts(nan, posinf, neginf, first // spec.lanes_per_element)

    def classify(self, data: np.ndarray, spec: DTypeSpec) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.empty(0, np.int64), np.empty(0, np.uint8))
        if spec.family is Family.FINITE or data.size == 0:
            return empty

        def work() -> torch.Tensor:
            lanes = self._lanes(data, spec)
            where = torch.nonzero(_nonfinite_mask(lanes, spec)).flatten()
            values = lanes[where]
            kinds = torch.full_like(where, NAN)
            if spec.family is Family.IEEE:
                kinds[values == signed(spec.exp_mask, spec.lane_bits)] = POSINF
                kinds[values == signed(spec.exp_mask | spec.sign_mask, spec.lane_bits)] = NEGINF
            return torch.stack([where, kinds]).cpu()

        both = self._run_array(work)
        elements, kinds = both[0] // spec.lanes_per_element, both[1].astype(np.uint8)
        return per_element(elements, kinds) if spec.lanes_per_element > 1 else (elements, kinds)

    def _run_array(self, fn: Any) -> np.ndarray:
        stream = self._stream()
        if stream is not None:
            with torch.cuda.stream(stream):
                return fn().numpy()
        return fn().numpy()

    def overflow(self, data: np.ndarray, spec: DTypeSpec, threshold: int) -> OverflowCounts:
        if not checks_overflow(spec) or data.size == 0:
            return NO_OVERFLOW
        over, top = self._run(lambda: lane_overflow(self._lanes(data, spec), spec, threshold))
        return OverflowCounts(over, top)
