"""Patch restored tensors' bytes into a copied weight file, and fix the CRC-32 of every zip entry touched.

A restored tensor's bytes lie in one of three kinds of container: a plain
tensor file (safetensors, GGUF: nothing else to update), a ``torch.save`` zip
(the storage's entry carries a CRC-32), or a DCP ``.distcp`` file, which is a
concatenation of items: with the default serialisation each item is a
``torch.save`` zip at the item's byte offset, with the safetensors
serialisation the chunks are one safetensors stream (no CRC). The DCP item
holding a tensor is found through the folder's ``.metadata`` (the same
restricted reader the scan used); its zip is then patched exactly as a whole
torch file is (zippatch.py), at that base offset.
"""

from __future__ import annotations

import os
from pathlib import Path

from nandoctor.errors import RepairFailedError
from nandoctor.model import TensorRef
from nandoctor.readers.zipentries import LOCAL_MAGIC
from nandoctor.restore import zippatch
from nandoctor.restore.plan import Restoration
from nandoctor.restore.tensorbytes import copy_elements

Span = tuple[int, int | None]  # (base, size or None = to the end of the file) of one zip archive


def zip_span(fd: int, ref: TensorRef) -> Span | None:
    """Where the torch zip holding ``ref``'s bytes lies in the file open as ``fd`` (a copy of ``ref.file``),
    or None when its bytes are in no zip."""
    if ref.file.endswith(".distcp"):
        from nandoctor.readers.dcp import metadata_for

        metadata = metadata_for(Path(ref.file).parent)
        name = Path(ref.file).name
        items = [] if metadata is None else metadata.items_in(name)
        start = ref.region.offset
        # The item that starts last at or before the tensor's bytes: its torch.save zip, or the file's
        # safetensors stream (whose items' lengths need not span the whole stream).
        item = max((i for i in items if i.offset <= start), key=lambda i: i.offset, default=None)
        if item is None or os.pread(fd, 4, item.offset) != LOCAL_MAGIC:
            return None
        if start + ref.region.nbytes > item.offset + item.length:
            raise RepairFailedError(f"{ref.file}: tensor {ref.name!r} lies across DCP items; refused")
        return item.offset, item.length
    return (0, None) if os.pread(fd, 4, 0) == LOCAL_MAGIC else None


def patch_file(copy: Path, restorations: list[Restoration]) -> None:
    """Write each restoration's donor elements into ``copy``; fix the CRC-32 of patched zip entries."""
    if not restorations:
        return
    with open(copy, "r+b") as fh:
        fd = fh.fileno()
        archives: dict[Span, list[zippatch.ZipEntry]] = {}
        touched: dict[int, zippatch.ZipEntry] = {}
        for r in restorations:
            ref = r.target_ref
            span = zip_span(fd, ref)
            if span is not None:
                if span not in archives:
                    archives[span] = zippatch.read_entries(str(copy), *span)
                _check_entry(fd, ref, archives[span], touched)
            copy_elements(r.donor_ref.file, r.donor_ref, fd, ref, cast=r.cast)
        for entry in touched.values():
            zippatch.rewrite_crc(fd, entry, zippatch.crc_of(fd, entry))


def _check_entry(fd: int, ref: TensorRef, entries: list[zippatch.ZipEntry], touched: dict[int, zippatch.ZipEntry]) -> None:
    """Note the zip entry ``ref``'s storage lies in, refusing one that is compressed or already corrupt."""
    entry = zippatch.entry_at(entries, ref.region.offset, ref.region.nbytes)
    if entry is None:
        raise RepairFailedError(f"{ref.file}: storage of {ref.name!r} is not inside one zip entry; refused")
    zippatch.check_stored(ref.file, entry)
    if entry.local_offset not in touched:
        # A CRC that was already wrong is corruption: do not bless it with a fresh one.
        if zippatch.crc_of(fd, entry) != entry.crc:
            raise RepairFailedError(
                f"{ref.file}: zip entry {entry.name!r} fails its CRC-32 check before patching (corrupt source)",
                "re-save or re-download the checkpoint; nandoctor will not rewrite a corrupt entry's CRC",
            )
        touched[entry.local_offset] = entry


__all__ = ["patch_file", "zip_span"]
