"""A hostile-input corpus, generated (never downloaded): malformed safetensors files and folder faults.

Each case builds its input under a given folder and says what nandoctor must answer: the exit code and
a fragment of the one-line reason. Used by the reader tests and by the CLI-level hardening tests.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fixtures.builders import SPECIALS, RawTensor, write_safetensors

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo-run"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]  # folder → the path to scan
    exit_code: int
    reason: str  # must appear in the error message (or the output for exit 1/0)


def raw(path: Path, header: object = None, data: bytes = b"", *, header_bytes: bytes | None = None,
        length: int | None = None) -> Path:
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def entry(dtype: str = "F32", shape: tuple = (2,), offsets: tuple = (0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _st(builder: Callable[[Path], object]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.safetensors"
        builder(path)
        return path
    return build


DUP = (b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
       b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}')

# name → (builder of the file at a path, reason fragment). Every one must be refused (exit 3).
SAFETENSORS_CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty_file": (lambda p: p.write_bytes(b""), "too short"),
    "too_short": (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
    "header_over_limit": (lambda p: raw(p, {}, length=100_000_001), "exceeds"),
    "header_u64_max": (lambda p: raw(p, {}, length=2**64 - 1), "exceeds"),
    "header_past_eof": (lambda p: raw(p, {}, length=500), "past the end"),
    "header_zero_length": (lambda p: raw(p, None, header_bytes=b""), "not valid JSON"),
    "not_utf8": (lambda p: raw(p, None, header_bytes=b'{"\xff":1}'), "UTF-8"),
    "not_json": (lambda p: raw(p, None, header_bytes=b'{"a": '), "not valid JSON"),
    "bom": (lambda p: raw(p, None, header_bytes="\ufeff{}".encode()), "not valid JSON"),
    "trailing_nul": (lambda p: raw(p, None, header_bytes=b"{}\x00\x00"), "not valid JSON"),
    "json_array": (lambda p: raw(p, None, header_bytes=b"[1,2]"), "not an object"),
    "json_string": (lambda p: raw(p, None, header_bytes=b'"hello"'), "not an object"),
    "metadata_not_strings": (lambda p: raw(p, {"__metadata__": {"a": 1}}), "__metadata__"),
    "metadata_not_object": (lambda p: raw(p, {"__metadata__": ["format"]}), "__metadata__"),
    "entry_not_object": (lambda p: raw(p, {"w": [1, 2]}), "not an object"),
    "missing_dtype": (lambda p: raw(p, {"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "unknown dtype"),
    "unknown_dtype": (lambda p: raw(p, {"w": entry(dtype="F128")}, b"\0" * 8), "unknown dtype"),
    "lowercase_dtype": (lambda p: raw(p, {"w": entry(dtype="f32")}, b"\0" * 8), "unknown dtype"),
    "negative_shape": (lambda p: raw(p, {"w": entry(shape=(-2,))}, b"\0" * 8), "shape"),
    "float_shape": (lambda p: raw(p, {"w": entry(shape=(2.0,))}, b"\0" * 8), "shape"),
    "bool_shape": (lambda p: raw(p, {"w": entry(shape=(True,))}, b"\0" * 8), "shape"),
    "nan_shape": (lambda p: raw(p, None, b"\0" * 8, header_bytes=b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}'), "shape"),
    "negative_offset": (lambda p: raw(p, {"w": entry(offsets=(-8, 0))}), "data_offsets"),
    "reversed_offsets": (lambda p: raw(p, {"w": entry(offsets=(8, 0))}, b"\0" * 8), "data_offsets"),
    "three_offsets": (lambda p: raw(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, b"\0" * 8), "data_offsets"),
    "size_mismatch": (lambda p: raw(p, {"w": entry(shape=(3,))}, b"\0" * 8), "needs 12 bytes"),
    "overflowing_shape": (lambda p: raw(p, {"w": entry(shape=(2**62, 2**62, 2**62))}, b"\0" * 8), "needs"),
    "lying_huge_tensor": (lambda p: raw(p, {"w": entry(shape=(2**40,), offsets=(0, 2**42))}, b"\0" * 8), "truncated"),
    "f4_odd_count": (lambda p: raw(p, {"w": entry(dtype="F4", shape=(3,), offsets=(0, 1))}, b"\0"), "whole number"),
    "hole": (lambda p: raw(p, {"w": entry(offsets=(4, 12))}, b"\0" * 12), "hole"),
    "overlap": (lambda p: raw(p, {"a": entry(), "b": entry(offsets=(4, 12))}, b"\0" * 12), "overlaps"),
    "same_range_twice": (lambda p: raw(p, {"a": entry(), "b": entry()}, b"\0" * 8), "overlaps"),
    "trailing_bytes": (lambda p: raw(p, {"w": entry()}, b"\0" * 9), "unexpected bytes"),
    "truncated_data": (lambda p: raw(p, {"w": entry()}, b"\0" * 7), "truncated"),
    "duplicate_names": (lambda p: raw(p, None, b"\0" * 8, header_bytes=DUP), "duplicate"),
    "git_lfs_pointer": (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n"), "Git LFS pointer"),
    "html_error_page": (lambda p: p.write_text("<!DOCTYPE html><html><body>404</body></html>"), "header length"),
}


def _valid_file(path: Path, name: str = "w", dtype: str = "F32") -> Path:
    write_safetensors(path, {name: RawTensor(dtype, (2,), b"\0" * 8)})
    return path


def _demo(folder: Path, step: int = 200) -> Path:
    dst = folder / f"checkpoint-{step}"
    shutil.copytree(DEMO / f"checkpoint-{step}", dst)
    return dst


def _edit_index(ckpt: Path, edit: Callable[[dict], None]) -> Path:
    path = ckpt / "model.safetensors.index.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return ckpt


def _missing_shard(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    return ckpt


def _escaping_index(folder: Path) -> Path:
    ckpt = _demo(folder)
    return _edit_index(ckpt, lambda d: d["weight_map"].update({"transformer.wte.weight": "../../etc/passwd"}))


def _absolute_index(folder: Path) -> Path:
    ckpt = _demo(folder)
    return _edit_index(ckpt, lambda d: d["weight_map"].update({"transformer.wte.weight": "/etc/passwd"}))


def _fifo_shard(folder: Path) -> Path:
    ckpt = folder / "ck"
    ckpt.mkdir()
    _valid_file(ckpt / "a.safetensors")
    os.mkfifo(ckpt / "b.safetensors")
    return ckpt


def _fifo_file(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.safetensors")
    return folder / "pipe.safetensors"


def _empty_folder(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


def _invalid_index_json(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model.safetensors.index.json").write_text("{not json")
    return ckpt


def _index_without_map(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model.safetensors.index.json").write_text('{"metadata": {}}')
    return ckpt


def _index_names_absent_tensor(folder: Path) -> Path:
    ckpt = _demo(folder)
    return _edit_index(ckpt, lambda d: d["weight_map"].update({"ghost.weight": "model-00001-of-00002.safetensors"}))


def _half_written_checkpoint(folder: Path) -> Path:
    ckpt = _demo(folder)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return ckpt


def _one_bad_shard_one_nan(folder: Path) -> Path:
    """An unreadable part plus NaN elsewhere: still exit 3 (unread bytes could hide anything)."""
    ckpt = folder / "ck"
    ckpt.mkdir()
    import numpy as np

    bits = np.array([SPECIALS["F32"]["nan"], 0], np.uint32)
    write_safetensors(ckpt / "a.safetensors", {"x": RawTensor("F32", (2,), bits.tobytes())})
    raw(ckpt / "b.safetensors", {"w": entry()}, b"\0" * 3)
    return ckpt


def _symlink_loop(folder: Path) -> Path:
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    return folder / "loop.safetensors"


def _unreadable_permissions(folder: Path) -> Path:
    path = _valid_file(folder / "secret.safetensors")
    path.chmod(0)
    return path


FOLDER_CASES: list[Case] = [
    Case("missing_path", lambda f: f / "nope", 3, "no such file"),
    Case("empty_folder", _empty_folder, 3, "no checkpoint files"),
    Case("missing_shard", _missing_shard, 3, "missing"),
    Case("index_escapes_folder", _escaping_index, 3, "outside the checkpoint folder"),
    Case("index_absolute_path", _absolute_index, 3, "outside the checkpoint folder"),
    Case("fifo_shard", _fifo_shard, 3, "regular file"),
    Case("fifo_file", _fifo_file, 3, "regular file"),
    Case("invalid_index_json", _invalid_index_json, 3, "not valid JSON"),
    Case("index_without_weight_map", _index_without_map, 3, "weight_map"),
    Case("index_names_absent_tensor", _index_names_absent_tensor, 3, "ghost.weight"),
    Case("half_written_checkpoint", _half_written_checkpoint, 3, "truncated"),
    Case("unreadable_part_and_nan", _one_bad_shard_one_nan, 3, "truncated"),
    Case("symlink_loop", _symlink_loop, 3, ""),
]
if os.geteuid() != 0:  # root reads everything; the case means nothing there
    FOLDER_CASES.append(Case("no_permission", _unreadable_permissions, 3, "ermission"))


def all_cases() -> list[Case]:
    cases = [Case(f"st_{name}", _st(build), 3, reason) for name, (build, reason) in SAFETENSORS_CASES.items()]
    return cases + FOLDER_CASES
