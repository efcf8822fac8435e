"""torch.distributed.checkpoint (DCP) ``.distcp`` files read as byte ranges, through their folder's ``.metadata``.

A ``.distcp`` file is a concatenation of items that only the metadata
explains: each item's byte range is (offset, length) in ``storage_data``. With
the default serialisation every item is a ``torch.save`` stream, read by the
torch zip reader through a window at the item's offset (its CRC-32s checked
as for any torch file, or owed to the scan); with ``serialization_format=SAFETENSORS`` the tensor
chunks of a file are one safetensors stream at the end of the file, read by
the safetensors reader at that offset. Pickled objects (``BytesStorageMetadata``)
are torch.save streams too; any tensors inside them are scanned under the
object's name. Items written through a stream extension (compression) are
refused by name, never guessed at.

Each chunk is named by its fully qualified DCP name and carries its place in
the global tensor (:class:`ChunkOf`); the engine merges the chunks of one
tensor into one result in global coordinates. Never sniffed by content (a
``.distcp`` file starts like a torch zip but is not one): chosen by suffix.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from nandoctor.crc import check_owed
from nandoctor.errors import CorruptCheckpointError, NandoctorError, UnsupportedFormatError
from nandoctor.fileidentity import FileIdentity, fingerprint
from nandoctor.model import ChunkOf, OwedCrc, ReadResult, ScanProblem, TensorRef, UnviewedBad
from nandoctor.readers import safetensors as st
from nandoctor.readers.dcp_metadata import DcpItem, DcpMetadata, folder_metadata
from nandoctor.readers.formats import DCP, ZIP_LOCAL_MAGIC, dcp_metadata_files, looks_safetensors
from nandoctor.readers.torch.file import read_zip_at
from nandoctor.readers.torch.names import PARAM_GROUPS


@lru_cache(maxsize=8)
def _metadata(folder: Path, stamp: tuple[tuple[str, FileIdentity], ...]) -> DcpMetadata | None:
    del stamp  # part of the cache key only: a rewritten .metadata is read again
    return folder_metadata(folder)


def metadata_for(folder: Path) -> DcpMetadata | None:
    """The folder's DCP metadata, read once per scan of its many ``.distcp`` files."""
    stamp = tuple((str(f), fingerprint(f)) for f in dcp_metadata_files(folder))
    return _metadata(folder, stamp) if stamp else None


class DcpReader:
    format_name = DCP.name
    suffixes = DCP.suffixes

    def sniff(self, head: bytes) -> bool:
        return False  # chosen by suffix only (formats.DCP)

    def read(self, path: Path, *, defer_crcs: bool = False) -> ReadResult:
        """The file's chunks; ``defer_crcs``: its items' storage CRC-32 checks left in ``owed`` (torch reader)."""
        p = str(path)
        metadata = metadata_for(path.parent)
        if metadata is None:
            raise UnsupportedFormatError(
                f"{p}: a DCP .distcp file without its folder's .metadata, which alone says where its tensors are",
                "scan the whole checkpoint folder, with the .metadata file torch.distributed.checkpoint wrote",
            )
        # (a chunk of no elements, a rank's empty shard of a tensor with fewer rows than ranks, is never read by
        # dcp.load: nor here, or its tensor would be listed twice, whole and as an empty chunk)
        listed = metadata.items_in(path.name)
        items = [item for item in listed if not _empty_chunk(item, metadata)]
        if not items:
            return ReadResult((), (f"{path.name}: only empty chunks, which dcp.load never reads, lie in this file"
                                   if listed else f"{path.name}: no item of {Path(metadata.source).name} lies in this file",))
        size = os.stat(path).st_size
        refs: list[TensorRef] = []
        problems: list[ScanProblem] = []
        notes: list[str] = []
        owed: list[OwedCrc] = []
        unviewed: list[UnviewedBad] = []
        safetensors_at: dict[int, dict[str, TensorRef]] = {}
        with open(path, "rb") as fh:
            for item in items:
                try:
                    found = _read_item(p, fh, size, item, metadata, safetensors_at)
                except NandoctorError as exc:
                    problems.append(ScanProblem(p, f"item {item.fqn!r}: {exc.message.removeprefix(p + ': ')}", exc.hint))
                    continue
                refs += found.refs
                notes += found.notes
                problems += found.problems
                owed += found.owed
                unviewed += found.unviewed
            if not defer_crcs:
                problems += check_owed(fh.fileno(), owed)
                owed = []
        if safetensors_at:
            notes.append("the .distcp files hold their tensors as safetensors (FileSystemWriter(serialization_format="
                         "SAFETENSORS)), which torch's own FileSystemReader (torch 2.13) cannot load: it torch.loads "
                         "every tensor item (\"Weights only load failed … Unsupported operand 0\"); nandoctor read "
                         "them with the safetensors reader, so load them with a reader of that serialisation")
        # (the same problem of every item of the file, a pickle protocol torch does not run: said once)
        return ReadResult(tuple(refs), tuple(dict.fromkeys(notes)), tuple(dict.fromkeys(problems)), tuple(owed),
                          tuple(unviewed))


