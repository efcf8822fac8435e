"""The entries of a zip archive as byte ranges in the file, checked strictly, never inflated.

Written for torch's zip checkpoints: the central directory is the source of
truth (torch writes data descriptors, so local headers carry zero sizes);
each local header is checked against it and gives where the entry's bytes
start. Refused: bytes before the first ``PK\\x03\\x04``, a missing or
inconsistent end record (truncation), trailing bytes, an end record with a
comment (torch's zip reader takes the last end-record signature it finds, so
a second archive can hide in a comment), names that collide when ASCII case
is ignored (torch's zip reader looks records up that way), encrypted entries, multi-disk archives, entries that overlap or run past the
central directory, stored entries with two sizes, files marked as folders
(torch's zip reader leaves such a storage as uninitialised memory). ZIP64 is
supported (torch writes its records for every file, and needs them past 4 GB).

This is nandoctor's one zip parser: the torch reader reads entries through it
and the repair writer finds the CRC-32 fields it rewrites through it
(``central_offset``), so an archive is hardened once and read one way.
"""

from __future__ import annotations

import io
import itertools
import os
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from nandoctor.errors import CorruptCheckpointError
from nandoctor.readers.formats import ZIP_LOCAL_MAGIC as LOCAL_MAGIC

CENTRAL_MAGIC = b"PK\x01\x02"
EOCD_MAGIC = b"PK\x05\x06"
ZIP64_EOCD_MAGIC = b"PK\x06\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"

STORED = 0
_EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_MAX_COMMENT = 0xFFFF
_MAX_ENTRIES = 10_000_000  # a torch file has one entry per storage; this only bounds a hostile directory
_ENCRYPTED_FLAGS = 0x1 | 0x40 | 0x2000  # encrypted, strongly encrypted, central directory masked
_PATCHED_DATA = 0x20  # "compressed patched data": a feature torch's zip reader refuses
_DOS_DIRECTORY = 0x10  # external attributes: the MS-DOS "directory" bit (zip readers honour it whatever the OS)


@dataclass(frozen=True)
class ZipEntry:
    name: str
    method: int  # 0 = stored
    flags: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int
    data_offset: int  # absolute offset of the entry's first byte in the file
    central_offset: int = -1  # absolute offset of its central-directory record (a patcher rewrites its CRC)
    zip64: bool = False  # some of its sizes or offset live in a ZIP64 extra field

    @property
    def stored(self) -> bool:
        return self.method == STORED

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)


@dataclass(frozen=True)
class ZipDirectory:
    entries: dict[str, ZipEntry]  # in central-directory order
    directory_offset: int


def _zip64_values(extra: bytes, want: list[str], where: str, fail: Callable[[str], Exception]) -> dict[str, int]:
    """Read the ZIP64 extended-information field for the fields whose 32-bit value was saturated."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) != length:
            raise fail(f"{where}: extra field runs past its end")
        if tag == 0x0001:
            out = {}
            for i, field_name in enumerate(want):
                if 8 * (i + 1) > length:
                    raise fail(f"{where}: ZIP64 field is too short")
                (out[field_name],) = struct.unpack_from("<Q", body, 8 * i)
            return out
        pos += 4 + length
    if want:
        raise fail(f"{where}: sizes need a ZIP64 field but it is missing")
    return {}


def ascii_fold(name: str) -> str:
    """``name`` with ASCII letters lower-cased and nothing else: how torch's zip reader (miniz) compares names."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _end_record_at(path: str, fh: BinaryIO, size: int) -> int:
    """Where the end record starts: the file's last 22 bytes, with no comment, or the archive is refused.

    torch's zip reader (miniz) takes the *last* end-record signature with 22 bytes after it, whatever its
    comment length says, while other readers take the first whose comment reaches the end of the file; a
    comment can so hold a second archive that torch reads instead. torch.save never writes a comment, so
    only an end record that is exactly the file's tail is accepted: both readers then agree.
    """
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    last = len(tail) - _EOCD.size
    found = tail.rfind(EOCD_MAGIC, 0, max(last + 3, 0))
    while found >= 0:  # an earlier end record whose comment runs to the end holds what follows it
        (*_, comment_len) = _EOCD.unpack_from(tail, found)
        if found != last and comment_len and found + _EOCD.size + comment_len == len(tail):
            raise CorruptCheckpointError(
                path,
                f"the zip end record carries a {comment_len}-byte comment; torch.save never writes one, and "
                "torch's zip reader can read an archive hidden inside it instead of this one (refused)",
                "re-save the checkpoint with torch.save",
            )
        found = tail.rfind(EOCD_MAGIC, 0, found)
    if last >= 0 and tail[last : last + 4] == EOCD_MAGIC:
        (*_, comment_len) = _EOCD.unpack_from(tail, last)
        if comment_len == 0:
            return size - _EOCD.size
    raise CorruptCheckpointError(
        path,
        "no end-of-central-directory record at the end of the zip: the file is truncated "
        "(an interrupted save or download) or has bytes appended",
    )


