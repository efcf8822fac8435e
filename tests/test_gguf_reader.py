"""The GGUF reader: what llama.cpp's own gguf-py reads, nandoctor reads the same; hostile headers are refused."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from nandoctor.errors import CorruptCheckpointError, UnsupportedFormatError
from nandoctor.readers import reader_for
from nandoctor.readers.gguf import read_header
from tests.gguf_files import blocks, gguf, kv_str, kv_u32, pack, write


def _model(path: Path, big_endian: bool = False) -> Path:
    rng = np.random.default_rng(1)
    e = ">" if big_endian else "<"
    return write(
        path,
        [
            ("token_embd.weight", rng.standard_normal((16, 64)).astype(np.float32), None),
            ("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float16), None),
            ("blk.0.ffn_down.weight", blocks("Q8_0", 2 * 64, endian=e), "Q8_0"),
            ("blk.1.ffn_up.weight", blocks("Q4_K", 2 * 3, endian=e), "Q4_K"),
            ("blk.1.ffn_down.weight", blocks("Q6_K", 2 * 3, endian=e), "Q6_K"),
            ("output_norm.weight", np.ones(64, np.float32), None),
        ],
        block_count=2,
        big_endian=big_endian,
        shapes={"blk.0.ffn_down.weight": (64, 64), "blk.1.ffn_up.weight": (512, 3), "blk.1.ffn_down.weight": (512, 3)},
    )


@pytest.mark.parametrize("big_endian", [False, True])
def test_agrees_with_gguf_py(tmp_path: Path, big_endian: bool) -> None:
    path = _model(tmp_path / "m.gguf", big_endian)
    header = read_header(path)
    oracle = gguf.GGUFReader(str(path), "r")
    assert header.byteorder == ("big" if big_endian else "little")
    assert header.version == 3
    assert [r.name for r in header.refs] == [t.name for t in oracle.tensors]
    for ref, t in zip(header.refs, oracle.tensors):
        assert ref.dtype == t.tensor_type.name
        assert list(ref.shape) == [int(d) for d in t.shape]
        assert ref.region.offset == t.data_offset
        assert ref.region.nbytes == t.n_bytes
        assert ref.order == "F"
    q4k = header.refs[3]
    assert q4k.region.dtype == "F16" and q4k.region.blocks is not None
    assert (q4k.region.blocks.block_bytes, q4k.region.blocks.offset, q4k.region.blocks.count) == (144, 0, 2)
    assert q4k.counted == 6 * 2
    assert header.metadata["llama.block_count"] == (4, 2)
    assert reader_for(path).format_name == "gguf"


def test_v2_file_reads(tmp_path: Path) -> None:
    data = np.arange(8, dtype=np.float32).tobytes()
    path = tmp_path / "v2.gguf"
    path.write_bytes(pack([("w", (8,), 0, 0, data)], version=2))
    (ref,) = read_header(path).refs
    assert (ref.name, ref.dtype, ref.shape, ref.region.nbytes) == ("w", "F32", (8,), 32)


def _refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises((CorruptCheckpointError, UnsupportedFormatError), match=match):
        read_header(path)


F32x8 = np.zeros(8, np.float32).tobytes()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (pack([("w", (8,), 0, 0, F32x8)], n_tensors=1 << 40), "claims 1,099,511,627,776 tensors"),
        (pack([("w", (8,), 0, 0, F32x8)], n_kv=1 << 50), "key/values, more than"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[struct.pack("<Q", 1 << 60) + b"x"]), "needs 1,152,921,504,606,846,976 bytes"),
        # A key/value count one too high reads the tensor info as a key/value: what follows no longer fits.
        (pack([("w", (8,), 0, 0, F32x8)], kv=[kv_str("general.name", "x")], n_kv=2), "tensor 0 has an empty name"),
        (pack([("w", (8,), 0, 0, F32x8)], n_tensors=2), "tensor 1 has an empty name"),
        (pack([("w", (8,), 0, 16, F32x8)]), "not a multiple of the alignment 32"),
        (pack([("w", (8,), 0, 32, F32x8)]), "leaves a hole of 32 bytes"),
        (pack([("a", (8,), 0, 0, F32x8), ("b", (8,), 0, 0, F32x8)]), "'b'.*overlaps the tensor before it"),
        (pack([("a", (8,), 0, 0, F32x8), ("a", (8,), 0, 32, F32x8)]), "appears twice"),
        (pack([("w", (8,), 0, 0, F32x8)])[:-8], "ends at byte 96, past the end of the 88-byte file"),
        (pack([("w", (1 << 20,), 0, 0, F32x8)]), "past the end of the"),
        (pack([("w", (8,), 0, 0, F32x8)], tail=b"\0" * 64), "64 unexpected bytes after"),
        (pack([("w", (8,), 77, 0, F32x8)]), "tensor type 77 is not a GGML type"),
        (pack([("w", (48,), 8, 0, b"")]), "not whole Q8_0 blocks of 32"),
        (pack([("w", (8, 1, 1, 1, 1), 0, 0, F32x8)]), "5 dimensions"),
        (pack([("w" * 64, (8,), 0, 0, F32x8)]), "name is 64 bytes"),
        (pack([(b"\xff\xfe", (8,), 0, 0, F32x8)]), "not valid UTF-8"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[kv_u32("general.alignment", 24)]), "power of two"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[kv_u32("k", 1), kv_u32("k", 2)]), "appears twice"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"x"]), "unknown value type 99"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1)]), "array of arrays"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 1 << 40)]), "claims 1,099,511,627,776 strings"),
        (pack([("w", (8,), 0, 0, F32x8)], kv=[struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 6, 1 << 40)]), "items"),
        (pack([("w", (8,), 0, 0, F32x8)], version=1), "version 1"),
        (pack([("w", (8,), 0, 0, F32x8)], version=7), "version 7"),
        (b"GGUF" + b"\0" * 10, "too short"),
        (b"tjgg" + b"\0" * 60, "before GGUF"),
    ],
)
def test_hostile_headers_refused(tmp_path: Path, content: bytes, match: str) -> None:
    _refused(tmp_path, content, match)


def test_refusal_is_one_line_exit_3(tmp_path: Path) -> None:
    from nandoctor.engine import scan

    path = tmp_path / "bad.gguf"
    path.write_bytes(pack([("w", (8,), 0, 16, F32x8)]))
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and len(report.errors) == 1
    assert "\n" not in report.errors[0].message and "'w'" in report.errors[0].message


def test_big_endian_header_with_hand_packed_tensor(tmp_path: Path) -> None:
    data = np.arange(8, dtype=">f4").tobytes()
    path = tmp_path / "be.gguf"
    path.write_bytes(pack([("w", (8,), 0, 0, data)], e=">"))
    header = read_header(path)
    assert header.byteorder == "big" and header.refs[0].region.byteorder == "big"


def test_custom_alignment(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    path.write_bytes(pack([("a", (8,), 0, 0, F32x8), ("b", (8,), 0, 64, F32x8)], kv=[kv_u32("general.alignment", 64)], alignment=64))
    refs = read_header(path).refs
    assert [r.region.offset - refs[0].region.offset for r in refs] == [0, 64]