DCP_TENSOR_LOADER = "torch.distributed.checkpoint.load (its FileSystemReader)"


def _read_item(
    p: str, fh: BinaryIO, size: int, item: DcpItem, metadata: DcpMetadata, safetensors_at: dict[int, dict[str, TensorRef]]
) -> ReadResult:
    """One item's refs and notes, and its storages' CRC-32 checks (owed: the caller makes them)."""
    if item.transformed:
        raise CorruptCheckpointError(
            p, "written through a stream extension (compression or another transform), which nandoctor does not "
            "decode; not scanned",
            "save without _extensions (FileSystemWriter's default) to have the checkpoint scanned",
        )
    if item.offset + item.length > size:
        raise CorruptCheckpointError(
            p, f"bytes {item.offset}..{item.offset + item.length} lie past the end of the {size}-byte file (truncated?)"
        )
    fh.seek(item.offset)
    head = fh.read(16)
    if head.startswith(ZIP_LOCAL_MAGIC):
        # (a tensor item: dcp.load reads it with torch.load(weights_only=True); a pickled object with weights_only=False)
        read = read_zip_at(p, fh, item.offset, item.length, defer_crcs=True,
                           loader=DCP_TENSOR_LOADER if item.chunk_offsets is not None else None,
                           groups=tuple(item.fqn.split(".")) if PARAM_GROUPS in item.fqn.split(".") else ())
        owed = tuple(dataclasses.replace(o, tensors=repr(item.fqn)) for o in read.owed)  # the item's own name
        # NaN/Inf outside tensors (a numpy array in a pickled object: dcp.load gives it back) under the item's name
        unviewed = tuple(dataclasses.replace(u, storage=_in_item(item.fqn, u.storage) if u.pickled
                                             else f"{u.storage} of item {item.fqn!r}") for u in read.unviewed)
        if item.chunk_offsets is None:  # a pickled object: tensors inside it (rare) are scanned under its name
            refs = [dataclasses.replace(r, name=_in_item(item.fqn, r.name)) for r in read.refs]
            return ReadResult(tuple(refs), tuple(n for n in read.notes if "holds no tensors" not in n), read.problems,
                              owed, unviewed)
        if len(read.refs) != 1:
            raise CorruptCheckpointError(p, f"a torch.save stream holding {len(read.refs)} tensors where DCP saves one")
        return ReadResult((_chunk(p, read.refs[0], item, metadata),), read.notes, read.problems, owed, unviewed)
    if item.chunk_offsets is not None and looks_safetensors(head):
        by_name = safetensors_at.get(item.offset)
        if by_name is None:
            by_name = safetensors_at[item.offset] = _safetensors_refs(p, item.offset)
        ref = by_name.get(item.fqn)
        if ref is None:
            raise CorruptCheckpointError(p, f"not in the safetensors stream at byte {item.offset}")
        return ReadResult((_chunk(p, ref, item, metadata),))
    raise CorruptCheckpointError(
        p, f"bytes at {item.offset} are neither a torch.save stream nor safetensors (a damaged or foreign file)",
        "re-copy the .distcp files and .metadata from where the checkpoint was saved",
    )


def _in_item(fqn: str, name: str) -> str:
    """A name inside a pickled DCP item, under the item's own name."""
    return f"{fqn}.{name}" if name else fqn


def _safetensors_refs(p: str, base: int) -> dict[str, TensorRef]:
    refs = st.SafetensorsReader().read_at(Path(p), base).refs
    return {ref.name: dataclasses.replace(ref, region=dataclasses.replace(ref.region, key=f"{base}:{ref.name}"))
            for ref in refs}


def _empty_chunk(item: DcpItem, metadata: DcpMetadata) -> bool:
    tensor = metadata.tensors.get(item.fqn)
    if item.chunk_offsets is None or tensor is None:
        return False
    sizes = tensor.sizes_at.get(item.chunk_offsets)
    return sizes is not None and math.prod(sizes) == 0


def _chunk(p: str, ref: TensorRef, item: DcpItem, metadata: DcpMetadata) -> TensorRef:
    """The stored chunk as a named chunk of its global tensor, checked against the metadata."""
    tensor = metadata.tensors[item.fqn]
    assert item.chunk_offsets is not None
    sizes = tensor.sizes_at.get(item.chunk_offsets)
    if sizes is None:
        raise CorruptCheckpointError(p, f"a chunk at {list(item.chunk_offsets)} that the metadata does not list")
    if ref.dtype != tensor.dtype or ref.shape != sizes:
        raise CorruptCheckpointError(
            p, f"holds {ref.dtype} {list(ref.shape)} where the metadata says {tensor.dtype} {list(sizes)}",
            "the .metadata and the .distcp files come from different saves; re-copy them together",
        )
    whole = sizes == tensor.size
    return dataclasses.replace(ref, name=item.fqn, chunk=None if whole else ChunkOf(item.chunk_offsets, tensor.size))


__all__ = ["DcpReader", "metadata_for"]
