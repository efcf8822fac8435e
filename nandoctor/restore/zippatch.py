"""CRC-32 bookkeeping for patched entries of a torch zip checkpoint (a whole file, or a DCP item inside one).

``torch.save`` writes each storage as a STORED (uncompressed) zip entry, so
patching a storage is patching bytes in place; what changes is the entry's
CRC-32, which sits in up to three places: the local file header (zero when
general-purpose flag bit 3 says a data descriptor follows the data), that data
descriptor, and the central directory record. torch never checks it, but zip
tools and nandoctor's own reader do, so all three are rewritten.

Where those fields are comes from ``readers/zipentries.py``, nandoctor's one
strict zip parser (the same checks the scan applied to the source: an archive
it refuses is never patched); this module only reads and writes the bytes.
A DCP ``.distcp`` file holds one ``torch.save`` zip per item at the item's byte
offset: ``read_entries`` reads that zip through a window and returns positions
in the whole file, so the rewriting below needs no notion of a base.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, cast

from nandoctor.crc import crc32 as _crc32  # python-isal when installed: ~7x zlib
from nandoctor.errors import RepairFailedError
from nandoctor.readers.window import FileWindow
from nandoctor.readers.zipentries import read_directory

_DESCRIPTOR = 0x08074B50
_FLAG_DESCRIPTOR = 0x08
_STORED = 0
_CRC_CHUNK = 8 << 20


@dataclass(frozen=True)
class ZipEntry:
    """What a patcher needs of one entry, taken from the strict directory parser."""

    name: str
    flags: int
    method: int
    crc: int
    size: int  # compressed size == uncompressed size for STORED entries
    local_offset: int  # the local file header
    data_offset: int  # first byte of the entry's data
    central_offset: int  # this entry's central directory record
    zip64: bool


def read_entries(path: str, base: int = 0, size: int | None = None) -> list[ZipEntry]:
    """Every entry of the zip of ``size`` bytes at ``base`` in ``path`` (default: the whole file), with the
    byte positions a patcher needs, absolute in the file (CorruptCheckpointError when the strict parser
    refuses the archive)."""
    with open(path, "rb") as fh:
        length = os.fstat(fh.fileno()).st_size - base if size is None else size
        window = fh if base == 0 and size is None else cast(BinaryIO, FileWindow(fh, base, length))
        directory = read_directory(path, window, length)
    return [
        ZipEntry(e.name, e.flags, e.method, e.crc32, e.compressed_size, base + e.header_offset,
                 base + e.data_offset, base + e.central_offset, e.zip64)
        for e in directory.entries.values()
    ]


def entry_at(entries: list[ZipEntry], offset: int, length: int) -> ZipEntry | None:
    """The entry whose data holds bytes [offset, offset + length)."""
    for entry in entries:
        if entry.data_offset <= offset and offset + length <= entry.data_offset + entry.size:
            return entry
    return None


def crc_of(fd: int, entry: ZipEntry) -> int:
    crc, done = 0, 0
    while done < entry.size:
        chunk = os.pread(fd, min(_CRC_CHUNK, entry.size - done), entry.data_offset + done)
        if not chunk:
            raise RepairFailedError(f"zip entry {entry.name!r} ends early")
        crc = _crc32(chunk, crc)
        done += len(chunk)
    return crc


def check_stored(path: str, entry: ZipEntry) -> None:
    if entry.method != _STORED:
        raise RepairFailedError(
            f"{path}: zip entry {entry.name!r} is compressed; only STORED entries (what torch.save writes) can be patched",
            "re-save the checkpoint with torch.save, or convert it to safetensors",
        )


def rewrite_crc(fd: int, entry: ZipEntry, crc: int) -> None:
    """Write ``crc`` into the local header, the data descriptor and the central record of ``entry``."""
    packed = struct.pack("<I", crc)
    local_crc = struct.unpack("<I", os.pread(fd, 4, entry.local_offset + 14))[0]
    # With a data descriptor the local header's CRC is 0 by the spec; keep it 0 unless a writer filled it.
    if not entry.flags & _FLAG_DESCRIPTOR or local_crc != 0:
        os.pwrite(fd, packed, entry.local_offset + 14)
    if entry.flags & _FLAG_DESCRIPTOR:
        # The descriptor may or may not start with its signature; find the old CRC to know which.
        after = entry.data_offset + entry.size
        head = os.pread(fd, 8, after)
        old = struct.pack("<I", entry.crc)
        if head[:4] == struct.pack("<I", _DESCRIPTOR) and head[4:8] == old:
            os.pwrite(fd, packed, after + 4)
        elif head[:4] == old:
            os.pwrite(fd, packed, after)
        else:
            raise RepairFailedError(f"zip entry {entry.name!r}: its data descriptor is not where the zip says")
    os.pwrite(fd, packed, entry.central_offset + 16)
