"""PyTorch's legacy file format (torch < 1.6, or ``_use_new_zipfile_serialization=False``).

Five pickles in a row: the magic number ``0x1950A86A20F9469CFC6C``, the
protocol version ``1001``, sys info (``little_endian`` gives the byte order),
the object itself (persistent ids ``('storage', type, key, location, numel,
view_metadata)``), and the list of storage keys. Then, for each key in that
list's order, the storage: an int64 element count in the saver's byte order
followed by its raw bytes. Every pickle goes through the restricted unpickler
and is bounded in size; every count is checked against the declaration; the
storages must end exactly at the end of the file. The older tar format is
refused by the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers.formats import TORCH_LEGACY_MAGIC_NUMBER, looks_legacy_torch
from nandoctor.readers.torch.refs import StorageBlock
from nandoctor.readers.torch.safe_pickle import BoundedReader, check_storage_id, restricted_load
from nandoctor.readers.torch.stubs import (
    PickleFormatError,
    Placeholder,
    StorageRef,
    TensorStub,
    UnsafeGlobalError,
    element_bytes,
)

PROTOCOL_VERSION = 1001


class NotLegacyError(Exception):
    """The first pickle is not torch's magic number (or no pickle at all): not a legacy torch file."""

    def __init__(self, is_pickle: bool) -> None:
        super().__init__("not a legacy torch file")
        self.is_pickle = is_pickle


LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, the storage keys: torch reads each


@dataclass
class LegacyFile:
    root: Any
    declared: list[StorageRef]
    blocks: dict[str, StorageBlock]
    byteorder: str
    placeholders: list[str] = field(default_factory=list)
    built: list[TensorStub] = field(default_factory=list)  # every tensor the object pickle built
    float_offsets: dict[bytes, int] = field(default_factory=dict)  # non-finite BINFLOATs → file offset
    refused: list[str] = field(default_factory=list)  # globals torch.load(weights_only=True) refuses


def read_legacy(path: str, fh: BinaryIO, size: int, max_pickle_bytes: int) -> LegacyFile:
    """Parse a legacy file from its start. Pickle errors propagate for the caller to word."""
    fh.seek(0)
    reader = BoundedReader(fh, max_pickle_bytes)  # one budget for all five pickles
    placeholders: list[str] = []
    refused: list[str] = []

    built: list[TensorStub] = []
    float_offsets: dict[bytes, int] = {}

    def load(persistent: Any = None) -> Any:
        result = restricted_load(reader, persistent)
        placeholders.extend(p for p in result.placeholders if p not in placeholders)
        refused.extend(g for g in result.refused if g not in refused)
        built.extend(result.built)
        for raw, at in result.float_offsets.items():
            float_offsets.setdefault(raw, at)
        return result.value

    try:
        magic = load()
    except UnsafeGlobalError:
        raise  # a malicious pickle is named as such, whatever else the file is
    except Exception:
        fh.seek(0)
        if looks_legacy_torch(fh.read(32)):
            raise  # torch's magic is there: a damaged legacy file, worded by the caller
        raise NotLegacyError(is_pickle=False) from None
    if magic != TORCH_LEGACY_MAGIC_NUMBER:
        raise NotLegacyError(is_pickle=True)
    version = load()
    if version != PROTOCOL_VERSION:
        raise CorruptCheckpointError(path, f"legacy torch file with protocol version {version!r}, expected 1001")
    sys_info = load()
    little = dict.get(sys_info, "little_endian", True) if isinstance(sys_info, dict) else None
    if type(little) is not bool:
        raise CorruptCheckpointError(path, "legacy torch file: sys info does not say the byte order")
    # torch writes (and reads) a legacy file's storages and their counts little-endian whatever the saving
    # machine was; the sys info flag changes nothing that torch.load does, so nothing here either.
    byteorder = "little"

    declared: list[StorageRef] = []

    def persistent_load(pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind in ("module", b"module") and len(pid) == 4:
            # A whole nn.Module was saved: torch returns the class (and diffs its source). The class is
            # a placeholder here; its source text is never looked at or run.
            if not (isinstance(pid[1], type) and issubclass(pid[1], Placeholder)):
                raise PickleFormatError("module persistent id without a class")
            return pid[1]
        ref = check_storage_id(pid, legacy=True)
        declared.append(ref)
        return ref

    root = load(persistent_load)
    keys = load()
    if not isinstance(keys, list) or not all(isinstance(k, (str, int)) for k in keys):
        raise CorruptCheckpointError(path, "legacy torch file: the storage key list is not a list of keys")
    keys = [str(k) for k in keys]
    if len(set(keys)) != len(keys):
        raise CorruptCheckpointError(path, "legacy torch file lists a storage twice")

    first_decl: dict[str, StorageRef] = {}
    for ref in declared:
        first_decl.setdefault(ref.key, ref)
    unknown = [k for k in keys if k not in first_decl]
    if unknown:
        raise CorruptCheckpointError(path, f"legacy torch file has data for storage {unknown[0]!r} that nothing uses")
    missing = sorted(set(first_decl) - set(keys))
    if missing:
        raise CorruptCheckpointError(path, f"storage {missing[0]!r} is used but the file holds no bytes for it")

    count_format = "<q"
    pos = fh.tell()
    blocks: dict[str, StorageBlock] = {}
    for key in keys:
        ref = first_decl[key]
        label = f"storage {key}"
        fh.seek(pos)
        raw = fh.read(8)
        if len(raw) != 8:
            raise CorruptCheckpointError(path, f"{label}: the file ends before its size (truncated)")
        (count,) = struct.unpack(count_format, raw)
        elsize = element_bytes(ref.storage_type.dtype)
        if count != ref.numel:
            raise CorruptCheckpointError(
                path, f"{label}: holds {count} elements but the pickle declares {ref.numel}"
            )
        start, nbytes = pos + 8, count * elsize
        if start + nbytes > size:
            raise CorruptCheckpointError(
                path, f"{label}: needs {nbytes} bytes at offset {start} but the file is {size} bytes (truncated)"
            )
        blocks[key] = StorageBlock(key, label, start, nbytes)
        pos = start + nbytes
    if pos != size:
        raise CorruptCheckpointError(path, f"{size - pos} unexpected bytes after the last storage")
    return LegacyFile(root, declared, blocks, byteorder, placeholders, built, float_offsets, refused)
