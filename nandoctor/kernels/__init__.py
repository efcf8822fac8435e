"""Kernels answer one question about raw bytes of one dtype: which elements are NaN/+Inf/-Inf.

``KERNELS`` maps a device name to a factory; :func:`select_kernel` resolves
``auto`` to CUDA when torch sees a GPU and to the numpy CPU kernel otherwise.
Every kernel gives identical answers; tests hold them to that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from nandoctor.dtypes import DTypeSpec
from nandoctor.errors import DeviceUnavailableError

NAN, POSINF, NEGINF = 1, 2, 3  # kinds returned by Kernel.classify


@dataclass(frozen=True)
class ChunkCounts:
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int = -1  # element index within the chunk, -1 when all finite

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf


CLEAN = ChunkCounts()


def per_element(elements: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bad lanes (element index, kind; lanes in ascending order) as one entry per element.

    A complex element is two float lanes: it is NaN when either part is, otherwise +Inf or -Inf by
    its first non-finite part (real before imaginary), so counts never exceed the elements.
    """
    if elements.size == 0:
        return elements, kinds
    unique, first = np.unique(elements, return_index=True)
    combined = kinds[first].copy()
    has_nan = np.zeros(unique.size, dtype=bool)
    np.logical_or.at(has_nan, np.searchsorted(unique, elements), kinds == NAN)
    combined[has_nan] = NAN
    return unique, combined


def counts_of(elements: np.ndarray, kinds: np.ndarray) -> ChunkCounts:
    """Counts of per-element kinds (see :func:`per_element`)."""
    if elements.size == 0:
        return CLEAN
    return ChunkCounts(
        int(np.count_nonzero(kinds == NAN)),
        int(np.count_nonzero(kinds == POSINF)),
        int(np.count_nonzero(kinds == NEGINF)),
        int(elements.min()),
    )


@dataclass(frozen=True)
class OverflowCounts:
    """For ``--target-dtype``: finite lanes whose magnitude reaches the cast's overflow threshold,
    and the largest finite magnitude as raw source bits (-1 when no lane is finite)."""

    overflow: int = 0
    max_bits: int = -1

    def merge(self, other: OverflowCounts) -> OverflowCounts:
        return OverflowCounts(self.overflow + other.overflow, max(self.max_bits, other.max_bits))


NO_OVERFLOW = OverflowCounts()


class Kernel(Protocol):
    name: str
    chunk_bytes: int  # the engine hands chunks of at most this many bytes
    workers: int  # how many chunks may be in flight at once

    def any_nonfinite(self, data: np.ndarray, spec: DTypeSpec) -> bool:
        """Fast pass: True when some element of ``data`` (uint8, whole elements) is NaN/Inf."""

    def count(self, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        """Exact counts for ``data``; only called on chunks the fast pass flagged."""

    def check(self, data: np.ndarray, spec: DTypeSpec) -> ChunkCounts:
        """The fast pass, then exact counts only if it flagged: what the engine calls per chunk."""

    def classify(self, data: np.ndarray, spec: DTypeSpec) -> tuple[np.ndarray, np.ndarray]:
        """(element indices, kinds) of every non-finite element, for storages shared by views."""

    def overflow(self, data: np.ndarray, spec: DTypeSpec, threshold: int) -> OverflowCounts:
        """Finite lanes with magnitude bits >= ``threshold``, and the largest finite magnitude.

        ``threshold`` comes from :func:`nandoctor.kernels.targets.threshold_bits`.
        """


def _cpu() -> Kernel:
    from nandoctor.kernels.cpu import CpuKernel

    return CpuKernel()


def _cuda() -> Kernel:
    try:
        from nandoctor.kernels.cuda import CudaKernel
    except ImportError as exc:
        raise DeviceUnavailableError(f"the CUDA backend needs torch ({exc})") from None
    return CudaKernel()


KERNELS: dict[str, Callable[[], Kernel]] = {"cpu": _cpu, "cuda": _cuda}


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU. Cheap checks first: importing torch costs a second."""
    import importlib.util
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    import torch  # only reached when torch is installed and auto was asked for

    return bool(torch.cuda.is_available())


def require_device(device: str) -> None:
    """Refuse a device that cannot be used (DeviceUnavailableError), before any checkpoint is opened: a run scans
    many, and each would otherwise fail on its own, as if its files were at fault. ``auto`` always can."""
    if device != "auto":
        select_kernel(device)


def select_kernel(device: str = "auto") -> Kernel:
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device not in KERNELS:
        raise DeviceUnavailableError(f"unknown device {device!r}; choose one of auto, {', '.join(KERNELS)}")
    return KERNELS[device]()
