"""Which file a path names, and whether it is still the one that was read.

Size and modification time alone miss a file *replaced* by one of the same size
whose mtime was kept (``rsync -a``, ``cp -p``, ``os.replace`` of a copy made
with ``utime``): a new inode under the old name, with bytes nobody checked.
The inode and device name the file itself; the inode change time (ctime) moves
on every write, truncation, ``utime`` and rename of it, and no program can set
it back. Every check that a source, donor or scanned file did not change
compares one :class:`FileIdentity`, taken by :func:`fingerprint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileIdentity:
    """A file as it was at one moment: equal only while it is the same file with the same bytes and times."""

    size: int
    mtime_ns: int
    ctime_ns: int  # moves with any change to the file, utime included: a kept mtime does not hide a rewrite
    inode: int
    device: int  # (with the inode: which file; never written down, see portable())

    def portable(self) -> tuple[int, int, int, int]:
        """(size, mtime_ns, ctime_ns, inode): what is kept in files compared later or on another host (a part
        file, a proof). Not the device number: each host, and each mount (NFS, btrfs subvolumes), numbers it
        anew, so the same file would read as changed; a shared file system's inode and times are its server's."""
        return self.size, self.mtime_ns, self.ctime_ns, self.inode

    def recordable(self) -> dict[str, int]:
        """:meth:`portable` as a proof records it (``bytes`` and ``mtime_ns``, as before; ``ctime_ns``, ``inode``)."""
        return dict(zip(("bytes", "mtime_ns", "ctime_ns", "inode"), self.portable()))


def fingerprint(path: str | os.PathLike[str]) -> FileIdentity:
    """The identity of the file at ``path`` (links followed): taken before a file is used and compared after."""
    st = os.stat(path)
    return FileIdentity(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def within(folder: str | os.PathLike[str], outer: str | os.PathLike[str]) -> bool:
    """Whether the existing ``folder`` is the folder ``outer`` or lies inside it, told by identity (device and
    inode) of ``folder`` and of each folder above it, not by path: a bind mount (or a second mount of one file
    system) shows one folder under two paths that no ``resolve()`` joins, and a repair's --out through one
    landed inside the checkpoint it read through the other (a tester's)."""
    try:
        held = os.stat(outer)
    except OSError:
        return False
    here = os.path.realpath(folder)
    while True:
        try:
            st = os.stat(here)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return True
        above = os.path.dirname(here)
        if above == here:
            return False
        here = above


__all__ = ["FileIdentity", "fingerprint", "within"]
