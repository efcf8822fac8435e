"""NaN/Inf per expert of a tensor that stacks a mixture-of-experts layer's experts (GGUF ``*_exps``).

Each expert is an equal, contiguous slice along the slowest dimension, so a
bad tensor is read again expert by expert (only tensors that hold NaN/Inf:
clean files never get here) and each slice counted with the scan's kernel.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nandoctor.blockfields import gather
from nandoctor.dtypes import DTYPES
from nandoctor.engine.work import chunk_step
from nandoctor.errors import NandoctorError
from nandoctor.kernels import Kernel
from nandoctor.kernels.census import to_little
from nandoctor.model import ScanProblem, TensorRef, TensorResult
from nandoctor.sources import BufferFor, ThreadBuffers, open_source


def with_expert_counts(tensors: list[TensorResult], kernel: Kernel) -> tuple[list[TensorResult], list[ScanProblem]]:
    """``tensors`` with ``experts`` filled in for every bad stacked-experts tensor."""
    out, problems = list(tensors), []
    buffers = ThreadBuffers(None)
    for i, t in enumerate(tensors):
        ref = t.ref
        if not t.nonfinite or ref.experts < 2 or ref.region.nbytes % ref.experts:
            continue
        try:
            out[i] = dataclasses.replace(t, experts=_per_expert(ref, kernel, buffers))
        except (NandoctorError, OSError) as exc:
            problems.append(ScanProblem(ref.file, f"cannot read tensor {ref.name!r} again to count per expert: {exc}"))
    return out, problems


def _per_expert(ref: TensorRef, kernel: Kernel, buffers: BufferFor) -> tuple[int, ...]:
    region, spec = ref.region, DTYPES[ref.region.dtype]
    size = region.nbytes // ref.experts
    step = chunk_step(region, spec, kernel.chunk_bytes)
    counts = []
    source = open_source(Path(region.file), region.offset + region.nbytes)
    try:
        for expert in range(ref.experts):
            bad = 0
            begin = region.offset + expert * size
            for start in range(begin, begin + size, step):
                data = source.read(start, min(step, begin + size - start), buffers)
                lanes = gather(data, region) if region.blocks is not None else data
                del data  # an exported buffer would stop the mmap from closing
                if region.byteorder == "big" and spec.lane_bits > 8:
                    lanes = to_little(lanes, spec)
                bad += kernel.check(lanes, spec).nonfinite
                del lanes
            counts.append(bad)
    finally:
        source.close()
    return tuple(counts)
