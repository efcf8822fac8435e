"""A torch.distributed.checkpoint ``.metadata`` file read without torch and without running it.

``FileSystemWriter`` pickles one ``Metadata`` object: every tensor's global
shape, dtype and chunks, and where each chunk (or pickled object) sits in the
``.distcp`` files (``_StorageInfo``: relative path, byte offset, length).
Unpickling it with ``pickle`` would run whatever the file names, so
``find_class`` here answers only an allowlist of DCP's own metadata classes,
torch dtypes/``Size``/layouts and ``pathlib`` paths, each with an inert
stand-in; any other global refuses the file, naming the global. The result is
converted into plain typed values (:class:`DcpMetadata`) and validated.

Before anything is built the opcodes go through the torch reader's pre-scan
(readers/torch/prescan.py, the same code): a hashing bomb (a dict key of 2**60
shared tuples, in 429 bytes) is refused, and so is a pickle whose load would
hold more than :data:`MEMORY` allows for each byte walked (a real one holds at
most 28 bytes a byte, 60 MB of empty lists 36), so a crafted file is refused
near its start. The stand-ins copy nothing large, so that estimate holds.

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from nandoctor.dtypes import TORCH_DTYPE_NAMES
from nandoctor.errors import CorruptCheckpointError, UnsafeCheckpointError
from nandoctor.readers.formats import dcp_metadata_files
from nandoctor.readers.pathstandins import path_standin
from nandoctor.readers.torch.prescan import MemoryBound, prescan
from nandoctor.readers.torch.stubs import PickleFormatError

MAX_METADATA_BYTES = 4 << 30  # a checkpoint of 100k tensors x 1k chunks stays far below this
# What unpickling may hold, estimated by the pre-scan, for each byte of .metadata walked (and a floor). Real saves
# hold at most 28 anywhere in the file (one-letter names, one-element chunks, one dimension: the densest); 60 MB of
# empty lists would hold 2.2 GB (36 a byte), of empty sets 7 GB.
MEMORY = MemoryBound(per_byte=32, floor=8 << 20)
# The stand-ins below copy nothing large, so the pre-scan's estimate holds: a record takes at most a few
# arguments and is built once, a torch.Size has at most _MAX_DIMS sizes, a path few characters.
_MAX_ARGS = 8
_MAX_DIMS = 64
_MAX_PATHS, _MAX_PATH_CHARS = 16, 4096
_NO_FIELDS: dict[str, Any] = {}  # a record not yet built: shared, never written to
_METADATA = "torch.distributed.checkpoint.metadata"
_FILESYSTEM = "torch.distributed.checkpoint.filesystem"


class _Record:
    """An allowlisted DCP class rebuilt as a bag of fields; it has no methods that do anything."""

    __slots__ = ("args", "fields")  # no __dict__: a metadata of a million chunks holds three million of these
    kind = ""

    fields: dict[str, Any]
    args: tuple[Any, ...]

    def __new__(cls, *args: Any) -> _Record:  # NEWOBJ calls only __new__; keywords (NEWOBJ_EX) are refused
        if len(args) > _MAX_ARGS:
            raise pickle.UnpicklingError(f"a {cls.kind} made of {len(args)} arguments; DCP's records take none")
        self = super().__new__(cls)
        self.fields, self.args = _NO_FIELDS, args
        return self

    def __setstate__(self, state: Any) -> None:
        # Dataclasses pickle their __dict__, slotted ones (None, slots), TensorProperties a tuple. The pickle's
        # own dict is kept, never copied (a copy per record of one shared dict would be a memory bomb) nor
        # written to (another record may hold it); so a record is built once.
        if self.fields is not _NO_FIELDS:
            raise pickle.UnpicklingError(f"a {self.kind} built twice, which DCP's pickles never do")
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)) \
                and isinstance(state[1], dict):
            if state[0] and state[1]:
                raise pickle.UnpicklingError(f"a {self.kind} with both a __dict__ and slots, which DCP's are not")
            self.fields = state[0] or state[1]
        elif isinstance(state, dict):
            self.fields = state
        else:
            self.args = state if isinstance(state, tuple) else (state,)


def _record(name: str) -> type[_Record]:
    return type(name, (_Record,), {"kind": name, "__slots__": ()})


_RECORD_NAMES = {
    (_METADATA, "Metadata"), (_METADATA, "TensorStorageMetadata"), (_METADATA, "BytesStorageMetadata"),
    (_METADATA, "ChunkStorageMetadata"), (_METADATA, "TensorProperties"), (_METADATA, "StorageMeta"),
    (_METADATA, "MetadataIndex"), (_FILESYSTEM, "_StorageInfo"),
}
_RECORDS: dict[tuple[str, str], type[_Record]] = {key: _record(key[1]) for key in _RECORD_NAMES}


@dataclass(frozen=True)
class _DType:
    name: str  # safetensors dtype name, e.g. "BF16"


_DTYPES = {name: _DType(dtype) for name, dtype in TORCH_DTYPE_NAMES.items()}


def _size(*args: Any) -> tuple[int, ...]:
    values = args[0] if args else ()
    if not isinstance(values, tuple | list) or len(values) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"torch.Size of something other than at most {_MAX_DIMS} sizes")
    if not all(type(v) is int and v >= 0 for v in values):
        raise pickle.UnpicklingError(f"torch.Size holds something other than sizes: {values[:4]!r}")
    return tuple(values)  # (the tuple itself when it is one: no copy)


# What torch's own metadata unpickling accepts (torch 2.13): serialization._get_layout looks the name up among
# torch's layouts (KeyError otherwise), and _MEM_FORMAT_ENCODING is an enum of three values (ValueError otherwise):
# dcp.load and dcp_to_torch_save fail on anything else, so the checkpoint does not load.
_TORCH_LAYOUTS = frozenset(("torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
                            "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"))
_MEMORY_FORMATS = (0, 1, 2)  # TORCH_CONTIGUOUS_FORMAT, TORCH_CHANNELS_LAST, TORCH_PRESERVE_FORMAT


def _layout(name: Any = None, *_: Any) -> Any:
    if name not in _TORCH_LAYOUTS:
        raise pickle.UnpicklingError(f"tensor layout {str(name)[:40]!r} is none torch has (dcp.load refuses it)")
    return name


def _memory_format(value: Any = None, *_: Any) -> Any:
    if type(value) is not int or value not in _MEMORY_FORMATS:
        raise pickle.UnpicklingError(f"memory format code {str(value)[:20]} is none torch has (dcp.load refuses it)")
    return value


def _ordered_dict(*args: Any) -> dict[Any, Any]:
    """``OrderedDict()``, filled by SETITEMS after (as pickle writes it): a copy of a dict given to it would be
    a memory bomb when repeated."""
    if args and args[0]:
        raise pickle.UnpicklingError("an OrderedDict made from items, which pickle never writes")
    return {}


def _global(module: str, name: str) -> Any:
    """The stand-in for an allowlisted global, or None when the global is not allowed."""
    if (module, name) in _RECORDS:
        return _RECORDS[(module, name)]
    if module == "torch":
        if name == "Size":
            return _size
        if name in _DTYPES:
            return _DTYPES[name]
        if name in ("strided", "sparse_coo", "contiguous_format", "channels_last", "preserve_format"):
            return name
    if (module, name) == (_METADATA, "_MEM_FORMAT_ENCODING"):
        return _memory_format  # an enum value: kept as the int it was pickled as, when torch has it
    if (module, name) == ("torch.serialization", "_get_layout"):
        return _layout  # a layout name: kept as the string it was pickled as, when torch has it
    if module == "collections" and name == "OrderedDict":
        return _ordered_dict
    return None


class _MetadataUnpickler(pickle.Unpickler):
    paths = 0  # pathlib paths made so far (StorageMeta.checkpoint_id: one)

    def find_class(self, module: str, name: str) -> Any:
        found = _global(module, name)
        if found is None:
            path = path_standin(module, name)
            if path is None:
                raise _Refused(f"{module}.{name}")
            found = self._bounded(path)  # where it was saved, only shown
        return found

    def _bounded(self, path: Callable[..., str]) -> Callable[..., str]:
        """The path stand-in, at most _MAX_PATHS times and _MAX_PATH_CHARS long: each joins its parts anew."""
        def bounded(*parts: Any) -> str:
            self.paths += 1
            if self.paths > _MAX_PATHS or sum(len(p) for p in parts if isinstance(p, str)) > _MAX_PATH_CHARS:
                raise pickle.UnpicklingError(f"more than {_MAX_PATHS} paths, or one over {_MAX_PATH_CHARS} characters")
            return path(*parts)

        return bounded

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id, which DCP metadata never holds")


class _Refused(Exception):
    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


# ---------------------------------------------------------------------------
# The metadata as plain values
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DcpChunk:
    offsets: tuple[int, ...]  # where the chunk starts in the global tensor
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class DcpTensor:
    fqn: str
    dtype: str  # safetensors dtype name
    size: tuple[int, ...]  # the global shape
    chunks: tuple[DcpChunk, ...]

    @cached_property
    def sizes_at(self) -> dict[tuple[int, ...], tuple[int, ...]]:
        """Each chunk's sizes by its offsets (the first listed, should two share offsets): a chunk found per
        stored item in constant time, not by a walk over a tensor's thousands of chunks."""
        found: dict[tuple[int, ...], tuple[int, ...]] = {}
        for chunk in self.chunks:
            found.setdefault(chunk.offsets, chunk.sizes)
        return found


