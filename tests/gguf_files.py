"""GGUF test files: valid ones written by llama.cpp's own ``gguf.GGUFWriter``, hostile ones packed by hand.

Quantized tensors are raw blocks with a random payload and chosen scale
fields, so a test plants NaN/Inf in exactly the blocks it names. Layouts
(block bytes, where the fp16 ``d``/``dmin`` live) are written out here from
ggml-common.h, independently of nandoctor's own table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

# name -> (elements per block, bytes per block, byte offset of the scale fields, fields, field numpy dtype)
LAYOUTS = {
    "Q4_0": (32, 18, 0, 1, "f2"),
    "Q4_1": (32, 20, 0, 2, "f2"),
    "Q5_0": (32, 22, 0, 1, "f2"),
    "Q8_0": (32, 34, 0, 1, "f2"),
    "Q2_K": (256, 84, 80, 2, "f2"),
    "Q3_K": (256, 110, 108, 1, "f2"),
    "Q4_K": (256, 144, 0, 2, "f2"),
    "Q5_K": (256, 176, 0, 2, "f2"),
    "Q6_K": (256, 210, 208, 1, "f2"),
    "Q8_K": (256, 292, 0, 1, "f4"),
    "IQ4_XS": (256, 136, 0, 1, "f2"),
    "MXFP4": (32, 17, 0, 1, "u1"),
    "IQ1_M": (256, 56, 48, 1, "packed"),  # its fp16 scale is four nibbles of the sub-scales: built by the test
}


def blocks(kind: str, n_blocks: int, *, seed: int = 0, bad: dict[tuple[int, int], float] | None = None,
           endian: str = "<") -> np.ndarray:
    """``n_blocks`` raw blocks of ``kind`` (uint8, shape (n_blocks, block bytes)): random payload, finite
    scale fields of about 0.01 (E8M0: 2^-7), and ``bad[(block, field)]`` planted as given."""
    _, size, offset, count, dtype = LAYOUTS[kind]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    if dtype == "u1":
        scales = np.full((n_blocks, count), 120, dtype=np.uint8)
        for (block, field), value in (bad or {}).items():
            scales[block, field] = int(value)
    else:
        scales = (rng.random((n_blocks, count)) * 0.02 + 0.001).astype(dtype)
        for (block, field), value in (bad or {}).items():
            scales[block, field] = value
        scales = scales.astype(endian + dtype)
    width = scales.dtype.itemsize * count
    raw[:, offset : offset + width] = scales.view(np.uint8).reshape(n_blocks, width)
    return raw


def quant_type(kind: str) -> object:
    return getattr(gguf.GGMLQuantizationType, kind)


Tensor = tuple[str, np.ndarray, str | None]  # (name, values or raw blocks, quantization type or None)


def write(path: Path, tensors: Iterable[Tensor], *, arch: str = "llama", block_count: int | None = None,
          expert_count: int | None = None, big_endian: bool = False, shapes: dict[str, Sequence[int]] | None = None) -> Path:
    """A GGUF file written by gguf.GGUFWriter; quantized tensors given as raw blocks with their ne shape in ``shapes``."""
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), arch, endianess=endian)
    if block_count is not None:
        writer.add_block_count(block_count)
    if expert_count is not None:
        writer.add_expert_count(expert_count)
    for name, array, kind in tensors:
        if kind is None:
            writer.add_tensor(name, array)
            continue
        ne = list((shapes or {})[name])
        row_bytes = ne[0] // LAYOUTS[kind][0] * LAYOUTS[kind][1]
        byte_shape = (*reversed(ne[1:]), row_bytes)
        writer.add_tensor(name, array.reshape(byte_shape), raw_dtype=quant_type(kind))
    finish(writer)
    return path


def finish(writer: object) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close it (the writer's own order)."""
    writer.write_header_to_file()  # type: ignore[attr-defined]
    writer.write_kv_data_to_file()  # type: ignore[attr-defined]
    writer.write_tensors_to_file()  # type: ignore[attr-defined]
    writer.close()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Hand-packed headers, for what no writer would produce


def _string(text: bytes | str, e: str = "<") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(e + "Q", len(raw)) + raw


def pack(
    tensors: Sequence[tuple[str | bytes, Sequence[int], int, int, bytes]],
    *,
    kv: Sequence[bytes] = (),
    alignment: int = 32,
    version: int = 3,
    e: str = "<",
    n_tensors: int | None = None,
    n_kv: int | None = None,
    tail: bytes = b"",
) -> bytes:
    """A GGUF file from (name, ne dims, type id, data offset, data bytes) entries and packed key/values;
    counts may lie. Each tensor's data is placed at its declared offset, the data section padded."""
    head = b"GGUF" + struct.pack(e + "IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kv) if n_kv is None else n_kv)
    head += b"".join(kv)
    for name, dims, type_id, offset, _ in tensors:
        head += _string(name, e) + struct.pack(e + "I", len(dims)) + b"".join(struct.pack(e + "Q", d) for d in dims)
        head += struct.pack(e + "IQ", type_id, offset)
    head += b"\0" * (-len(head) % alignment)
    data = bytearray()
    for _, _, _, offset, payload in tensors:
        if len(data) < offset:
            data += b"\0" * (offset - len(data))
        data[offset : offset + len(payload)] = payload
    data += b"\0" * (-len(data) % alignment)
    return head + bytes(data) + tail


def kv_u32(key: str, value: int, e: str = "<") -> bytes:
    return _string(key, e) + struct.pack(e + "II", 4, value)


def kv_str(key: str, value: bytes | str, e: str = "<") -> bytes:
    return _string(key, e) + struct.pack(e + "I", 8) + _string(value, e)