def read_directory(path: str, fh: BinaryIO, size: int) -> ZipDirectory:
    """Parse and validate the archive's structure; raise CorruptCheckpointError naming the problem."""

    def fail(reason: str, hint: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(path, reason, hint)

    fh.seek(0)
    if fh.read(4) != LOCAL_MAGIC:
        raise fail(
            "does not start with a zip local header (PK\\x03\\x04); torch refuses such files, and bytes "
            "in front of an archive can hide a second file",
            "re-save it with torch.save",
        )
    eocd_pos = _end_record_at(path, fh, size)
    fh.seek(eocd_pos)
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = _EOCD.unpack(fh.read(_EOCD.size))
    directory_end = eocd_pos

    locator_pos = eocd_pos - _ZIP64_LOCATOR.size
    locator = b""
    if locator_pos >= 0:
        fh.seek(locator_pos)
        locator = fh.read(_ZIP64_LOCATOR.size)
    if locator[:4] == ZIP64_LOCATOR_MAGIC:
        _, z_disk, z_eocd_pos, z_disks = _ZIP64_LOCATOR.unpack(locator)
        if z_disk != 0 or z_disks != 1:  # (torch's miniz: "unsupported multidisk archive" unless exactly one)
            raise fail("its ZIP64 locator counts 0 disks; torch reads only archives of exactly 1 and refuses it as "
                       "multi-disk" if z_disks == 0 else "multi-disk zip archives are not torch checkpoints")
        if z_eocd_pos + _ZIP64_EOCD.size > locator_pos:
            raise fail("ZIP64 end record lies outside the file")
        fh.seek(z_eocd_pos)
        record = fh.read(_ZIP64_EOCD.size)
        magic, record_size, _, _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset = _ZIP64_EOCD.unpack(record)
        if magic != ZIP64_EOCD_MAGIC:
            raise fail("ZIP64 locator points at something that is not a ZIP64 end record")
        if record_size < _ZIP64_EOCD.size - 12:  # (the size counts the record after its first 12 bytes: 44)
            raise fail(f"ZIP64 end record gives its size as {record_size} bytes, less than its fields need (44): "
                       "torch refuses the archive as corrupted")
        directory_end = z_eocd_pos
    elif 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise fail("zip end record needs a ZIP64 record that is missing (truncated?)")
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise fail("multi-disk zip archives are not torch checkpoints")
    if n_total > _MAX_ENTRIES:
        raise fail(f"zip directory claims {n_total} entries")
    if cd_offset + cd_size != directory_end:
        raise fail(
            f"central directory ({cd_size} bytes at {cd_offset}) does not end where the end record starts "
            f"({directory_end}): unexpected or missing bytes"
        )

    fh.seek(cd_offset)
    directory = fh.read(cd_size)
    if len(directory) != cd_size:
        raise fail("central directory runs past the end of the file (truncated?)")
    # name → its central record's (method, flags, crc, csize, usize, header offset, record offset, zip64)
    entries: dict[str, tuple[int, int, int, int, int, int, int, bool]] = {}
    folded: dict[bytes, str] = {}  # bytes.lower() folds ASCII only, as miniz does
    pos = 0
    for index in range(n_total):
        record_at = pos
        if pos + _CENTRAL.size > len(directory):
            raise fail(f"central directory ends after {index} of {n_total} entries")
        (
            magic, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, disk_start, _, external, offset,
        ) = _CENTRAL.unpack_from(directory, pos)
        if magic != CENTRAL_MAGIC:
            raise fail(f"central directory entry {index} has a bad signature")
        start = pos + _CENTRAL.size
        raw_name = directory[start : start + nlen]
        extra = directory[start + nlen : start + nlen + xlen]
        pos = start + nlen + xlen + clen
        if pos > len(directory):
            raise fail(f"central directory entry {index} runs past the directory")
        try:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        except UnicodeDecodeError:
            raise fail(f"central directory entry {index} has a name that is not valid UTF-8") from None
        want = [f for f, v in (("size", usize), ("csize", csize), ("offset", offset)) if v == 0xFFFFFFFF]
        big = _zip64_values(extra, want, f"entry {name!r}", fail)
        usize, csize, offset = big.get("size", usize), big.get("csize", csize), big.get("offset", offset)
        if disk_start != 0:
            raise fail(f"entry {name!r} lives on another disk of a multi-disk archive")
        if name in entries:
            raise fail(
                f"duplicate zip entry name {name!r}: which copy a loader reads is undefined (a tampered file?)"
            )
        twin = folded.setdefault(raw_name.lower(), name)
        if twin != name:
            raise fail(
                f"zip entry names {twin!r} and {name!r} are duplicates when case is ignored, as torch's zip reader "
                "compares them: which one it reads depends on its search (a tampered file?)"
            )
        if flags & _ENCRYPTED_FLAGS:
            raise fail(f"entry {name!r} is encrypted")
        if flags & _PATCHED_DATA:
            raise fail(f"entry {name!r} holds 'compressed patched data' (zip flag 0x20), which no torch file uses")
        if method == STORED and csize != usize:
            raise fail(f"entry {name!r}: stored (not compressed) but with two different sizes ({csize} and {usize})")
        if (external & _DOS_DIRECTORY or name.endswith("/")) and (usize or csize or not name.endswith("/")):
            # torch's zip reader then skips the bytes and leaves the storage uninitialised memory
            raise fail(f"entry {name!r} is marked as a folder but is a file (a crafted directory record)")
        entries[name] = (method, flags, crc, csize, usize, offset, cd_offset + record_at, bool(want))
    if pos != len(directory):
        raise fail(f"{len(directory) - pos} unexpected bytes at the end of the central directory")

    checked: dict[str, ZipEntry] = {}
    read_at = _reader_at(fh)
    for name, (method, flags, crc, csize, usize, header_offset, record_offset, zip64) in entries.items():
        if header_offset + _LOCAL.size > cd_offset:
            raise fail(f"entry {name!r}: local header lies outside the archive's data")
        expected = name.encode("utf-8" if flags & 0x800 else "cp437")
        header = read_at(header_offset, _LOCAL.size + len(expected))  # (the header and the name it must hold)
        if len(header) < _LOCAL.size:
            raise fail(f"entry {name!r}: no local header at offset {header_offset}")
        magic, _, _, local_method, _, _, _, _, _, nlen, xlen = _LOCAL.unpack_from(header)
        if magic != LOCAL_MAGIC:
            raise fail(f"entry {name!r}: no local header at offset {header_offset}")
        if local_method != method:
            raise fail(f"entry {name!r}: local header and central directory disagree on compression")
        if nlen != len(expected) or header[_LOCAL.size:] != expected:
            raise fail(f"entry {name!r}: local header names a different file")
        data_offset = header_offset + _LOCAL.size + nlen + xlen
        if data_offset + csize > cd_offset:
            raise fail(
                f"entry {name!r}: its {csize} bytes run past the start of the central "
                "directory (truncated or overlapping entries)"
            )
        checked[name] = ZipEntry(name, method, flags, crc, csize, usize, header_offset, data_offset, record_offset, zip64)
    spans = sorted((e.header_offset, e.data_offset + e.compressed_size, e.name) for e in checked.values())
    if spans and spans[0][0] != 0:
        raise fail(f"the archive's first entry starts at byte {spans[0][0]}, not 0: unexplained bytes in front of it")
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise fail(f"zip entries {first!r} and {second!r} overlap (a crafted archive)")
    return ZipDirectory(checked, cd_offset)


def _reader_at(fh: BinaryIO) -> Callable[[int, int], bytes]:
    """``(offset, n) -> bytes`` of ``fh`` (a file, or a FileWindow of one at ``base``): one ``pread`` each where
    the file has a descriptor (70,000 entries' local headers: two syscalls and a seek each cost 1 s), else seek
    and read."""
    try:
        fd, base = fh.fileno(), getattr(fh, "base", 0)
    except (OSError, AttributeError, io.UnsupportedOperation):
        fd = None
    if fd is None or not isinstance(base, int):

        def by_seek(offset: int, n: int) -> bytes:
            fh.seek(offset)
            return fh.read(n)

        return by_seek
    return lambda offset, n: os.pread(fd, n, base + offset)


def read_entry(fh: BinaryIO, entry: ZipEntry) -> bytes:
    fh.seek(entry.data_offset)
    return fh.read(entry.compressed_size)