@dataclass(frozen=True, slots=True)
class DcpItem:
    """One stored item: a tensor chunk (``chunk_offsets`` set) or a pickled object, at a byte range of a file."""

    fqn: str
    chunk_offsets: tuple[int, ...] | None
    relative_path: str
    offset: int
    length: int
    transformed: bool  # written through a stream extension (compression …)


@dataclass(frozen=True)
class DcpMetadata:
    source: str  # the metadata file(s) it came from
    tensors: dict[str, DcpTensor]
    objects: frozenset[str]  # fqns stored as pickled bytes (BytesStorageMetadata)
    items: tuple[DcpItem, ...]
    version: str | None

    def items_in(self, relative_path: str) -> list[DcpItem]:
        return self._by_file.get(relative_path, [])

    @cached_property
    def _by_file(self) -> dict[str, list[DcpItem]]:
        """The items of each file, in metadata order: one pass, however many files (a rank each) ask."""
        found: dict[str, list[DcpItem]] = {}
        for item in self.items:
            found.setdefault(item.relative_path, []).append(item)
        return found

    @property
    def files(self) -> list[str]:
        return sorted(self._by_file)


def same_file_name(relative: str) -> str:
    """``relative`` as the file it names from the folder (torch opens ``folder / relative_path``): ``.`` parts and
    doubled slashes dropped, which name the same file (``./__0_0.distcp`` is ``__0_0.distcp``: its items were
    matched to no file and never read, and the folder was called clean). ``..`` stays: it depends on what the
    folder holds, and a name that is not a plain file of the folder is refused (layout._dcp_folder)."""
    if relative.startswith("/"):
        return relative
    return "/".join(part for part in relative.split("/") if part not in ("", "."))


