"""CRC-32 bookkeeping for patched entries of a torch zip checkpoint.

``torch.save`` writes each storage as a STORED (uncompressed) zip entry, so
patching a storage is patching bytes in place; what changes is the entry's
CRC-32, which sits in up to three places: the local file header (zero when
general-purpose flag bit 3 says a data descriptor follows the data), that data
descriptor, and the central directory record. torch never checks it, but zip
tools and nandoctor's own reader do, so all three are rewritten.

The central directory is parsed here (zip64 included) instead of through
``zipfile``, because ``zipfile`` does not say where each central record lies.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from nandoctor.errors import CorruptCheckpointError, RepairFailedError
from nandoctor.readers.zipentries import (
    crc32 as _crc32,  # python-isal when installed: ~7x zlib
)

_LOCAL = 0x04034B50
_CENTRAL = 0x02014B50
_EOCD = 0x06054B50
_ZIP64_EOCD = 0x06064B50
_ZIP64_LOCATOR = 0x07064B50
_DESCRIPTOR = 0x08074B50
_FLAG_DESCRIPTOR = 0x08
_STORED = 0
_CRC_CHUNK = 8 << 20


@dataclass(frozen=True)
class ZipEntry:
    name: str
    flags: int
    method: int
    crc: int
    size: int  # compressed size == uncompressed size for STORED entries
    local_offset: int  # the local file header
    data_offset: int  # first byte of the entry's data
    central_offset: int  # this entry's central directory record
    zip64: bool


def _pread(path: str, fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise CorruptCheckpointError(path, f"zip structure ends early at byte {offset}")
    return data


def _zip64_values(extra: bytes, wanted: list[bool]) -> list[int]:
    """Values of the zip64 extra field (id 1), in order, for the fields that were 0xFFFF…."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values, cursor = [], pos + 4
            for need in wanted:
                if need:
                    values.append(struct.unpack_from("<Q", extra, cursor)[0])
                    cursor += 8
            return values
        pos += 4 + length
    raise ValueError("zip64 field missing")


def read_entries(path: str) -> list[ZipEntry]:
    """Every entry of the zip at ``path`` with the byte positions a patcher needs."""
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        tail_len = min(size, 22 + 65535)
        tail = _pread(path, fd, tail_len, size - tail_len)
        at = tail.rfind(struct.pack("<I", _EOCD))
        if at < 0:
            raise CorruptCheckpointError(path, "no zip end-of-central-directory record")
        eocd = size - tail_len + at
        _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<IHHHHIIH", tail, at)
        if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF or count == 0xFFFF:
            locator = _pread(path, fd, 20, eocd - 20)
            sig, _, z64_offset, _ = struct.unpack("<IIQI", locator)
            if sig != _ZIP64_LOCATOR:
                raise CorruptCheckpointError(path, "zip64 locator missing")
            record = _pread(path, fd, 56, z64_offset)
            if struct.unpack_from("<I", record)[0] != _ZIP64_EOCD:
                raise CorruptCheckpointError(path, "zip64 end-of-central-directory record missing")
            count, cd_size, cd_offset = struct.unpack_from("<QQQ", record, 32)
        central = _pread(path, fd, cd_size, cd_offset)
        entries, pos = [], 0
        for _ in range(count):
            if struct.unpack_from("<I", central, pos)[0] != _CENTRAL:
                raise CorruptCheckpointError(path, f"bad central directory record at byte {cd_offset + pos}")
            (flags, method, crc, csize, usize, nlen, xlen, clen, local) = struct.unpack_from(
                "<8xHH4xIIIHHH8xI", central, pos
            )
            name = central[pos + 46 : pos + 46 + nlen].decode("utf-8", "replace")
            extra = central[pos + 46 + nlen : pos + 46 + nlen + xlen]
            wanted = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, local == 0xFFFFFFFF]
            zip64 = any(wanted)
            if zip64:
                values = iter(_zip64_values(extra, wanted))
                usize = next(values) if wanted[0] else usize
                csize = next(values) if wanted[1] else csize
                local = next(values) if wanted[2] else local
            header = _pread(path, fd, 30, local)
            if struct.unpack_from("<I", header)[0] != _LOCAL:
                raise CorruptCheckpointError(path, f"entry {name!r}: no local header at byte {local}")
            lnlen, lxlen = struct.unpack_from("<HH", header, 26)
            entries.append(
                ZipEntry(name, flags, method, crc, csize, local, local + 30 + lnlen + lxlen, cd_offset + pos, zip64)
            )
            pos += 46 + nlen + xlen + clen
    return entries


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
