"""Copy one weight file, patch its restored tensors and hash the result, reading each byte once.

A file that is neither patched nor hashed is copied by the kernel
(``copy_file_range``, as ``cp`` does): nothing passes through our memory.
Otherwise the copy runs through one reused buffer: each chunk is read from the
source once, written to the copy and fed to sha256 from that same buffer while
it is still in the CPU's cache, so hashing costs no second read. sha256 is sequential, so the bytes a patch will
change are hashed only once they are final: the copy stops before each
restored tensor's extent (its bytes, or for a torch view its whole storage),
copies that extent in the kernel, writes the donor's elements into it and reads
back just that extent to hash it. In a torch zip (a whole file, or a DCP ``.distcp``
item at its offset, found through the folder's ``.metadata``) the patched entries' CRC-32
is rewritten at the end and sits in the local header before the data, so
there everything from the first patched entry's header on is hashed by reading
the copy back once after patching. Either way the output is read back only
where it was patched (or after a zip's first patched entry), and the source is
read once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nandoctor.errors import RepairFailedError
from nandoctor.model import TensorRef
from nandoctor.readers.zipentries import LOCAL_MAGIC
from nandoctor.restore import zippatch
from nandoctor.restore.plan import Restoration
from nandoctor.restore.tensorbytes import byte_range, copy_elements

# The copy's buffer stays in a core's L2 cache between the write and sha256 reading it (measured on 1 GB,
# page cache warm: 256 KiB 0.79 s CPU, 1 MiB 0.94, 8 MiB 1.3-2.1; a kernel copy and a re-read 0.90).
CHUNK_BYTES = 256 << 10
# (donor path, donor ref, output fd, target ref, cast=…) -> bytes written: tensorbytes.copy_elements. The
# writer passes its own reference, so the tests can break it there to see the verification catch it.
ElementWriter = Callable[..., int]
# copy_file_range is missing or refused across these filesystems / kernels: fall back to sendfile.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ETXTBSY, errno.EPERM}

def copy_file(src: Path, dst: Path) -> None:
    """Copy in the kernel (no shard passes through our memory): copy_file_range like ``cp``, else sendfile."""
    with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
        size = os.fstat(fsrc.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(), min(size - copied, 1 << 30))
                if n == 0:
                    break
                copied += n
        except (AttributeError, OSError) as exc:
            if copied or (isinstance(exc, OSError) and exc.errno not in _NO_COPY_RANGE):
                raise
        if copied == size:
            return
    shutil.copyfile(src, dst)  # sendfile, or read/write where even that is missing


def extent(ref: TensorRef) -> tuple[int, int]:
    """[start, end) of the file bytes that writing ``ref``'s elements may touch: its own bytes when
    contiguous, else its storage's (a view writes only its elements, but somewhere inside those)."""
    span = byte_range(ref)
    if span is not None:
        return span[0], span[0] + span[1]
    return ref.region.offset, ref.region.offset + ref.region.nbytes


def groups(restorations: list[Restoration]) -> list[tuple[int, int, list[Restoration]]]:
    """The restorations merged into disjoint extents, in file order."""
    merged: list[tuple[int, int, list[Restoration]]] = []
    for r in sorted(restorations, key=lambda r: extent(r.target_ref)):
        lo, hi = extent(r.target_ref)
        if merged and lo < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], hi), [*last[2], r])
        else:
            merged.append((lo, hi, [r]))
    return merged


def write_weight(src: Path, dst: Path, restorations: list[Restoration], *, hash_it: bool,
                 copy: Callable[[Path, Path], None] = copy_file,
                 write_elements: ElementWriter = copy_elements) -> str | None:
    """Write ``dst`` as ``src`` with the restorations' donor elements; its sha256 when ``hash_it``
    (a patched file is always hashed: the proof records it). ``copy`` copies an untouched file whole."""
    if not restorations and not hash_it:
        copy(src, dst)
        return None
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK_BYTES))
    with open(src, "rb", buffering=0) as fsrc, open(dst, "w+b", buffering=0) as fdst:
        fin, fout = fsrc.fileno(), fdst.fileno()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fin, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = os.fstat(fin).st_size
        where = [zip_span(fin, r.target_ref) for r in restorations]
        spans = {span for span in where if span is not None}
        if spans:
            # The CRC-32 fields change last and sit before the data: hash from the first patched header on
            # only after patch_file has rewritten them (from the start when some tensor lies in no zip).
            entries = [e for span in sorted(spans, key=lambda s: s[0]) for e in zippatch.read_entries(str(src), *span)]
            found = [zippatch.entry_at(entries, r.target_ref.region.offset, r.target_ref.region.nbytes)
                     if span is not None else None for r, span in zip(restorations, where)]
            limit = min((e.local_offset for e in found if e is not None), default=0) if all(found) else 0
            _pump(fin, fout, 0, limit, buffer, digest.update)
            _pump(fin, fout, limit, size, buffer, None)
            patch_file(dst, restorations, write_elements)
            _hash_back(fout, limit, size, buffer, digest.update)
        else:
            pos = 0
            for lo, hi, group in groups(restorations):
                lo, hi = min(lo, size), min(hi, size)  # past the end: write_elements refuses it below
                _pump(fin, fout, pos, lo, buffer, digest.update)
                _pump(fin, fout, lo, hi, buffer, None)  # the bytes of the extent that the view leaves alone
                for r in group:
                    write_elements(r.donor_ref.file, r.donor_ref, fout, r.target_ref, cast=r.cast)
                _hash_back(fout, lo, hi, buffer, digest.update)
                pos = max(pos, hi)
            _pump(fin, fout, pos, size, buffer, digest.update)
        if os.fstat(fout).st_size != size:
            raise RepairFailedError(f"{dst}: the copy is {os.fstat(fout).st_size:,} bytes, its source {size:,}")
    return digest.hexdigest()


def _pump(fin: int, fout: int, start: int, end: int, buffer: memoryview,
          hash_update: Callable[[memoryview], None] | None) -> None:
    """Copy bytes [start, end) through ``buffer``, hashing them from it on the way."""
    pos = start
    while pos < end:
        n = os.preadv(fin, [buffer[: min(len(buffer), end - pos)]], pos)
        if n <= 0:
            raise RepairFailedError(f"the source ended at byte {pos:,} while it was copied (is something writing it?)")
        chunk = buffer[:n]
        written = 0
        while written < n:
            written += os.pwrite(fout, chunk[written:], pos + written)
        if hash_update is not None:
            hash_update(chunk)
        pos += n


def _hash_back(fd: int, start: int, end: int, buffer: memoryview, hash_update: Callable[[memoryview], None]) -> None:
    """Hash bytes [start, end) of the patched copy (the only part of it read back)."""
    pos = start
    while pos < end:
        n = os.preadv(fd, [buffer[: min(len(buffer), end - pos)]], pos)
        if n <= 0:
            raise RepairFailedError(f"the copy ended at byte {pos:,} while it was hashed")
        hash_update(buffer[:n])
        pos += n


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


def patch_file(copy: Path, restorations: list[Restoration], write_elements: ElementWriter = copy_elements) -> None:
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
            write_elements(r.donor_ref.file, r.donor_ref, fd, ref, cast=r.cast)
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
