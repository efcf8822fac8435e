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


def _swap_global(src: Path, dst: Path, old: str, new: str) -> None:
    """The zip at ``src`` rewritten to ``dst`` with data.pkl's GLOBAL ``old`` ("module\\nname") replaced by ``new``
    (stored entries with their CRC-32 recomputed, as torch writes them: a consistent file, not a corrupt one)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert b"c" + old.encode() + b"\n" in data
                data = data.replace(b"c" + old.encode() + b"\n", b"c" + new.encode() + b"\n")
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)


@pytest.mark.parametrize(("old", "new", "named"), [
    ("torch._utils\n_rebuild_tensor_v2", "torch._utils\n_rebuild_tensor", "torch._utils._rebuild_tensor"),
    ("torch._utils\n_rebuild_parameter", "torch.nn.parameter\nParameter", "torch.nn.parameter.Parameter"),
    ("torch._utils\n_rebuild_tensor_v3", "torch._utils\n_rebuild_parameter", "torch._utils._rebuild_parameter"),
    ("collections\nOrderedDict", "torch\ndevice", "torch.device"),
])
def test_an_allowed_function_called_with_arguments_torch_refuses_is_unreadable(tmp_path, old, new, named):
    """One allowed global swapped for another: the pickle calls it with arguments torch's own function does not
    take, and torch.load(weights_only=True) raises TypeError. The stand-ins take exactly torch's parameters."""
    torch.manual_seed(0)
    base = tmp_path / "base.bin"
    torch.save({"w": torch.randn(4, 8), "p": torch.nn.Parameter(torch.randn(8), requires_grad=False),
                "f8": torch.randn(8).to(torch.float8_e4m3fn)}, base)
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "pytorch_model.bin"
    _swap_global(base, path, old, new)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    report = nandoctor.scan(folder)
    assert report.exit_code == 3, report.verdict
    assert f"the pickle calls {named} with arguments it does not take" in report.errors[0].message


def test_parameters_with_state_and_hooks_still_read(tmp_path):
    """The stricter stand-ins read what torch writes: a parameter with attributes (_rebuild_parameter_with_state)."""
    p = torch.nn.Parameter(torch.randn(8))
    p.custom = "kept"  # a Python attribute: torch pickles it through _rebuild_parameter_with_state
    path = tmp_path / "p.pt"
    torch.save({"p": p, "q": torch.nn.Parameter(torch.randn(3), requires_grad=False)}, path)
    assert b"_rebuild_parameter_with_state" in path.read_bytes()
    torch.load(path, weights_only=True)
    report = nandoctor.scan(path)
    assert report.exit_code == 0 and len(report.tensors) == 2, report.errors


def test_a_dcp_tensor_item_dcp_load_cannot_unpickle_is_not_loadable(tmp_path):
    """dcp.load reads a tensor item with torch.load(weights_only=True): an item saved with pickle_protocol=4 fails
    it (it was CLEAN with a note to use weights_only=False, which a dcp.load user cannot do)."""
    import dataclasses
    import io
    import pickle

    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    state = {"w": torch.randn(4, 8), "b": torch.randn(8).half()}
    folder = tmp_path / "dcp"
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    (distcp,) = folder.glob("*.distcp")
    raw = distcp.read_bytes()
    out = b""
    for index, info in sorted(metadata.storage_data.items(), key=lambda kv: kv[1].offset):
        item = raw[info.offset:info.offset + info.length]
        if index.fqn == "w":
            buffer = io.BytesIO()
            torch.save(state["w"], buffer, pickle_protocol=4)
            item = buffer.getvalue()
        metadata.storage_data[index] = dataclasses.replace(info, offset=len(out), length=len(item))
        out += item
    distcp.write_bytes(out)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(BaseException) as refused:  # (CheckpointException is a BaseException)
        dcp.load({"w": torch.zeros(4, 8), "b": torch.zeros(8).half()}, checkpoint_id=str(folder), no_dist=True)
    assert "Weights only load failed" in "".join(str(error) for error, _ in refused.value.failures.values())
    report = nandoctor.scan(folder)
    assert report.exit_code == 3 and [p.kind for p in report.errors] == ["unloadable"], report.errors
    assert "torch.distributed.checkpoint.load" in report.errors[0].message


def test_a_serialization_id_that_is_not_utf8_is_unreadable(tmp_path):
    """torch.load decodes .data/serialization_id as UTF-8 (UnicodeDecodeError otherwise): a record changed before
    its CRC-32 was computed is caught although the CRC holds."""
    import zipfile

    base = tmp_path / "base.bin"
    torch.save({"w": torch.randn(4, 8)}, base)
    path = tmp_path / "m.bin"
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(".data/serialization_id"):
                data = data[:12] + b"\xb9" + data[13:]
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    assert _torch_refuses(path)
    report = nandoctor.scan(path)
    assert report.exit_code == 3 and "serialization_id" in report.errors[0].message


class _Reduced:
    """Pickles as ``function(*args)``: a call torch's weights-only unpickler makes when it loads the file."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(("call", "refused"), [
    ((torch.device, ("cpu", -1)), True),
    ((torch.device, ("cuda", "0")), True),
    ((torch.device, ("cuda", 1)), False),
    ((torch.serialization._get_layout, ("torch.bogus",)), True),
    ((torch.serialization._get_layout, ("torch.strided",)), False),
    ((torch.Size, ([True, 2],)), False),
])
def test_allowed_calls_are_refused_exactly_where_torch_refuses_them(tmp_path, call, refused):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.randn(4), "extra": _Reduced(*call)}, path)
    try:
        torch.load(path, weights_only=True)
        torch_refused = False
    except Exception:
        torch_refused = True
    assert torch_refused == refused
    report = nandoctor.scan(path)
    assert report.exit_code == (3 if refused else 0), (report.verdict, report.errors)
