"""The CUDA backend: the torch kernel on the GPU, fed through pinned, per-thread staging buffers.

Chunks are larger than the CPU kernel's (each one costs a launch and a
synchronisation), and three worker threads keep page-cache reads,
host-to-device copies and the bit tests of different chunks in flight at once.
Importing this module imports torch; :mod:`nandoctor.kernels` only does so
when ``--device cuda`` (or ``auto`` on a machine with a GPU) asks for it.
"""

from __future__ import annotations

import torch

from nandoctor.errors import DeviceUnavailableError
from nandoctor.kernels.torch_kernel import TorchKernel

CHUNK_BYTES = 32 << 20  # 3 threads x 32 MB pinned: ~100 MB of staging, ~1 ms of PCIe each
WORKERS = 3


class CudaKernel(TorchKernel):
    def __init__(self, device: str = "cuda", chunk_bytes: int = CHUNK_BYTES, workers: int = WORKERS):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda was asked for, but torch sees no CUDA GPU")
        super().__init__(device, chunk_bytes=chunk_bytes, workers=workers, pinned=True)
        self.name = "cuda"
