"""A hostile-input corpus, generated (never downloaded): malformed safetensors files, malformed or
malicious torch files, and folder faults.

Each case builds its input under a given folder and says what nandoctor must answer: the exit code and
a fragment of the one-line reason. Malicious torch cases carry payloads that create ``folder / MARKER``
when the file is loaded the unsafe way (``payload=True``: a control test shows that torch.load with
weights_only=False really runs them); the marker must never appear when nandoctor reads the file.
Used by the reader tests and by the CLI-level hardening tests.
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
    payload: bool = False  # the file runs code creating folder / MARKER when loaded unsafely


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
    "nan_shape": (lambda p: raw(p, None, b"\0" * 8, header_bytes=b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}'), "NaN is not JSON"),
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
    "html_error_page": (lambda p: p.write_text("<!DOCTYPE html><html><body>404</body></html>"),
                        "not a safetensors file: it is an HTML page"),
    # Not safetensors at all: the 8-byte "header length" would be absurd (a text's first 8 bytes are over 2e18)
    "plain_text": (lambda p: p.write_text("these are not the weights you are looking for\n"),
                   "not a safetensors file: it is text (it starts with 'these are not the weight…')"),
    "json_text": (lambda p: p.write_text('{"architectures": ["LlamaForCausalLM"]}'), "not a safetensors file: it is JSON text"),
    "plain_pickle": (lambda p: p.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),
                     "not a safetensors file: it is a pickle that is not a PyTorch checkpoint"),
    "gzip": (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + bytes(40)), "not a safetensors file: it is gzip-compressed data"),
    "random_bytes": (lambda p: p.write_bytes(bytes(range(255, 155, -1))),
                     "not a safetensors file (it starts with bytes ff fe fd fc fb fa f9 f8)"),
    # From an adversarial review: a nesting bomb (was a RecursionError), a lone surrogate escape in a name
    # (the reference parser refuses it; the text report crashed on printing it).
    "nesting_bomb": (lambda p: raw(p, None, header_bytes=b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply"),
    "lone_surrogate_name": (lambda p: raw(p, None, b"\0" * 8, header_bytes=b'{"\\ud800x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'), "surrogate"),
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


def _fifo_index(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model.safetensors.index.json").unlink()
    os.mkfifo(ckpt / "model.safetensors.index.json")  # opening it would wait for a writer forever
    return ckpt


def _deep_index(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map":' + "[" * 100_000 + "]" * 100_000 + "}")
    return ckpt


def _index_symlink_loop(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "loop1.safetensors").symlink_to(ckpt / "loop2.safetensors")
    (ckpt / "loop2.safetensors").symlink_to(ckpt / "loop1.safetensors")
    return _edit_index(ckpt, lambda d: d["weight_map"].update({"transformer.wte.weight": "loop1.safetensors"}))


def _shards_without_index(folder: Path) -> Path:
    ckpt = _demo(folder)
    (ckpt / "model.safetensors.index.json").unlink()
    (ckpt / "model-00002-of-00002.safetensors").unlink()  # shard 1 of 2 alone: half the model
    return ckpt


FOLDER_CASES: list[Case] = [
    Case("fifo_index", _fifo_index, 3, "not a regular file"),
    Case("nesting_bomb_index", _deep_index, 3, "nested too deeply"),
    Case("index_symlink_loop", _index_symlink_loop, 3, "loop1.safetensors"),
    Case("shards_without_index_missing_one", _shards_without_index, 3, "model-00002-of-00002.safetensors"),
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


# ---------------------------------------------------------------------------
# Torch files: malicious pickles (REDUCE / GLOBAL / STACK_GLOBAL / INST / OBJ payloads) in every place a
# loader would unpickle them, and malformed archives (byte surgery on torch.save output or hand-made zips).
# ---------------------------------------------------------------------------

MARKER = "PWNED"  # payloads create folder / MARKER; its presence proves code from a file ran


def _th():
    import tests.torch_helpers as th  # lazily: the safetensors cases need neither torch nor these helpers

    return th


def _payload(folder: Path, kind: str) -> bytes:
    return _th().payloads(folder / MARKER)[kind][1]


def _shell_payload(folder: Path) -> bytes:
    return _payload(folder, "os.system")


def _zip_with_pickle(kind: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return _th().torch_zip(folder / "pytorch_model.bin", _payload(folder, kind), {})
    return build


def _good_state(path: Path) -> Path:
    import torch

    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}, path)
    return path


def _tensor_pickle(numel: int = 2, offset: int = 0, size: tuple = (2,), stride: tuple = (1,),
                   extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    th = _th()
    pairs = [(th.p_str("w"), th.p_tensor(th.p_storage("0", numel), offset, size, stride))]
    return th.pickle_bytes(th.p_dict(pairs + (extra or [])))


def _one_tensor(numel: int, offset: int, size: tuple, stride: tuple, storage_bytes: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        blob = _tensor_pickle(numel, offset, size, stride)
        return _th().torch_zip(folder / "model.pt", blob, {"0": b"\0" * storage_bytes})
    return build


def _weights_then_payload(folder: Path) -> Path:
    """A real-looking state dict whose last value is an os.system call."""
    th = _th()
    call = th.p_global("os", "system") + th.p_tuple([th.p_str(f"touch {folder / MARKER}")]) + b"R"
    blob = _tensor_pickle(extra=[(th.p_str("note"), call)])
    return th.torch_zip(folder / "pytorch_model.bin", blob, {"0": b"\0" * 8})


def _load_from_bytes(folder: Path) -> Path:
    """torch.storage._load_from_bytes(<evil pickle>): the classic way past a torch-aware allowlist."""
    th = _th()
    inner = _shell_payload(folder)
    blob = th.pickle_bytes(th.p_global("torch.storage", "_load_from_bytes")
                           + th.p_tuple([b"B" + struct.pack("<I", len(inner)) + inner]) + b"R")
    return th.torch_zip(folder / "pytorch_model.bin", blob, {})


def _raw_pickle(kind: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.pt"
        path.write_bytes(_payload(folder, kind))
        return path
    return build


def _legacy_payload(position: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        import numpy as np

        th = _th()
        blob = _shell_payload(folder)
        obj = th.pickle_bytes(th.p_dict([(th.p_str("w"), th.p_tensor(th.p_storage("0", 2, legacy=True), 0, (2,), (1,)))]))
        kwargs = {"sys_info": blob} if position == "sys_info" else {"keys_pickle": blob} if position == "keys" else {}
        if position == "object":
            obj = blob
        return th.legacy_file(folder / "model.pt", obj, [("0", np.zeros(2, np.float32).tobytes(), 2)], **kwargs)
    return build


def _torchscript(folder: Path) -> Path:
    import warnings

    import torch

    path = folder / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; the files still exist in the wild
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def _deflate_zeros(total: int, crc: int = 0, chunk: int = 1 << 24) -> tuple[bytes, int]:
    """Raw-deflate blocks (no final block) for ``total`` zero bytes (~1000:1), and the CRC-32 continued
    from ``crc`` over them, without ever holding the zeros."""
    import zlib

    zeros = bytes(chunk)
    fresh = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = fresh.compress(zeros) + fresh.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history: repeatable
    for _ in range(total // chunk):
        crc = zlib.crc32(zeros, crc)
    return piece * (total // chunk), crc


def _deflate_final(data: bytes) -> bytes:
    """The final raw-deflate block(s) for ``data`` (may be empty), to end a stream of flushed blocks."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH)


