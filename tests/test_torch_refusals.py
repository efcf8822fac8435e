"""Every torch file nandoctor must refuse: exit 3, one line naming the file and the reason, nothing run.

Malicious pickles carry payloads that create a marker file; a control run
with plain ``pickle.loads`` proves each payload works, and the marker must
never appear when nandoctor reads the same bytes in any position of a torch
file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nandoctor.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedFormatError
from nandoctor.readers.torch.file import TorchReader
from nandoctor.engine import scan
from tests.torch_helpers import (
    entries,
    entry_offset,
    flip_byte,
    legacy_file,
    p_call,
    p_dict,
    p_global,
    p_int,
    p_storage,
    p_str,
    p_tensor,
    p_tuple,
    payloads,
    pickle_bytes,
    rewrite,
    torch_zip,
    write_zip,
)

torch = pytest.importorskip("torch")

NAN = float("nan")


def test_payloads_really_run_under_plain_pickle(tmp_path: Path) -> None:
    """The control: each payload does create its marker when unpickled the unsafe way."""
    code = textwrap.dedent(f"""
        import json, pathlib, pickle, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_torch_refusals import payloads
        made = {{}}
        for name, (_, blob) in payloads(pathlib.Path({str(tmp_path)!r}) / "m").items():
            marker = pathlib.Path({str(tmp_path)!r}) / "m"
            try:
                pickle.loads(blob)
            except Exception:
                pass
            made[name] = marker.exists()
            marker.unlink(missing_ok=True)
        print(json.dumps(made))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    made = json.loads(result.stdout)
    assert made == {name: True for name in payloads(tmp_path / "m")}


def _legacy_with(position: str, blob: bytes, tmp_path: Path) -> Path:
    obj = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 2, legacy=True), 0, (2,), (1,)))]))
    storage = [("0", np.zeros(2, np.float32).tobytes(), 2)]
    kwargs = {"magic": blob} if position == "magic" else {"sys_info": blob} if position == "sys_info" else {}
    if position == "object":
        obj = blob
    if position == "keys":
        kwargs["keys_pickle"] = blob
    return legacy_file(tmp_path / f"legacy-{position}.pt", obj, storage, **kwargs)


PLACES = ["raw", "zip", "legacy-magic", "legacy-sys_info", "legacy-object", "legacy-keys"]


@pytest.mark.parametrize("place", PLACES)
def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path, place: str) -> None:
    marker = tmp_path / "marker"
    for name, (global_name, blob) in payloads(marker).items():
        path = tmp_path / f"{name}-{place}.bin"
        if place == "raw":
            path.write_bytes(blob)
        elif place == "zip":
            torch_zip(path, blob, {})
        else:
            path = _legacy_with(place.split("-", 1)[1], blob, tmp_path)
        with pytest.raises(UnsafeCheckpointError) as err:
            TorchReader().read(path)
        assert global_name in err.value.message and str(path) in err.value.message, (name, place)
        assert not marker.exists(), (name, place)


def test_torch_load_would_run_the_zip_payload_but_nandoctor_refuses(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _, blob = payloads(marker)["os.system"]
    path = torch_zip(tmp_path / "evil.pt", blob, {})
    # Control: the unsafe loader runs it (in a child process).
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   capture_output=True)
    assert marker.exists()
    marker.unlink()
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and not marker.exists()
    assert len(report.errors) == 1 and "os.system" in report.errors[0].message


def test_unknown_module_is_never_imported(tmp_path: Path) -> None:
    """A global outside every list becomes a placeholder: its module is not even imported."""
    marker = tmp_path / "marker"
    (tmp_path / "evilmod_nd.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef payload(*a): pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        blob = pickle_bytes(p_dict([
            (p_str("x"), p_global("evilmod_nd", "payload") + p_tuple([p_str("arg")]) + b"R"),
            (p_str("w"), p_tensor(p_storage("0", 1), 0, (1,), (1,))),
        ]))
        path = torch_zip(tmp_path / "unknown.pt", blob, {"0": np.array([NAN], np.float32).tobytes()})
        report = scan(path, device="cpu")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists() and "evilmod_nd" not in sys.modules
    assert [(t.name, t.nan) for t in report.tensors] == [("w", 1)]
    assert any("evilmod_nd.payload" in n for n in report.notes)


