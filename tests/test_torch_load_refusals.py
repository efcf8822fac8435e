"""Files torch.load refuses, held to torch.load itself: nandoctor never calls them CLEAN (a differential fuzz
against the reference loaders found each class scanning CLEAN, exit 0, while torch.load raised)."""

from __future__ import annotations

from pathlib import Path

import pytest

import nandoctor

torch = pytest.importorskip("torch")


def _torch_refuses(path: Path) -> bool:
    for weights_only in (True, False):
        try:
            torch.load(path, weights_only=weights_only)
        except Exception:
            continue
        return False
    return True


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "complex32", "uint16"])
def test_a_legacy_file_of_a_dtype_with_no_legacy_storage_is_not_loadable(tmp_path, dtype):
    """torch.save(…, _use_new_zipfile_serialization=False) writes these dtypes' storages untyped, and its own
    legacy loader cannot read them back: NOT LOADABLE, naming the tensor; the other dtypes of such a file load."""
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "pytorch_model.bin"
    chosen = getattr(torch, dtype)
    w = torch.ones(8, dtype=torch.int32).to(chosen) if dtype == "uint16" else torch.randn(8).to(chosen)
    torch.save({"w": w, "b": torch.randn(4)}, path, _use_new_zipfile_serialization=False)
    assert _torch_refuses(path)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"], report.errors
    assert "'w'" in report.errors[0].message and dtype in report.errors[0].message

    torch.save({"b": torch.randn(4).to(torch.bfloat16)}, path, _use_new_zipfile_serialization=False)
    assert not _torch_refuses(path)
    assert nandoctor.scan(folder).exit_code == 0


def _zip64_bin(tmp_path: Path) -> tuple[Path, bytes]:
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "pytorch_model.bin"
    torch.manual_seed(0)
    torch.save({"w": torch.randn(4, 8), "b": torch.randn(8).half()}, path)
    return path, path.read_bytes()


@pytest.mark.parametrize("field", ["record size 43", "record size 12", "locator disks 0"])
def test_zip64_end_fields_torch_refuses_are_unreadable(tmp_path, field):
    """One flipped bit in the ZIP64 end record or its locator, which no CRC covers: torch refuses the archive."""
    import struct

    path, raw = _zip64_bin(tmp_path)
    data = bytearray(raw)
    if field.startswith("record size"):
        at = raw.rfind(b"PK\x06\x06") + 4
        data[at:at + 8] = struct.pack("<Q", int(field.split()[-1]))
    else:
        at = raw.rfind(b"PK\x06\x07") + 16
        data[at:at + 4] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))
    assert _torch_refuses(path)
    report = nandoctor.scan(path.parent)
    assert report.exit_code == 3 and report.errors, report.verdict
    assert "ZIP64" in report.errors[0].message