def _zip_with_raw_entries(path: Path, items: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written by hand: (name, stored bytes, method, crc, uncompressed size) per entry."""
    local, central = b"", b""
    for name, data, method, crc, size in items:
        raw_name = name.encode()
        header = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                             len(raw_name), 0)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(raw_name), 0, 0, 0, 0, 0, len(local)) + raw_name
        local += header + raw_name + data
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(items), len(items), len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def _storage_bomb(folder: Path) -> Path:
    """data/0 is 1 GiB of zeros deflated to ~1 MB; data.pkl declares the 1 GiB storage. torch inflates it."""
    import zlib

    numel = 1 << 28
    blocks, crc = _deflate_zeros(numel * 4)
    blob = _tensor_pickle(numel, 0, (numel,), (1,))
    return _zip_with_raw_entries(folder / "pytorch_model.bin", [
        ("archive/data.pkl", blob, 0, zlib.crc32(blob), len(blob)),
        ("archive/byteorder", b"little", 0, zlib.crc32(b"little"), 6),
        ("archive/data/0", blocks + _deflate_final(b""), 8, crc, numel * 4),
    ])


def _pickle_bomb(folder: Path) -> Path:
    """data.pkl is a valid 512 MiB pickle (a dict holding one bytes object) deflated to ~0.5 MB."""
    import zlib

    size = 1 << 29
    head = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01B" + struct.pack("<I", size)
    tail = b"s."
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = first.compress(head) + first.flush(zlib.Z_FULL_FLUSH)
    blocks, crc = _deflate_zeros(size, zlib.crc32(head))
    stream += blocks + _deflate_final(tail)
    return _zip_with_raw_entries(folder / "pytorch_model.bin", [
        ("archive/data.pkl", stream, 8, zlib.crc32(tail, crc), len(head) + size + len(tail)),
    ])


def _duplicate_pickle(folder: Path) -> Path:
    """Two archive/data.pkl entries, a harmless one and one with a payload placed where torch's binary search
    over the sorted directory finds it: which copy a loader reads depends on its zip code."""
    th = _th()
    good = _good_state(folder / "good.pt")
    items = th.entries(good)
    good.unlink()
    prefix = items[0][0].split("/", 1)[0]
    path = folder / "pytorch_model.bin"
    th.write_zip(path, [items[0], (f"{prefix}/data.pkl", _shell_payload(folder)), *items[1:]])
    return path


def _duplicate_storage(folder: Path) -> Path:
    import numpy as np

    th = _th()
    good = _good_state(folder / "good.pt")
    items = th.entries(good)
    good.unlink()
    name = next(n for n, _ in items if n.endswith("/data/0"))
    path = folder / "pytorch_model.bin"
    th.write_zip(path, [*items, (name, np.full(6, np.nan, np.float32).tobytes())])
    return path


def _junk_prefix(folder: Path) -> Path:
    """A shell script in front of a zip whose data.pkl carries a payload; Python's zipfile accepts it."""
    th = _th()
    inner = th.torch_zip(folder / "inner.bin", _shell_payload(folder), {})
    path = folder / "pytorch_model.bin"
    path.write_bytes(f"#!/bin/sh\ntouch {folder / MARKER}\n".encode() + inner.read_bytes())
    inner.unlink()
    return path


def _bad_storage_crc(folder: Path) -> Path:
    th = _th()
    path = _good_state(folder / "pytorch_model.bin")
    th.flip_byte(path, th.entry_offset(path, "/data/0") + 5, 0x10)
    return path


def _bad_pickle_crc_payload(folder: Path) -> Path:
    """A payload data.pkl whose stored CRC-32 does not match: refused before a single opcode is read."""
    th = _th()
    path = th.torch_zip(folder / "pytorch_model.bin", _weights_then_payload_bytes(folder), {"0": b"\0" * 8})
    _central_patch(path, "data.pkl", 16, "<I", lambda crc: crc ^ 0xDEADBEEF)
    _local_patch(path, "data.pkl", 14, "<I", lambda crc: crc ^ 0xDEADBEEF)
    return path


def _weights_then_payload_bytes(folder: Path) -> bytes:
    th = _th()
    call = th.p_global("os", "system") + th.p_tuple([th.p_str(f"touch {folder / MARKER}")]) + b"R"
    return _tensor_pickle(extra=[(th.p_str("note"), call)])


def _central_entries(data: bytes) -> list[tuple[str, int]]:
    """(name, offset of its central-directory record) for a zip without a comment or ZIP64."""
    _, _, _, _, n, _, cd_offset, _ = struct.unpack("<4sHHHHIIH", data[-22:])
    out, pos = [], cd_offset
    for _ in range(n):
        nlen, xlen, clen = struct.unpack_from("<HHH", data, pos + 28)
        out.append((data[pos + 46 : pos + 46 + nlen].decode(), pos))
        pos += 46 + nlen + xlen + clen
    return out


def _central_patch(path: Path, suffix: str, field: int, fmt: str, change: Callable[[int], int]) -> None:
    data = bytearray(path.read_bytes())
    pos = next(p for name, p in _central_entries(bytes(data)) if name.endswith(suffix))
    (value,) = struct.unpack_from(fmt, data, pos + field)
    struct.pack_into(fmt, data, pos + field, change(value))
    path.write_bytes(bytes(data))


def _local_patch(path: Path, suffix: str, field: int, fmt: str, change: Callable[[int], int]) -> None:
    data = bytearray(path.read_bytes())
    pos = next(p for name, p in _central_entries(bytes(data)) if name.endswith(suffix))
    (local,) = struct.unpack_from("<I", data, pos + 42)
    (value,) = struct.unpack_from(fmt, data, local + field)
    struct.pack_into(fmt, data, local + field, change(value))
    path.write_bytes(bytes(data))


def _hand_zip(folder: Path) -> Path:
    """A small torch-layout zip written by Python's zipfile (no ZIP64, no descriptors): easy to operate on."""
    import numpy as np

    th = _th()
    blob = _tensor_pickle(4, 0, (4,), (1,))
    return th.torch_zip(folder / "pytorch_model.bin", blob, {"0": np.arange(4, dtype=np.float32).tobytes()})


def _lying_local_offset(folder: Path) -> Path:
    path = _hand_zip(folder)
    _central_patch(path, "data/0", 42, "<I", lambda off: 0x7FFFFFF0)
    return path


def _lying_entry_size(folder: Path) -> Path:
    """The directory says data.pkl is 3 GiB (past the file's end): nothing is allocated for it."""
    path = _hand_zip(folder)
    _central_patch(path, "data.pkl", 20, "<I", lambda n: 3 << 30)
    _central_patch(path, "data.pkl", 24, "<I", lambda n: 3 << 30)
    return path


def _overlapping_entries(folder: Path) -> Path:
    """data/0's directory record is stretched over the next entry's header (byte ranges overlap)."""
    path = _hand_zip(folder)
    _central_patch(path, "data/0", 20, "<I", lambda n: n + 40)
    _central_patch(path, "data/0", 24, "<I", lambda n: n + 40)
    return path


def _entry_count_lie(folder: Path) -> Path:
    """The end record claims 60,000 entries in a directory that holds 4."""
    path = _hand_zip(folder)
    data = bytearray(path.read_bytes())
    struct.pack_into("<HH", data, len(data) - 22 + 8, 60_000, 60_000)
    path.write_bytes(bytes(data))
    return path


def _local_name_mismatch(folder: Path) -> Path:
    path = _hand_zip(folder)
    data = bytearray(path.read_bytes())
    pos = next(p for name, p in _central_entries(bytes(data)) if name.endswith("data.pkl"))
    (local,) = struct.unpack_from("<I", data, pos + 42)
    data[local + 30 : local + 30 + 7] = b"ARCHIVE"  # "archive/data.pkl" → "ARCHIVE/data.pkl" in the local header only
    path.write_bytes(bytes(data))
    return path


def _encrypted_entry(folder: Path) -> Path:
    path = _hand_zip(folder)
    _central_patch(path, "data/0", 8, "<H", lambda f: f | 1)
    return path


def _truncated_pickle(folder: Path) -> Path:
    th = _th()
    good = _good_state(folder / "good.pt")
    path = th.rewrite(good, folder / "pytorch_model.bin", lambda n, d: d[: len(d) // 2] if n.endswith("data.pkl") else d)
    good.unlink()
    return path


def _cut(fraction: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = _good_state(folder / "pytorch_model.bin")
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        return path
    return build


def _trailing(folder: Path) -> Path:
    path = _good_state(folder / "pytorch_model.bin")
    with open(path, "ab") as fh:
        fh.write(b"\0" * 64)
    return path


def _outside_folder(folder: Path) -> Path:
    th = _th()
    good = _good_state(folder / "good.pt")
    path = folder / "pytorch_model.bin"
    th.write_zip(path, [*th.entries(good), ("../../escape/data/9", b"\0" * 4)])
    good.unlink()
    return path


def _missing_storage(folder: Path) -> Path:
    th = _th()
    good = _good_state(folder / "good.pt")
    path = th.rewrite(good, folder / "pytorch_model.bin", lambda n, d: None if n.endswith("/data/1") else d)
    good.unlink()
    return path


def _unknown_byteorder(folder: Path) -> Path:
    th = _th()
    good = _good_state(folder / "good.pt")
    path = th.rewrite(good, folder / "pytorch_model.bin", lambda n, d: b"middle" if n.endswith("/byteorder") else d)
    good.unlink()
    return path


def _amplification_bomb(folder: Path) -> Path:
    """40 levels of [x, x] through the pickle memo: 2**40 paths to one tensor from a 1 KB data.pkl."""
    th = _th()
    body = th.p_tensor(th.p_storage("0", 1), 0, (1,), (1,)) + b"q\x00"
    for _ in range(40):
        body = b"]" + b"(" + body + b"h\x00" + b"e" + b"q\x00"
    return th.torch_zip(folder / "pytorch_model.bin", th.pickle_bytes(body), {"0": b"\0" * 4})


def _deep_nesting(folder: Path) -> Path:
    th = _th()
    return th.torch_zip(folder / "pytorch_model.bin", th.pickle_bytes(b"]" * 300 + b"a" * 299), {})


def _opcode_bomb(opcodes: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return _th().torch_zip(folder / "pytorch_model.bin", b"\x80\x02" + opcodes, {})
    return build


def _plain_pickle(folder: Path) -> Path:
    import pickle

    path = folder / "model.pt"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=2))
    return path


def _legacy_truncated(folder: Path) -> Path:
    import torch

    path = folder / "model.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-3])
    return path


def tar_format_file(folder: Path) -> Path:
    """torch's pre-1.0 tar format (storages, tensors, pickle members): refused, never unpacked."""
    import io
    import tarfile

    path = folder / "model.pt"
    with tarfile.open(path, "w") as tar:
        for name in ("storages", "tensors", "pickle"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\0" * 4))
    return path


def _bin_index_escapes(folder: Path) -> Path:
    import torch

    ckpt = folder / "ck"
    ckpt.mkdir()
    torch.save({"a": torch.ones(2)}, ckpt / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(2)}, ckpt / "pytorch_model-00002-of-00002.bin")
    index = {"metadata": {"total_size": 16},
             "weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "../../../../etc/hostname"}}
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return ckpt


def _bin_index_ghost(folder: Path) -> Path:
    import torch

    ckpt = folder / "ck"
    ckpt.mkdir()
    torch.save({"a": torch.ones(2)}, ckpt / "pytorch_model-00001-of-00001.bin")
    index = {"metadata": {"total_size": 8},
             "weight_map": {"a": "pytorch_model-00001-of-00001.bin", "ghost.bias": "pytorch_model-00001-of-00001.bin"}}
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return ckpt


def _flag_entry(suffix: str, field: int, fmt: str, change: Callable[[int], int]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = _hand_zip(folder)
        _central_patch(path, suffix, field, fmt, change)
        return path
    return build


def _zip64_locator_lies(folder: Path) -> Path:
    """torch.save output whose ZIP64 locator points one byte before the ZIP64 end record."""
    path = _good_state(folder / "pytorch_model.bin")
    data = bytearray(path.read_bytes())
    locator = data.rfind(b"PK\x06\x07")
    (at,) = struct.unpack_from("<Q", data, locator + 8)
    struct.pack_into("<Q", data, locator + 8, at - 1)
    path.write_bytes(bytes(data))
    return path


def _rebuild_call(args: list[bytes]) -> Callable[[Path], Path]:
    """A state dict whose one tensor is _rebuild_tensor_v2(*args) over a 2-element storage of ``kind``."""
    def build(folder: Path) -> Path:
        th = _th()
        call = th.p_call(th.p_global("torch._utils", "_rebuild_tensor_v2"), args)
        return th.torch_zip(folder / "pytorch_model.bin", th.pickle_bytes(th.p_dict([(th.p_str("w"), call)])),
                            {"0": b"\0" * 16})
    return build


def _v2_args(storage_type: str = "FloatStorage", requires_grad: bytes = b"\x89", extra: list[bytes] | None = None):
    th = _th()
    return [th.p_storage("0", 16 // (8 if storage_type == "LongStorage" else 4), storage_type), th.p_int(0),
            th.p_tuple([th.p_int(2)]), th.p_tuple([th.p_int(1)]), requires_grad,
            th.p_call(th.p_global("collections", "OrderedDict"), [])] + (extra or [])


_BIG = 2**62
TORCH_CASES: list[Case] = [
    # Code-execution payloads. The names are those of the global nandoctor names in its refusal.
    Case("pt_reduce_os_system", _zip_with_pickle("os.system"), 3, "os.system", payload=True),
    Case("pt_reduce_posix_system", _zip_with_pickle("posix.system"), 3, "posix.system", payload=True),
    Case("pt_global_eval", _zip_with_pickle("eval"), 3, "__builtin__.eval", payload=True),
    Case("pt_stack_global_exec", _zip_with_pickle("exec-stack-global"), 3, "builtins.exec", payload=True),
    Case("pt_subprocess", _zip_with_pickle("subprocess"), 3, "subprocess.check_call", payload=True),
    Case("pt_inst_opcode", _zip_with_pickle("inst-opcode"), 3, "os.system", payload=True),
    Case("pt_obj_opcode", _zip_with_pickle("obj-opcode"), 3, "os.system", payload=True),
    Case("pt_getattr_import", _zip_with_pickle("getattr-import"), 3, "builtins.getattr", payload=True),
    Case("pt_runpy", _zip_with_pickle("runpy"), 3, "runpy._run_code", payload=True),
    Case("pt_nested_pickle", _zip_with_pickle("nested-pickle"), 3, "pickle.loads", payload=True),
    Case("pt_load_from_bytes", _load_from_bytes, 3, "torch.storage._load_from_bytes", payload=True),
    Case("pt_weights_then_payload", _weights_then_payload, 3, "os.system", payload=True),
    Case("pt_raw_pickle_reduce", _raw_pickle("os.system"), 3, "os.system", payload=True),
    Case("pt_raw_pickle_stack_global", _raw_pickle("exec-stack-global"), 3, "builtins.exec", payload=True),
    Case("pt_legacy_payload_sys_info", _legacy_payload("sys_info"), 3, "os.system", payload=True),
    Case("pt_legacy_payload_object", _legacy_payload("object"), 3, "os.system", payload=True),
    Case("pt_legacy_payload_keys", _legacy_payload("keys"), 3, "os.system", payload=True),
    Case("pt_torchscript", _torchscript, 3, "TorchScript"),
    Case("pt_plain_pickle", _plain_pickle, 3, "not a PyTorch checkpoint"),
    # Archive tricks.
    Case("pt_deflated_storage_bomb", _storage_bomb, 3, "compressed"),
    Case("pt_deflated_pickle_bomb", _pickle_bomb, 3, "compressed"),
    Case("pt_duplicate_data_pkl", _duplicate_pickle, 3, "duplicate", payload=True),
    Case("pt_duplicate_storage", _duplicate_storage, 3, "duplicate"),
    Case("pt_junk_prefix", _junk_prefix, 3, "bytes in front"),
    Case("pt_bad_storage_crc", _bad_storage_crc, 3, "CRC-32"),
    Case("pt_bad_pickle_crc_with_payload", _bad_pickle_crc_payload, 3, "CRC-32", payload=True),  # torch ignores the CRC
    Case("pt_entries_outside_folder", _outside_folder, 3, "outside"),
    Case("pt_lying_local_offset", _lying_local_offset, 3, "outside the archive"),
    Case("pt_lying_entry_size", _lying_entry_size, 3, "run past"),
    Case("pt_overlapping_entries", _overlapping_entries, 3, "overlap"),
    Case("pt_entry_count_lie", _entry_count_lie, 3, "central directory"),
    Case("pt_local_name_mismatch", _local_name_mismatch, 3, "different file"),
    Case("pt_encrypted_entry", _encrypted_entry, 3, "encrypted"),
    Case("pt_truncated_zip", _cut(0.5), 3, "truncated"),
    Case("pt_truncated_at_end_record", _cut(0.99), 3, "truncated"),
    Case("pt_trailing_bytes", _trailing, 3, "bytes appended"),
    # Lying storages and views: nothing is allocated from a declared size.
    Case("pt_storage_larger_than_entry", _one_tensor(1 << 40, 0, (2,), (1,), 8), 3, "too short"),
    Case("pt_storage_smaller_than_entry", _one_tensor(2, 0, (2,), (1,), 12), 3, "too long"),
    Case("pt_missing_storage", _missing_storage, 3, "missing"),
    Case("pt_negative_stride", _one_tensor(6, 5, (6,), (-1,), 24), 3, "negative stride"),
    Case("pt_negative_offset", _one_tensor(6, -1, (2,), (1,), 24), 3, "negative storage offset"),
    Case("pt_view_out_of_bounds", _one_tensor(6, 2, (2, 3), (3, 1), 24), 3, "reaches element"),
    Case("pt_huge_shape", _one_tensor(6, 0, (_BIG, _BIG), (1, 1), 24), 3, "reaches element"),
    Case("pt_unknown_byteorder", _unknown_byteorder, 3, "byteorder"),
    # Found by differential fuzzing against torch.load (tests/test_fuzz_torch.py).
    Case("pt_entry_marked_as_folder", _flag_entry("data/0", 38, "<I", lambda a: a | 0x10), 3, "marked as a folder"),
    Case("pt_stored_entry_two_sizes", _flag_entry("version", 24, "<I", lambda n: n + 1), 3, "two different sizes"),
    Case("pt_patched_data_flag", _flag_entry("data/0", 8, "<H", lambda f: f | 0x20), 3, "patched data"),
    Case("pt_version_crc", _flag_entry("version", 16, "<I", lambda c: c ^ 1), 3, "CRC-32"),
    Case("pt_zip64_locator_lies", _zip64_locator_lies, 3, "ZIP64"),
    Case("pt_int_tensor_requires_grad", _rebuild_call(_v2_args("LongStorage", b"\x88")), 3, "cannot require gradients"),
    Case("pt_metadata_not_a_dict", _rebuild_call(_v2_args(extra=[b"K\x05"])), 3, "metadata must be a dict"),
    Case("pt_rebuild_too_many_args", _rebuild_call(_v2_args(extra=[b"N", b"N", b"N"])), 3, "TypeError"),
    # Pickles built to exhaust time or memory.
    Case("pt_truncated_pickle", _truncated_pickle, 3, "truncated"),
    Case("pt_amplification_bomb", _amplification_bomb, 3, "parts"),
    Case("pt_deep_nesting", _deep_nesting, 3, "levels deep"),
    Case("pt_binbytes8_huge_length", _opcode_bomb(b"\x8e" + struct.pack("<Q", 2**62) + b"x."), 3, "too large"),
    Case("pt_binunicode_huge_length", _opcode_bomb(b"X" + struct.pack("<I", 0xFFFFFFF0) + b"x."), 3, "truncated"),
    Case("pt_long_huge_digits", _opcode_bomb(b"L" + b"9" * 200_000 + b"L\n."), 3, "pickle"),
    Case("pt_memo_get_missing", _opcode_bomb(b"h\x07."), 3, "pickle"),
    Case("pt_legacy_truncated", _legacy_truncated, 3, "truncated"),
    Case("pt_tar_format", tar_format_file, 3, "tar"),
    # Folder faults with torch shards.
    Case("pt_bin_index_escapes_folder", _bin_index_escapes, 3, "outside the checkpoint folder"),
    Case("pt_bin_index_names_absent_tensor", _bin_index_ghost, 3, "ghost.bias"),
]


def all_cases() -> list[Case]:
    cases = [Case(f"st_{name}", _st(build), 3, reason) for name, (build, reason) in SAFETENSORS_CASES.items()]
    return cases + FOLDER_CASES + TORCH_CASES