def read_metadata(path: Path) -> DcpMetadata:
    """Unpickle and validate one ``.metadata`` (or ``__N.metadata``) file; refuse anything not DCP's."""
    p = str(path)
    size = os.stat(path).st_size
    if size > MAX_METADATA_BYTES:
        raise CorruptCheckpointError(p, f"{size} bytes, over the {MAX_METADATA_BYTES >> 30} GiB limit for DCP metadata")
    with open(path, "rb") as fh:
        data = fh.read(size + 1)
    malformed = None
    try:
        prescan(data, len(data), MEMORY)
    except PickleFormatError as exc:  # a hashing or memory bomb: refused before anything is built
        raise CorruptCheckpointError(
            p, f"the DCP metadata pickle is refused: {exc}",
            "this .metadata was crafted or damaged, not written by torch.distributed.checkpoint; re-copy it from "
            "where the checkpoint was saved, and do not load it with torch until then",
        ) from None
    except ValueError as exc:  # malformed opcodes: the unpickler stops at the same byte and says why
        malformed = exc
    try:
        root = _MetadataUnpickler(io.BytesIO(data)).load()
        if malformed is not None:  # (were it to read on, what the pre-scan could not bound is refused all the same)
            raise pickle.UnpicklingError(f"malformed opcodes: {malformed}")
    except _Refused as exc:
        raise UnsafeCheckpointError(
            p,
            f"the DCP metadata names {exc.global_name}, which is not one of torch.distributed.checkpoint's "
            "metadata classes; refused, nothing was run",
            "do not load this checkpoint with torch.distributed.checkpoint.load unless you trust its source",
        ) from None
    except RecursionError:
        raise CorruptCheckpointError(p, "the DCP metadata is nested too deeply; refused") from None
    except MemoryError:
        raise CorruptCheckpointError(p, "the DCP metadata declares an object too large to build; refused") from None
    except Exception as exc:  # noqa: BLE001  a damaged pickle, whatever the way it fails, is one refusal
        raise CorruptCheckpointError(
            p, f"not a readable DCP metadata pickle ({type(exc).__name__}: {str(exc)[:120]})",
            "re-copy the .metadata file from where the checkpoint was saved",
        ) from None
    try:
        return _convert(p, root)
    except ValueError as exc:  # (read whole, a value of the wrong kind or one that contradicts the rest)
        raise CorruptCheckpointError(
            p, f"the DCP metadata does not hold together ({exc}): nandoctor cannot tell which bytes hold which elements",
            "re-copy the .metadata file from where the checkpoint was saved",
        ) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(p, f"not the shape of a DCP Metadata object ({exc})") from None


