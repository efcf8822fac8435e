"""Every safetensors validation rule, each with a malformed file built byte by byte."""

from __future__ import annotations

import json
import struct

import pytest

from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers import reader_for
from nandoctor.readers.safetensors import SafetensorsReader, read_header
from tests.corpus import SAFETENSORS_CASES, entry
from tests.corpus import raw as raw_file


CASES = SAFETENSORS_CASES


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_is_refused_with_reason(tmp_path, case):
    build, reason = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    build(path)
    with pytest.raises(CorruptCheckpointError) as info:
        list(reader_for(path).read(path).refs)
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
    refs = {r.name: r for r in list(reader_for(path).read(path).refs)}
    assert refs["scalar"].shape == () and refs["scalar"].numel == 1
    assert refs["empty"].region.nbytes == 0
    assert refs["f6"].region.nbytes == 3
    _, data_start, metadata = read_header(path)
    assert metadata == {"format": "pt"} and refs["scalar"].region.offset == data_start


def test_null_metadata_is_no_metadata_as_for_the_reference(tmp_path):
    """"__metadata__": null: safetensors' metadata is an Option (load_file and from_pretrained read the file);
    nandoctor called it UNREADABLE. Every other non-object stays refused, as the reference refuses it."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file

    for value, accepted in ((None, True), ([], False), ("pt", False), ({"format": 1}, False)):
        header = {"__metadata__": value, "w": entry(dtype="F32", shape=(2,), offsets=(0, 8))}
        path = raw_file(tmp_path / "m.safetensors", None, np.array([1.0, float("nan")], np.float32).tobytes(),
                        header_bytes=json.dumps(header).encode())
        try:
            with safe_open(str(path), "np") as f:
                reference = f.metadata()
            load_file(path)
        except Exception:
            reference = "refused"
        assert (reference != "refused") is accepted, value
        if not accepted:
            with pytest.raises(CorruptCheckpointError):
                list(reader_for(path).read(path).refs)
            continue
        assert reference is None
        refs = list(reader_for(path).read(path).refs)
        assert [r.name for r in refs] == ["w"] and read_header(path)[2] == {}
        from nandoctor import scan

        assert scan(path).nonfinite == 1


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


def test_the_reader_itself_says_a_web_page_is_not_a_safetensors_file(tmp_path):
    """Read directly (no sniffing first), an HTML page's absurd 8-byte "length" is named for what it is,
    with what to do; a real header length over the limit is still refused as one."""
    page = tmp_path / "model.safetensors"
    page.write_text("<!DOCTYPE html><html><body>404</body></html>")
    with pytest.raises(CorruptCheckpointError) as info:
        SafetensorsReader().read(page)
    assert info.value.reason == ("not a safetensors file: it is an HTML page, as a download saves when it got an "
                                 "error or login page instead of the file (it starts with '<!DOCTYPE html><html><bo…')")
    assert info.value.hint.startswith("re-download the file (for a Hugging Face model: huggingface-cli download")
    over = tmp_path / "over.safetensors"
    raw_file(over, {}, length=100_000_001)
    with pytest.raises(CorruptCheckpointError, match="header length 100000001 exceeds the 100000000-byte limit"):
        SafetensorsReader().read(over)


@pytest.mark.parametrize("name,fmt", [("pytorch_model.bin", "PyTorch"), ("model.gguf", "GGUF"), ("epoch=0-step=1.ckpt", "PyTorch")])
def test_a_web_page_under_any_weight_name_is_named_for_what_it_is(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_text("<html><head><title>Access denied</title></head></html>")
    with pytest.raises(CorruptCheckpointError) as info:
        reader_for(path).read(path)
    assert info.value.reason.startswith(f"not a {fmt} file: it is an HTML page")
    assert "(it starts with '<html><head><title>Acces…')" in info.value.reason
