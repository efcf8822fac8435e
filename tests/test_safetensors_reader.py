"""Every safetensors validation rule, each with a malformed file built byte by byte."""

from __future__ import annotations

import json
import struct

import pytest

from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers import reader_for
from nandoctor.readers.safetensors import SafetensorsReader, read_header


def raw_file(path, header, data=b"", *, header_bytes=None, length=None):
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CASES = {
    "too_short": (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
    "header_over_limit": (lambda p: raw_file(p, {}, length=100_000_001), "exceeds"),
    "header_past_eof": (lambda p: raw_file(p, {}, length=500), "past the end"),
    "not_utf8": (lambda p: raw_file(p, None, header_bytes=b'{"\xff":1}'), "UTF-8"),
    "not_json": (lambda p: raw_file(p, None, header_bytes=b'{"a": '), "not valid JSON"),
    "bom": (lambda p: raw_file(p, None, header_bytes='\ufeff{}'.encode()), "not valid JSON"),
    "trailing_nul": (lambda p: raw_file(p, None, header_bytes=b"{}\x00\x00"), "not valid JSON"),
    "json_array": (lambda p: raw_file(p, None, header_bytes=b"[1,2]"), "not an object"),
    "metadata_not_strings": (lambda p: raw_file(p, {"__metadata__": {"a": 1}}), "__metadata__"),
    "entry_not_object": (lambda p: raw_file(p, {"w": [1, 2]}), "not an object"),
    "unknown_dtype": (lambda p: raw_file(p, {"w": entry(dtype="F128")}, b"\0" * 8), "unknown dtype"),
    "lowercase_dtype": (lambda p: raw_file(p, {"w": entry(dtype="f32")}, b"\0" * 8), "unknown dtype"),
    "negative_shape": (lambda p: raw_file(p, {"w": entry(shape=(-2,))}, b"\0" * 8), "shape"),
    "float_shape": (lambda p: raw_file(p, {"w": entry(shape=(2.0,))}, b"\0" * 8), "shape"),
    "bool_shape": (lambda p: raw_file(p, {"w": entry(shape=(True,))}, b"\0" * 8), "shape"),
    "negative_offset": (lambda p: raw_file(p, {"w": entry(offsets=(-8, 0))}, b""), "data_offsets"),
    "reversed_offsets": (lambda p: raw_file(p, {"w": entry(offsets=(8, 0))}, b"\0" * 8), "data_offsets"),
    "three_offsets": (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, b"\0" * 8), "data_offsets"),
    "size_mismatch": (lambda p: raw_file(p, {"w": entry(shape=(3,))}, b"\0" * 8), "needs 12 bytes"),
    "huge_shape": (lambda p: raw_file(p, {"w": entry(shape=(2**40, 2**40))}, b"\0" * 8), "needs"),
    "f4_odd_count": (lambda p: raw_file(p, {"w": entry(dtype="F4", shape=(3,), offsets=(0, 1))}, b"\0"), "whole number"),
    "hole": (lambda p: raw_file(p, {"w": entry(offsets=(4, 12))}, b"\0" * 12), "hole"),
    "overlap": (lambda p: raw_file(p, {"a": entry(), "b": entry(offsets=(4, 12))}, b"\0" * 12), "overlaps"),
    "trailing_bytes": (lambda p: raw_file(p, {"w": entry()}, b"\0" * 9), "unexpected bytes"),
    "truncated_data": (lambda p: raw_file(p, {"w": entry()}, b"\0" * 7), "truncated"),
    "duplicate_names": (
        lambda p: raw_file(p, None, b"\0" * 8, header_bytes=b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                                             b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'),
        "duplicate",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_is_refused_with_reason(tmp_path, case):
    build, reason = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    build(path)
    with pytest.raises(CorruptCheckpointError) as info:
        SafetensorsReader().read_refs(path)
    assert reason in info.value.reason
    assert str(path) in info.value.message


@pytest.mark.parametrize("case", ["hole", "overlap", "trailing_bytes", "truncated_data", "unknown_dtype", "size_mismatch"])
def test_reference_parser_also_refuses(tmp_path, case):
    """Where the reference library is strict, we agree with it (duplicates are our stricter extra)."""
    from safetensors import safe_open

    path = tmp_path / f"{case}.safetensors"
    CASES[case][0](path)
    with pytest.raises(Exception):
        with safe_open(path, framework="np") as f:
            for k in f.keys():
                f.get_tensor(k)


def test_valid_edge_cases_are_accepted(tmp_path):
    header = {
        "__metadata__": {"format": "pt"},
        "scalar": entry(shape=(), offsets=(0, 4)),
        "empty": entry(shape=(0, 5), offsets=(4, 4)),
        "f6": entry(dtype="F6_E2M3", shape=(4,), offsets=(4, 7)),
    }
    text = json.dumps(header).encode()
    text = b"  " + text + b" " * (-(len(text) + 2) % 8)  # leading whitespace and space padding are legal
    path = raw_file(tmp_path / "ok.safetensors", None, b"\0" * 7, header_bytes=text)
    refs = {r.name: r for r in reader_for(path).read_refs(path)}
    assert refs["scalar"].shape == () and refs["scalar"].numel == 1
    assert refs["empty"].region.nbytes == 0
    assert refs["f6"].region.nbytes == 3
    _, data_start, metadata = read_header(path)
    assert metadata == {"format": "pt"} and refs["scalar"].region.offset == data_start


def test_git_lfs_pointer_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(CorruptCheckpointError) as info:
        reader_for(path)
    assert "Git LFS pointer" in info.value.reason and "git lfs pull" in info.value.hint


def test_unknown_format_is_refused(tmp_path):
    from nandoctor.errors import UnsupportedFormatError

    path = tmp_path / "weights.xyz"
    path.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(UnsupportedFormatError):
        reader_for(path)