def _fields(value: Any, kind: str) -> dict[str, Any]:
    if not isinstance(value, _Record) or value.kind != kind:
        raise TypeError(f"expected {kind}, found {type(value).__name__}")
    return value.fields


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"{what} is not a tuple of sizes")
    return tuple(value)


def _dtype(properties: Any) -> str:
    if isinstance(properties, _Record) and properties.kind == "TensorProperties":
        dtype = properties.fields.get("dtype", properties.args[0] if properties.args else None)
        if isinstance(dtype, _DType):
            return dtype.name
    raise ValueError("a tensor without a dtype torch knows")


def _convert(p: str, root: Any) -> DcpMetadata:
    top = _fields(root, "Metadata")
    tensors: dict[str, DcpTensor] = {}
    objects: set[str] = set()
    for fqn, entry in dict(top["state_dict_metadata"]).items():
        if not isinstance(fqn, str):
            raise TypeError("a state_dict key that is not a string")
        if isinstance(entry, _Record) and entry.kind == "BytesStorageMetadata":
            objects.add(fqn)
            continue
        fields = _fields(entry, "TensorStorageMetadata")
        size = _ints(fields["size"], f"{fqn}: size")
        chunks = []
        for chunk in fields["chunks"]:
            c = _fields(chunk, "ChunkStorageMetadata")
            offsets, sizes = _ints(c["offsets"], f"{fqn}: offsets"), _ints(c["sizes"], f"{fqn}: sizes")
            if len(offsets) != len(size) or len(sizes) != len(size) or any(
                o + s > g for o, s, g in zip(offsets, sizes, size)
            ):
                raise ValueError(f"{fqn}: chunk at {offsets} of {sizes} lies outside the tensor's {size}")
            chunks.append(DcpChunk(offsets, sizes))
        tensors[fqn] = DcpTensor(fqn, _dtype(fields["properties"]), size, tuple(chunks))
    items = []
    for index, info in dict(top.get("storage_data") or {}).items():
        key = _fields(index, "MetadataIndex")
        where = _fields(info, "_StorageInfo")
        fqn = key["fqn"]
        offset = key.get("offset")
        relative, start, length = where["relative_path"], where["offset"], where["length"]
        if not isinstance(fqn, str) or not isinstance(relative, str):
            raise TypeError("a storage item without a name or file")
        if type(start) is not int or type(length) is not int or start < 0 or length < 0:
            raise ValueError(f"{fqn}: byte range {start!r}+{length!r} is not a range")
        if fqn not in tensors and fqn not in objects:
            raise ValueError(f"storage item {fqn!r} is not in state_dict_metadata")
        chunk_offsets = None if offset is None else _ints(offset, f"{fqn}: item offset")
        transformed = bool(where.get("transform_descriptors"))
        items.append(DcpItem(fqn, chunk_offsets, same_file_name(relative), start, length, transformed))
    version = top.get("version")
    return DcpMetadata(p, tensors, frozenset(objects), tuple(items), version if isinstance(version, str) else None)


