"""Helpers for the torch reader tests: oracle counts from torch, zip rewriting, hand-made pickles.

torch is imported lazily by the helpers that need it; the opcode builders
write protocol-2 pickles byte by byte so tests control every field (and can
write what torch.save never would).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARK, TUPLE, REDUCE, BINPERSID, STOP, NEWFALSE = b"(", b"t", b"R", b"Q", b".", b"\x89"


# ---------------------------------------------------------------------------
# Oracle: what torch itself says.
# ---------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """name → tensor with nandoctor's naming: dict keys and list indices joined by dots."""
    import torch

    out: dict[str, Any] = {}

    def visit(value: Any, path: list[str]) -> None:
        if isinstance(value, torch.Tensor):
            out[".".join(path) or "tensor"] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, [*path, str(k)])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, [*path, str(i)])

    visit(obj, [prefix] if prefix else [])
    return out


def torch_counts(t: Any) -> tuple[int, int, int]:
    """(NaN, +Inf, -Inf) as torch counts them. A complex element counts once: NaN when either part is,
    otherwise by its first non-finite part, real before imaginary (docs/json.md)."""
    import torch

    if t.is_complex():
        parts = torch.view_as_real(t.detach()).float()
        real, imag = parts[..., 0], parts[..., 1]
        nan = torch.isnan(real) | torch.isnan(imag)
        sign = torch.where(torch.isinf(real), real, torch.where(torch.isinf(imag), imag, torch.zeros_like(real)))
        return int(nan.sum()), int((~nan & (sign > 0)).sum()), int((~nan & (sign < 0)).sum())
    if not (t.is_floating_point()):
        return 0, 0, 0
    f = t.detach().float() if t.dtype != torch.float64 else t.detach()
    return int(torch.isnan(f).sum()), int(torch.isposinf(f).sum()), int(torch.isneginf(f).sum())


def report_counts(report: Any) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.nan, t.posinf, t.neginf) for t in report.tensors}


# ---------------------------------------------------------------------------
# Zip rewriting.
# ---------------------------------------------------------------------------


def entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(
    path: Path,
    items: Iterable[tuple[str, bytes]],
    compress: Callable[[str], bool] = lambda name: False,
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose by some tests
        with zipfile.ZipFile(path, "w") as out:
            for name, data in items:
                method = zipfile.ZIP_DEFLATED if compress(name) else zipfile.ZIP_STORED
                out.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def rewrite(src: Path, dst: Path, change: Callable[[str, bytes], bytes | None], **kw: Any) -> Path:
    """Copy a torch zip entry by entry; ``change`` returns new bytes, or None to drop the entry."""
    kept = []
    for name, data in entries(src):
        new = change(name, data)
        if new is not None:
            kept.append((name, new))
    write_zip(dst, kept, **kw)
    return dst


def entry_offset(path: Path, suffix: str) -> int:
    """Absolute offset of the first byte of the entry whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        nlen, xlen = struct.unpack("<HH", fh.read(4))
    return info.header_offset + 30 + nlen + xlen


def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ mask]))


# ---------------------------------------------------------------------------
# Hand-made protocol-2 pickles.
# ---------------------------------------------------------------------------


def p_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(i: int) -> bytes:
    if -(2**31) <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_tuple(items: Iterable[bytes]) -> bytes:
    return MARK + b"".join(items) + TUPLE


def p_dict(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"}" + MARK + b"".join(k + v for k, v in pairs) + b"u"


def p_call(func: bytes, args: Iterable[bytes]) -> bytes:
    return func + p_tuple(args) + REDUCE


def p_storage(key: str, numel: int, storage_type: str = "FloatStorage", legacy_view: bytes | None = None,
              legacy: bool = False) -> bytes:
    fields = [p_str("storage"), p_global("torch", storage_type), p_str(key), p_str("cpu"), p_int(numel)]
    if legacy:
        fields.append(legacy_view if legacy_view is not None else b"N")
    return p_tuple(fields) + BINPERSID


def p_tensor(storage: bytes, offset: int, size: Iterable[int], stride: Iterable[int]) -> bytes:
    return p_call(
        p_global("torch._utils", "_rebuild_tensor_v2"),
        [storage, p_int(offset), p_tuple(p_int(s) for s in size), p_tuple(p_int(s) for s in stride),
         NEWFALSE, p_call(p_global("collections", "OrderedDict"), [])],
    )


def pickle_bytes(body: bytes) -> bytes:
    return b"\x80\x02" + body + STOP


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes], *, byteorder: bytes | None = b"little",
              folder: str = "archive") -> Path:
    """A zip laid out like torch.save's: folder/data.pkl, folder/byteorder, folder/data/<key>, folder/version."""
    items = [(f"{folder}/data.pkl", data_pkl)]
    if byteorder is not None:
        items.append((f"{folder}/byteorder", byteorder))
    items += [(f"{folder}/data/{k}", v) for k, v in storages.items()]
    items.append((f"{folder}/version", b"3\n"))
    write_zip(path, items)
    return path


def legacy_file(path: Path, obj_pickle: bytes, storages: list[tuple[str, bytes, int]], *,
                little_endian: bool = True, magic: bytes | None = None, sys_info: bytes | None = None,
                keys_pickle: bytes | None = None, trailing: bytes = b"") -> Path:
    """A legacy torch file: magic, 1001, sys info, object, keys, then (key, raw bytes, element count) blocks."""
    magic = magic if magic is not None else pickle_bytes(b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little"))
    version = pickle_bytes(b"M" + struct.pack("<H", 1001))
    if sys_info is None:
        sys_info = pickle_bytes(p_dict([(p_str("protocol_version"), p_int(1001)),
                                        (p_str("little_endian"), b"\x88" if little_endian else b"\x89")]))
    if keys_pickle is None:
        keys_pickle = pickle_bytes(b"]" + MARK + b"".join(p_str(k) for k, _, _ in storages) + b"e")
    order = "<q" if little_endian else ">q"
    blocks = b"".join(struct.pack(order, count) + raw for _, raw, count in storages)
    path.write_bytes(magic + version + sys_info + obj_pickle + keys_pickle + blocks + trailing)
    return path


# ---------------------------------------------------------------------------
# Malicious pickles.
# ---------------------------------------------------------------------------


def payloads(marker: Path) -> dict[str, tuple[str, bytes]]:
    """name → (the global nandoctor must name, a pickle that creates ``marker`` when loaded)."""
    m = str(marker)
    shell = f"touch {m}"
    py = f"open({m!r}, 'w').close()"
    return {
        "os.system": ("os.system", f"cos\nsystem\n(S'{shell}'\ntR.".encode()),
        "posix.system": ("posix.system", pickle_bytes(p_global("posix", "system") + p_tuple([p_str(shell)]) + b"R")),
        "eval": ("__builtin__.eval", f"c__builtin__\neval\n(S\"{py}\"\ntR.".encode()),
        "exec-stack-global": (
            "builtins.exec",
            b"\x80\x04" + b"\x8c\x08builtins\x8c\x04exec\x93" + b"\x8c" + bytes([len(py)]) + py.encode() + b"\x85R.",
        ),
        "subprocess": (
            "subprocess.check_call",
            pickle_bytes(p_global("subprocess", "check_call") + p_tuple([b"]" + b"(" + p_str("touch") + p_str(m) + b"e"]) + b"R"),
        ),
        "inst-opcode": ("os.system", f"(S'{shell}'\nios\nsystem\n.".encode()),
        "obj-opcode": ("os.system", f"(cos\nsystem\nS'{shell}'\no.".encode()),
        "getattr-import": (
            "builtins.getattr",
            pickle_bytes(
                p_global("builtins", "getattr")
                + p_tuple([p_global("builtins", "__import__") + p_tuple([p_str("os")]) + b"R", p_str("system")])
                + b"R" + p_tuple([p_str(shell)]) + b"R"
            ),
        ),
        "runpy": ("runpy._run_code", pickle_bytes(p_global("runpy", "_run_code") + p_tuple([p_str(py), b"}"]) + b"R")),
        "nested-pickle": (
            "pickle.loads",
            pickle_bytes(p_global("pickle", "loads") + p_tuple([b"C" + bytes([len(f"cos\nsystem\n(S'{shell}'\ntR.")])
                                                             + f"cos\nsystem\n(S'{shell}'\ntR.".encode()]) + b"R"),
        ),
    }