def test_cli_refusal_is_one_line_and_exit_3(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from nandoctor.cli import cli

    path = tmp_path / "evil.bin"
    path.write_bytes(payloads(tmp_path / "m")["eval"][1])
    result = CliRunner().invoke(cli, ["scan", str(path), "--no-progress"])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if str(path) in line and "__builtin__.eval" in line]
    assert len(lines) == 1
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------
# Structural refusals. Each starts from a good torch.save file and breaks one thing.
# ---------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}, path)
    assert not scan(path, device="cpu").errors
    return path


def refusal(path: Path, cls: type[Exception] = CorruptCheckpointError) -> str:
    """Read ``path``: it must be refused with ``cls``, naming the file; and scan must exit 3."""
    with pytest.raises(cls) as err:
        TorchReader().read(path)
    assert str(path) in str(err.value)
    report = scan(path, device="cpu")
    assert report.exit_code == 3 and report.errors
    return err.value.message


def test_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert "TorchScript" in refusal(path, UnsafeCheckpointError)


def test_compressed_storage_entry(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "deflated.pt", lambda n, d: d, compress=lambda n: "/data/" in n)
    with zipfile.ZipFile(path) as z:
        assert torch.equal(torch.load(path, weights_only=True)["b"], torch.ones(2))  # torch inflates it
        assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    assert "compressed" in refusal(path)


def test_compressed_pickle_entry(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "deflated-pkl.pt", lambda n, d: d, compress=lambda n: n.endswith("data.pkl"))
    assert "compressed" in refusal(path)


def test_duplicate_entry_names(good: Path, tmp_path: Path) -> None:
    items = entries(good)
    storage = next((n, d) for n, d in items if n.endswith("/data/0"))
    path = tmp_path / "dup.pt"
    write_zip(path, [*items, (storage[0], np.full(6, NAN, np.float32).tobytes())])
    assert "duplicate" in refusal(path)