def merged(parts: list[DcpMetadata]) -> DcpMetadata:
    """Per-rank ``__N.metadata`` files (written without rank coordination) as one checkpoint's metadata.

    Each rank loads what its own file lists: a chunk two ranks both saved (a replicated tensor, DDP's weights) is
    each rank's own copy, not an ambiguity. The first rank's keeps the tensor's name; a later rank's is a tensor of
    its own, ``<name>@rank<r>`` (:data:`REPLICA`), read and judged as any other (a NaN in rank 1's copy is rank 1's
    model). (Every save with use_collectives=False of a replicated weight was refused as ambiguous.)"""
    first: dict[str, DcpTensor] = {}
    chunks: dict[str, dict[DcpChunk, None]] = {}  # each tensor's chunks, once each, in order (a dict: linear)
    owner: dict[tuple[str, tuple[int, ...]], int] = {}  # (fqn, chunk offsets) → the first part that stores it
    stored: dict[DcpItem, None] = {}
    for r, part in enumerate(parts):
        rank = _rank_of(part.source, r)
        for item in part.items:
            offsets = item.chunk_offsets
            if offsets is None or owner.setdefault((item.fqn, offsets), r) == r:
                stored.setdefault(item)
                continue
            tensor = part.tensors[item.fqn]
            copy = f"{item.fqn}{REPLICA}{rank}"
            sizes = tensor.sizes_at.get(offsets, ())
            first.setdefault(copy, DcpTensor(copy, tensor.dtype, tensor.size, ()))
            chunks.setdefault(copy, {})[DcpChunk(offsets, sizes)] = None
            stored.setdefault(dataclasses.replace(item, fqn=copy))
        for fqn, tensor in part.tensors.items():
            first.setdefault(fqn, tensor)
            chunks.setdefault(fqn, {}).update(dict.fromkeys(c for c in tensor.chunks
                                                            if owner.get((fqn, c.offsets), r) == r))
    tensors = {fqn: DcpTensor(fqn, t.dtype, t.size, tuple(chunks[fqn])) for fqn, t in first.items()}
    items = tuple(stored)
    return DcpMetadata(
        ", ".join(p.source for p in parts), tensors, frozenset().union(*(p.objects for p in parts)), items,
        parts[0].version if parts else None,
    )


REPLICA = "@rank"  # a later rank's own copy of a chunk an earlier rank saved too (per-rank metadata)


def _rank_of(source: str, position: int) -> int:
    """The rank of a per-rank metadata file (``__1.metadata``), or its position among them."""
    middle = Path(source).name.removeprefix("__").removesuffix(".metadata")
    return int(middle) if middle.isdigit() else position


def folder_metadata(folder: Path) -> DcpMetadata | None:
    """The DCP metadata of ``folder``, or None when it is not a DCP checkpoint."""
    files = dcp_metadata_files(folder)
    if not files:
        return None
    parts = [read_metadata(f) for f in files]
    return parts[0] if len(parts) == 1 else merged(parts)


__all__ = ["DcpChunk", "DcpItem", "DcpMetadata", "DcpTensor", "folder_metadata", "read_metadata"]
