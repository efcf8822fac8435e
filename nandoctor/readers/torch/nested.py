"""``torch.save`` streams pickled inside a torch file (``io.BytesIO`` values), read from memory and counted.

TransformerEngine modules keep their FP8 scaling state as ``_extra_state``: an ``io.BytesIO`` holding
``torch.save({"scale_fwd": …, "amax_history_fwd": …})``, which Megatron-style checkpoints carry for every layer
(in a torch file, or as a DCP item that pickles the BytesIO). ``torch.load(weights_only=False)`` gives the
BytesIO back and the module's ``set_extra_state`` ``torch.load``s its bytes: a NaN scale there makes every FP8
forward pass NaN, though no tensor of the outer file holds one. So the bytes of each such value that are a
``torch.save`` stream (zip, or the legacy format) are read by the same reader, from memory, and every storage of
it counted for NaN/+Inf/-Inf (:func:`count_storages`; ``UnviewedBad`` of kind ``stream``: no repair by tensor
name restores them). Bytes of any other kind are left as they are (nothing loads them as a checkpoint).
"""

from __future__ import annotations

from typing import Any

from nandoctor.model import ReadResult, Region, ScanProblem, UnviewedBad
from nandoctor.readers.torch.numpy_arrays import bytes_of
from nandoctor.readers.torch.stubs import Placeholder

STREAM_GLOBALS = frozenset({"_io.BytesIO", "io.BytesIO"})
MAX_DEPTH = 3  # a stream in a stream in a stream: deeper nesting is refused, not followed


def is_stream(value: Any) -> bool:
    """A pickled ``io.BytesIO`` (the placeholder its reduce became)."""
    return isinstance(value, Placeholder) and value.global_name in STREAM_GLOBALS


def content(value: Placeholder) -> bytes:
    """The bytes a pickled BytesIO holds: its BUILD state ``(value, position, __dict__)``, or the argument it was
    built from. ValueError when they cannot be read back."""
    state = value.state
    if isinstance(state, tuple) and state:
        return bytes_of(state[0])
    if value.args:
        return bytes_of(value.args[0])
    return b""


def count_storages(path: str, name: str, data: bytes, read: ReadResult, prefix: str) -> tuple[list[UnviewedBad], int]:
    """The storages of the stream ``data`` (read as ``read``; regions are offsets in ``data``) with NaN/Inf, each
    as an ``UnviewedBad`` named ``<name>.<its first tensor>``, and how many storages were counted."""
    import numpy as np

    from nandoctor.dtypes import DTYPES
    from nandoctor.kernels.census import to_little
    from nandoctor.kernels.cpu import CpuKernel

    kernel = CpuKernel()
    first_name: dict[tuple[int, int], str] = {}
    regions: dict[tuple[int, int], Region] = {}
    for ref in read.refs:
        key = (ref.region.offset, ref.region.nbytes)
        regions.setdefault(key, ref.region)
        first_name.setdefault(key, ref.name.removeprefix(prefix + ".") if prefix else ref.name)
    found: list[UnviewedBad] = []
    counted = 0
    for key, region in regions.items():
        spec = DTYPES.get(region.dtype)
        if spec is None or not spec.can_hold_nonfinite or region.blocks is not None:
            continue
        raw = np.frombuffer(data, np.uint8, count=region.nbytes, offset=region.offset)
        if region.byteorder == "big" and spec.lane_bits > 8:
            raw = to_little(raw, spec)
        counts = kernel.count(raw, spec)
        counted += 1
        if counts.nonfinite:
            found.append(UnviewedBad(path, f"{name}.{first_name[key]}", counts.nan, counts.posinf, counts.neginf,
                                     kind="stream"))
    return found, counted


def rehomed(path: str, name: str, problems: tuple[ScanProblem, ...]) -> list[ScanProblem]:
    """The stream's own problems (a storage failing its CRC-32, a global that runs code) as the file's, said
    to lie in the stream pickled as ``name``."""
    return [ScanProblem(path, f"in the torch.save stream pickled as {name!r}: {p.message.removeprefix(path + ': ')}",
                        p.hint, kind=p.kind) for p in problems]


__all__ = ["MAX_DEPTH", "content", "count_storages", "is_stream", "rehomed"]