def test_bytes_before_the_zip(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "prefixed.pt"
    path.write_bytes(b"#!/bin/sh\necho hi\n" + good.read_bytes())
    with zipfile.ZipFile(path) as z:  # Python's zip reader accepts the prefix: nandoctor must not
        assert z.testzip() is None
    assert "PK" in refusal(path)


def test_missing_storage_entry(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "missing.pt", lambda n, d: None if n.endswith("/data/1") else d)
    assert "data/1" in refusal(path) and "missing" in refusal(path)


def test_short_storage_entry(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "short.pt", lambda n, d: d[:-4] if n.endswith("/data/0") else d)
    message = refusal(path)
    assert "data/0" in message and "short" in message


def test_long_storage_entry(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "long.pt", lambda n, d: d + b"\0" * 4 if n.endswith("/data/0") else d)
    assert "long" in refusal(path)


def _one_tensor(tmp_path: Path, name: str, numel: int, offset: int, size, stride, storage_bytes: int | None = None) -> Path:
    blob = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", numel), offset, size, stride))]))
    raw = np.zeros(numel if storage_bytes is None else storage_bytes // 4, np.float32).tobytes()
    return torch_zip(tmp_path / name, blob, {"0": raw})


def test_view_out_of_bounds(tmp_path: Path) -> None:
    path = _one_tensor(tmp_path, "oob.pt", 6, 2, (2, 3), (3, 1))  # last element 2 + 5 = 7 ≥ 6
    with pytest.raises(RuntimeError):  # torch refuses it too
        torch.load(path, weights_only=True)
    assert "reaches element 7" in refusal(path)


def test_view_just_in_bounds_is_accepted(tmp_path: Path) -> None:
    path = _one_tensor(tmp_path, "ok.pt", 6, 0, (2, 2), (3, 2))  # last element 0 + 3 + 2 = 5 < 6
    assert torch.load(path, weights_only=True)["w"].shape == (2, 2)
    assert not TorchReader().read(path).problems


def test_negative_stride(tmp_path: Path) -> None:
    assert "negative stride" in refusal(_one_tensor(tmp_path, "neg.pt", 6, 5, (6,), (-1,)))


def test_negative_offset(tmp_path: Path) -> None:
    assert "negative storage offset" in refusal(_one_tensor(tmp_path, "negoff.pt", 6, -1, (2,), (1,)))


def test_truncated_zip(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 40):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        assert "truncated" in refusal(path)


def test_trailing_bytes_after_zip(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "trailing.pt"
    path.write_bytes(good.read_bytes() + b"\0" * 100)
    refusal(path)


def test_truncated_pickle(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "cutpkl.pt", lambda n, d: d[: len(d) // 2] if n.endswith("data.pkl") else d)
    assert "truncated" in refusal(path)


def test_unknown_byteorder(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "middle.pt", lambda n, d: b"middle" if n.endswith("/byteorder") else d)
    assert "byteorder" in refusal(path)


def test_missing_byteorder_means_little(good: Path, tmp_path: Path) -> None:
    path = rewrite(good, tmp_path / "nobo.pt", lambda n, d: None if n.endswith("/byteorder") else d)
    result = TorchReader().read(path)
    assert {r.region.byteorder for r in result.refs} == {"little"} and not result.problems


def test_crc_mismatch_names_storage_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "flipped.pt"
    w = torch.ones(8)
    torch.save({"w": w, "w_view": w[2:], "other": torch.tensor([NAN, 1.0])}, path)
    flip_byte(path, entry_offset(path, "/data/0") + 4, 0x01)  # a mantissa bit: still a finite value
    assert torch.isfinite(torch.load(path, weights_only=True)["w"]).all()  # torch notices nothing
    report = scan(path, device="cpu")
    assert report.exit_code == 3
    [problem] = report.errors
    assert "data/0" in problem.message and "CRC-32" in problem.message
    assert "'w'" in problem.message and "'w_view'" in problem.message and "other" not in problem.message
    assert {t.name: t.nan for t in report.tensors} == {"w": 0, "w_view": 0, "other": 1}  # the rest still scanned


def _crc_problem(report, storage: str) -> str:
    [problem] = [e for e in report.errors if "CRC-32" in e.message]
    assert report.exit_code == 3 and f"storage {storage} fails its CRC-32 check" in problem.message
    return problem.message


@pytest.mark.parametrize("io_mode", ["mmap", "read"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_a_many_chunk_storage_is_caught(tmp_path: Path, monkeypatch, io_mode: str, where: str) -> None:
    """The scan's own pass: the storage's chunks' CRC-32s combined, a flip anywhere among them caught."""
    monkeypatch.setenv("NANDOCTOR_IO", io_mode)
    path = tmp_path / "big.pt"
    torch.save({"w": torch.ones((9 << 20) // 4 + 3), "b": torch.ones(5)}, path)  # 3 chunks, the last a short one
    assert scan(path, device="cpu").exit_code == 0  # the combined CRC of a clean file matches
    at = {"first": 0, "middle": (5 << 20) + 2, "last": (9 << 20) + 11}[where]
    flip_byte(path, entry_offset(path, "/data/0") + at)
    assert "'w'" in _crc_problem(scan(path, device="cpu"), "data/0")


def test_flipped_byte_in_an_unviewed_part_of_a_storage_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "slice.pt"
    base = torch.ones(4096)
    torch.save({"head": base[:10]}, path)  # the storage keeps all 4096 elements; the tensor sees 10
    flip_byte(path, entry_offset(path, "/data/0") + 4 * 3000 + 1)
    report = scan(path, device="cpu")
    assert "'head'" in _crc_problem(report, "data/0")
    assert [t.nan for t in report.tensors] == [0]


def test_flipped_byte_in_an_integer_storage_is_caught(tmp_path: Path) -> None:
    """The scan reads no integer storage for NaN; its CRC-32 is read for its own sake."""
    path = tmp_path / "ids.pt"
    torch.save({"w": torch.ones(4), "ids": torch.arange(5000), "mask": torch.ones(100, dtype=torch.bool)}, path)
    flip_byte(path, entry_offset(path, "/data/1") + 8 * 4000)
    assert "'ids'" in _crc_problem(scan(path, device="cpu"), "data/1")
    flip_byte(path, entry_offset(path, "/data/1") + 8 * 4000)
    flip_byte(path, entry_offset(path, "/data/2") + 99)
    assert "'mask'" in _crc_problem(scan(path, device="cpu"), "data/2")


def test_flipped_byte_in_a_tensor_left_out_by_only_is_caught(tmp_path: Path) -> None:
    """--only leaves a tensor unscanned, not its storage unchecked: a corrupt file is corrupt."""
    from nandoctor.checkpoint.selection import selection

    path = tmp_path / "two.pt"
    torch.save({"keep": torch.ones(3000), "other": torch.ones(3000)}, path)
    flip_byte(path, entry_offset(path, "/data/1") + 7)
    report = scan(path, device="cpu", selection=selection(only=["keep"]))
    assert "'other'" in _crc_problem(report, "data/1")


def test_flipped_byte_in_one_of_many_small_storages_is_caught(tmp_path: Path) -> None:
    """Small storages are read in batches: each one's CRC-32 comes from its own slice of the batch."""
    path = tmp_path / "small.pt"
    state = {f"t{i}": torch.full((i + 1,), float(i)) for i in range(300)} | {"ids": torch.arange(7)}
    torch.save(state, path)
    assert scan(path, device="cpu").exit_code == 0
    flip_byte(path, entry_offset(path, "/data/123") + 5)
    assert "'t123'" in _crc_problem(scan(path, device="cpu"), "data/123")


def test_crc_check_can_be_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flipped.pt"
    torch.save({"w": torch.ones(8)}, path)
    flip_byte(path, entry_offset(path, "/data/0") + 4)
    monkeypatch.setenv("NANDOCTOR_SKIP_CRC", "1")
    report = scan(path, device="cpu")
    assert report.exit_code == 0 and any("CRC-32" in n for n in report.notes)


def test_corrupt_pickle_crc_refuses_the_file(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "pkl.pt"
    path.write_bytes(good.read_bytes())
    flip_byte(path, entry_offset(path, "data.pkl") + 40)
    assert "data.pkl" in refusal(path) and "CRC-32" in refusal(path)


def test_storage_viewed_as_two_dtypes(tmp_path: Path) -> None:
    blob = pickle_bytes(p_dict([
        (p_str("a"), p_tensor(p_storage("0", 4), 0, (4,), (1,))),
        (p_str("b"), p_tensor(p_storage("0", 4, "IntStorage"), 0, (4,), (1,))),
    ]))
    path = torch_zip(tmp_path / "twotypes.pt", blob, {"0": np.zeros(4, np.float32).tobytes()})
    assert "declared twice" in refusal(path)


def test_bad_persistent_id(tmp_path: Path) -> None:
    blob = pickle_bytes(p_dict([(p_str("a"), p_tuple([p_str("module"), p_int(1)]) + b"Q")]))
    assert "only storages" in refusal(torch_zip(tmp_path / "pid.pt", blob, {}))


def test_archive_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "arrays.pt"
    write_zip(path, [("arr/x.npy", b"\x93NUMPY")])
    refusal(path, UnsupportedFormatError)


def test_entries_outside_the_folder(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "outside.pt"
    write_zip(path, [*entries(good), ("other/data/9", b"\0" * 4)])
    assert "outside" in refusal(path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.bin"
    path.write_bytes(b"hello, this is text\n")
    assert refusal(path) == f"{path}: not a PyTorch file: it is text (it starts with 'hello, this is text')"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(1, 40)))  # bytes no reader places: the format's own words
    refusal(junk, UnsupportedFormatError)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty" in refusal(empty)


def test_plain_pickle_is_not_loaded(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    assert "not a PyTorch checkpoint" in refusal(path, UnsupportedFormatError)


def test_legacy_tar_format(tmp_path: Path) -> None:
    from tests.corpus import tar_format_file

    assert "tar" in refusal(tar_format_file(tmp_path), UnsupportedFormatError)


def test_legacy_truncated_and_trailing(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-3])
    assert "truncated" in refusal(tmp_path / "cut.pt")
    (tmp_path / "cut-pickle.pt").write_bytes(data[:60])
    assert "truncated" in refusal(tmp_path / "cut-pickle.pt")
    (tmp_path / "tail.pt").write_bytes(data + b"\0\0")
    assert "unexpected bytes" in refusal(tmp_path / "tail.pt")


def test_legacy_count_mismatch(tmp_path: Path) -> None:
    obj = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 4, legacy=True), 0, (4,), (1,)))]))
    path = legacy_file(tmp_path / "count.pt", obj, [("0", np.zeros(3, np.float32).tobytes(), 3)])
    assert "declares 4" in refusal(path)


def test_legacy_unknown_byte_order_field(tmp_path: Path) -> None:
    obj = pickle_bytes(p_dict([(p_str("w"), p_tensor(p_storage("0", 1, legacy=True), 0, (1,), (1,)))]))
    sys_info = pickle_bytes(p_dict([(p_str("little_endian"), p_str("maybe"))]))
    path = legacy_file(tmp_path / "bo.pt", obj, [("0", b"\0" * 4, 1)], sys_info=sys_info)
    assert "byte order" in refusal(path)


def test_hostile_nesting_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nandoctor.readers.torch import names as torchnames

    monkeypatch.setattr(torchnames, "MAX_NODES", 20_000)  # the real bound (1M) takes seconds to reach
    # 40 levels of [x, x]: 2**40 paths if walked naively.
    body = p_tensor(p_storage("0", 1), 0, (1,), (1,)) + b"q\x00"
    for _ in range(40):
        body = b"]" + b"(" + body + b"h\x00" + b"e" + b"q\x00"
    path = torch_zip(tmp_path / "bomb.pt", pickle_bytes(body), {"0": b"\0" * 4})
    assert "parts" in refusal(path)
    deep = pickle_bytes(b"]" * 300 + b"a" * 299)  # 300 lists, each inside the one before
    assert "levels deep" in refusal(torch_zip(tmp_path / "deep.pt", deep, {}))


# ---------------------------------------------------------------------------
# pathlib paths (a Lightning hparam such as data_dir): inert text, never pathlib's own classes
# ---------------------------------------------------------------------------


def test_a_lightning_like_checkpoint_with_pathlib_hparams_is_read_not_refused(tmp_path: Path) -> None:
    """torch.save of what Lightning saves, its hyper_parameters holding pathlib paths: scanned (the NaN beside
    them found, exit 1), the paths read as their text, and no placeholder note about them."""
    from pathlib import PurePosixPath, PureWindowsPath

    from nandoctor.readers.torch.file import read_object
    from tests.conftest import run_cli

    path = tmp_path / "epoch=0-step=7.ckpt"
    torch.save({
        "state_dict": {"lin.weight": torch.ones(2, 2), "lin.bias": torch.tensor([1.0, NAN])},
        "hyper_parameters": {"data_dir": Path("/data/train"), "out": PurePosixPath("runs/a"),
                             "windows_dir": PureWindowsPath("C:/data/train"), "lr": 0.01},
        "global_step": 7, "epoch": 0, "pytorch-lightning_version": "2.6.6",
    }, path)
    assert b"pathlib" in dict(entries(path))["epoch=0-step=7/data.pkl"]  # what used to be refused
    read = TorchReader().read(path)
    assert sorted(r.name for r in read.refs) == ["state_dict.lin.bias", "state_dict.lin.weight"]
    assert not any("placeholders" in note and "pathlib" in note for note in read.notes)
    # torch's default load refuses pathlib globals: said in a note (a .ckpt's loader picks weights_only), no problem
    assert [n for n in read.notes if "weights_only" in n] == [
        "epoch=0-step=7.ckpt: torch.load's default (weights_only=True) refuses this file (Lightning's "
        "load_from_checkpoint and Trainer.fit(ckpt_path=…) too, unless given weights_only=False): it pickles "
        "pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath, outside torch's allowlist; load it with "
        "weights_only=False only if you trust its source (nandoctor read it with inert stand-ins)"]
    assert read_object(path)["hyper_parameters"] == {
        "data_dir": "/data/train", "out": "runs/a", "windows_dir": "C:\\data\\train", "lr": 0.01}
    result = run_cli("scan", path, "--quiet")
    assert result.exit_code == 1
    assert result.output == (f"FAIL NON-FINITE (POISONED) {path}: 1 of 2 tensors hold NaN/Inf (1 NaN, 0 +Inf, 0 -Inf); "
                             "worst state_dict.lin; torch.load's default (weights_only=True) refuses epoch=0-step=7.ckpt: "
                             "load with weights_only=False only if you trust the source\n")


@pytest.mark.parametrize("module,name,parts,text", [
    ("pathlib", "WindowsPath", ["D:\\", "models", "x"], "D:\\models\\x"),
    ("pathlib._local", "PosixPath", ["/", "srv", "data"], "/srv/data"),  # Python 3.13's module name
    ("pathlib", "Path", [], ""),
    ("pathlib", "PurePath", ["rel", "dir"], "rel/dir"),
])
def test_every_pathlib_path_class_is_its_text(tmp_path: Path, module: str, name: str, parts: list[str], text: str) -> None:
    from nandoctor.readers.torch.file import read_object

    blob = pickle_bytes(p_dict([(p_str("p"), p_call(p_global(module, name), [p_str(s) for s in parts])),
                                (p_str("w"), p_tensor(p_storage("0", 2), 0, (2,), (1,)))]))
    path = torch_zip(tmp_path / "m.pt", blob, {"0": np.zeros(2, np.float32).tobytes()})
    assert read_object(path)["p"] == text
    assert [r.name for r in TorchReader().read(path).refs] == ["w"]


def test_a_payload_beside_or_inside_a_path_is_still_refused_and_never_runs(tmp_path: Path) -> None:
    """A path next to an os.system call, a path whose part is the call, pathlib's methods (write_text,
    unlink) named as globals, a path of something other than text: refused, naming what; nothing runs."""
    marker = tmp_path / "PWNED"
    payload = p_global("os", "system") + p_tuple([p_str(f"touch {marker}")]) + b"R"
    a_path = p_call(p_global("pathlib", "PosixPath"), [p_str("/"), p_str("data")])
    cases = {
        "beside": (p_dict([(p_str("data_dir"), a_path), (p_str("x"), payload)]), "os.system"),
        "inside": (p_dict([(p_str("data_dir"), p_call(p_global("pathlib", "Path"), [payload]))]), "os.system"),
        "method": (p_dict([(p_str("x"), p_call(p_global("pathlib", "Path.write_text"), [a_path, p_str("pwned")]))]),
                   "pathlib.Path.write_text"),
        "unlink": (p_dict([(p_str("x"), p_call(p_global("pathlib", "PosixPath.unlink"), [a_path]))]),
                   "pathlib.PosixPath.unlink"),
    }
    for name, (body, named) in cases.items():
        path = torch_zip(tmp_path / f"{name}.pt", pickle_bytes(body), {})
        message = refusal(path, UnsafeCheckpointError)
        assert named in message, message
        assert not marker.exists()
    not_text = torch_zip(tmp_path / "int.pt", pickle_bytes(p_dict([(p_str("p"), p_call(p_global("pathlib", "Path"),
                                                                                          [p_int(3)]))])), {})
    assert "a pathlib path made of something other than strings" in refusal(not_text)


def test_a_real_lightning_trainer_s_checkpoint_with_a_path_hparam_passes(tmp_path: Path) -> None:
    """save_hyperparameters() with data_dir: Path, as Lightning users write it: every .ckpt the Trainer saves
    holds a pickled PosixPath, and scans clean (it was refused as malicious, exit 3)."""
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint

    from nandoctor.readers.torch.file import read_object
    from tests.conftest import run_cli
    from tests.realruns import _quiet_lightning

    class WithDataDir(lightning.LightningModule):
        def __init__(self, data_dir: Path, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    folder = tmp_path / "ckpts"
    with _quiet_lightning():
        trainer = lightning.Trainer(
            accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path,
            callbacks=[ModelCheckpoint(dirpath=folder, filename="{epoch}-{step}", every_n_train_steps=2, save_top_k=-1)],
        )
        trainer.fit(WithDataDir(tmp_path / "data"), torch.utils.data.DataLoader(data, batch_size=8))
    files = sorted(folder.glob("*.ckpt"))
    assert [f.name for f in files] == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    pickled = next(blob for name, blob in entries(files[-1]) if name.endswith("/data.pkl"))
    assert b"pathlib" in pickled and b"PosixPath" in pickled
    assert read_object(files[-1])["hyper_parameters"]["data_dir"] == str(tmp_path / "data")
    for file in files:
        result = run_cli("scan", file, "--quiet")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"PASS CLEAN {file}: ")
    assert run_cli("scan", folder, "--quiet").exit_code == 0


def test_a_memo_index_bomb_is_refused_before_the_unpickler_allocates(tmp_path):
    """A data.pkl of nine bytes whose LONG_BINPUT index is 2**28 made the unpickler allocate 4 GB (its memo grows to
    the index). The pre-scan's memory estimate refuses it first."""
    import resource
    import struct
    import zipfile

    import nandoctor

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02}r" + struct.pack("<I", 1 << 28) + b".")
        archive.writestr("bomb/version", b"3\n")
        archive.writestr("bomb/byteorder", b"little")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = nandoctor.scan(str(path), device="cpu")
    assert report.exit_code == 3 and "memory bomb" in " ".join(e.message for e in report.errors)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 200 * 1024  # KB: not gigabytes


def test_a_tensor_saved_from_the_meta_device_is_not_loadable_naming_it(tmp_path: Path) -> None:
    """torch.load (weights_only too) gives a meta tensor back, but it holds no values: load_state_dict raises. A
    trial's file read CLEAN, "1 tensor healthy" of its two (the meta one dropped as an inert placeholder)."""
    path = tmp_path / "train.pt"
    torch.save({"model_state_dict": {"weight": torch.empty(4, 4, device="meta"), "bias": torch.zeros(4)},
                "epoch": 3}, path)
    state = torch.load(path, weights_only=True)["model_state_dict"]
    with pytest.raises(Exception, match="meta tensor"):  # the oracle
        torch.nn.Linear(4, 4).load_state_dict(state)
    import nandoctor

    report = nandoctor.scan(path)
    assert report.exit_code == 3
    assert [(e.kind, "'model_state_dict.weight'" in e.message) for e in report.errors] == [("unloadable", True)], \
        [e.message for e in report.errors]


@pytest.mark.parametrize("dtype", ["quint4x2", "quint2x4"])
def test_packed_quantized_tensors_are_read_and_their_nan_scale_counted(tmp_path: Path, dtype: str) -> None:
    """torch.ao's 4- and 2-bit quantized tensors pack two or four values a byte: their elements counted one a byte
    reached past the storage, and a file torch loads read UNREADABLE (an adversarial round); a NaN scale went
    uncounted with it."""
    import warnings

    import nandoctor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, scale in (("ok", 0.1), ("nan", float("nan"))):
            torch.save({"w": torch.quantize_per_tensor(torch.randn(4, 8), scale, 0, getattr(torch, dtype))},
                       tmp_path / f"{name}.pt")
        loaded = torch.load(tmp_path / "nan.pt", weights_only=True)["w"].dequantize()  # the oracle
    assert torch.isnan(loaded).all()
    assert nandoctor.scan(tmp_path / "ok.pt").exit_code == 0
    bad = nandoctor.scan(tmp_path / "nan.pt")
    assert bad.exit_code == 1 and bad.nan == 1 and not bad.errors


def test_a_per_channel_quantized_tensors_scales_are_named_under_it(tmp_path: Path) -> None:
    """A false-alarm sweep: per-channel scales and zero points were scanned as '<tensor 0>', '<tensor 1>', "where no
    name reaches them", in a note on every such file; a NaN scale among them was named so too."""
    import warnings

    import nandoctor

    scales = torch.rand(4) + 0.1
    scales[2] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weight = torch.quantize_per_channel(torch.randn(4, 8), scales, torch.zeros(4, dtype=torch.long), 0, torch.qint8)
        torch.save({"w": weight}, tmp_path / "q.pt")
        assert torch.isnan(torch.load(tmp_path / "q.pt", weights_only=True)["w"].dequantize()[2]).all()  # the oracle
    report = nandoctor.scan(tmp_path / "q.pt")
    assert {t.name for t in report.tensors} == {"w", "w.<scales>", "w.<zero_points>"}
    assert [t.name for t in report.tensors if t.nan] == ["w.<scales>"] and report.exit_code == 1
    assert not any("no name reaches" in n for n in report.notes)
