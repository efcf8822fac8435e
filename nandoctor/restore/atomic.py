"""An output folder that appears whole or not at all.

The repair is built in ``<parent>/.<name>.nandoctor-tmp-<pid>-<random>`` and
renamed onto ``--out`` (which must not exist) only once it is written, synced
and verified. For its whole life, rename included, the building process holds
an exclusive ``flock`` on the lock file beside it,
``<parent>/.<name>.nandoctor-lock-<pid>-<random>``: the kernel (or the shared
file system's lock manager) lets go of it only when the process ends, however it
ends. So whether a temporary folder is still being built is asked of its lock,
never of a pid, which another container or node cannot see (stale.py removes
the folders and lock files of repairs that are gone). Beside the folder, not in
it: ``--out`` never holds the lock file, and there is no instant unlocked.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from nandoctor.errors import OutputExistsError

_NAME = r"^(?P<stem>\..+)\.nandoctor-{}-(?P<pid>\d+)-(?P<tag>[0-9a-f]{{8}})$"
_TEMP = re.compile(_NAME.format("tmp"))
_LOCK = re.compile(_NAME.format("lock"))
# A stale temporary folder is first renamed to this, then removed (stale.py): a name no repair ever builds in
_TRASH = re.compile(r"^\..+\.nandoctor-trash-[0-9a-f]{8}$")
_ACTIVE: set[str] = set()  # temp folders this process is building right now (API used from threads)
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
# errors of a file system without (usable) locks: its folders are judged by the rule for lockless ones (stale.py)
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@dataclass
class TempFolder:
    """A temporary folder this process builds a repair in, and the lock that says so."""

    path: Path
    lock: Path  # the lock file beside it
    lock_fd: int | None  # holds an exclusive flock on ``lock``; None where the file system has no locks
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the folder: tells it from another at that name
    moved: bool = False  # renamed onto --out: never removed


def lock_of(temp: Path) -> Path:
    """The lock file of the temporary folder ``temp`` (which need not exist)."""
    match = _TEMP.match(temp.name)
    assert match is not None, temp
    return temp.with_name(f"{match['stem']}.nandoctor-lock-{match['pid']}-{match['tag']}")


def folder_of(lock: Path) -> Path:
    """The temporary folder that the lock file ``lock`` belongs to."""
    match = _LOCK.match(lock.name)
    assert match is not None, lock
    return lock.with_name(f"{match['stem']}.nandoctor-tmp-{match['pid']}-{match['tag']}")


def trash_name(temp: Path) -> Path:
    match = _TEMP.match(temp.name)
    stem = match["stem"] if match else f".{temp.name}"
    return temp.with_name(f"{stem}.nandoctor-trash-{secrets.token_hex(4)}")


def recorded_pid(name: str) -> int | None:
    """The pid a temporary folder's name records (its builder's, in the builder's own pid namespace)."""
    match = _TEMP.match(name)
    return int(match["pid"]) if match else None


def make_temp(out: Path) -> TempFolder:
    for _ in range(8):
        folder = out.parent / f".{out.name}.nandoctor-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        lock = lock_of(folder)
        try:
            fd = _hold_lock(lock)  # first: the folder never exists unlocked
        except FileExistsError:
            continue
        temp = TempFolder(folder, lock, fd)
        try:
            os.mkdir(folder)
            st = os.stat(folder)
        except BaseException as exc:
            release(temp)
            if isinstance(exc, FileExistsError):
                continue
            raise
        temp.identity = (st.st_dev, st.st_ino)
        _ACTIVE.add(str(folder))
        return temp
    raise OutputExistsError(str(out.parent), "could not create a temporary folder for the repair")


def _hold_lock(path: Path) -> int | None:
    """Create the lock file, lock it, then write who holds it: a lock file with content is locked by its builder
    for as long as that lives (stale.py reads an empty one as being made, never as left behind)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Blocking: a clean-up that opened the new file in the instant before this lock holds it only while it
        # finds the file empty, and lets go at once.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except OSError as exc:
        os.close(fd)
        if exc.errno not in NO_LOCKS:
            os.unlink(path)
            raise
        return None  # no locks on this file system: its folders are judged by age (stale.py)
    return fd


def vanished(temp: TempFolder) -> bool:
    """Whether the folder is no longer at its name (removed or moved away by another process)."""
    if temp.moved:
        return False
    try:
        st = os.lstat(temp.path)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != temp.identity


def move_into_place(temp: TempFolder, out: Path) -> None:
    rename_noreplace(temp.path, out)
    temp.moved = True


def discard(temp: TempFolder) -> None:
    """Remove the folder unless it was moved onto --out (and only while it is still ours), then its lock."""
    try:
        if not temp.moved and not vanished(temp):
            shutil.rmtree(temp.path, ignore_errors=True)
    finally:
        _ACTIVE.discard(str(temp.path))
        release(temp)


def release(temp: TempFolder) -> None:
    """Unlink the lock file while still holding it, then let go (a clean-up that opened it meanwhile then holds
    an unlinked file, which it tells from the lock of a folder: stale.py)."""
    try:
        os.unlink(temp.lock)
    except FileNotFoundError:
        pass
    finally:
        if temp.lock_fd is not None:
            os.close(temp.lock_fd)
            temp.lock_fd = None


def is_active(path: str) -> bool:
    return path in _ACTIVE


def is_temp(name: str) -> bool:
    """A temporary folder of a repair, its lock file, or one being removed (never carried into a copy)."""
    return any(pattern.match(name) is not None for pattern in (_TEMP, _LOCK, _TRASH))


def kind(name: str) -> str | None:
    """"temp", "lock" or "trash" for the names :func:`is_temp` accepts; None for others."""
    for label, pattern in (("temp", _TEMP), ("lock", _LOCK), ("trash", _TRASH)):
        if pattern.match(name):
            return label
    return None


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first), so the names are durable too."""
    folders: list[Path] = []
    for here, _, files in os.walk(root):
        folders.append(Path(here))
        for name in files:
            fsync_path(Path(here) / name)
    for folder in reversed(folders):
        fsync_path(folder)


def _renameat2() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, never over anything already at ``dst``.

    A plain rename(2) would silently replace an empty folder at ``dst``; renameat2 with
    RENAME_NOREPLACE refuses. Where it is missing, check-then-rename is the fallback.
    """
    rename = _renameat2()
    if rename is not None:
        result = rename(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)  # type: ignore[operator]
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise OutputExistsError(str(dst), "appeared while the repair was written; the repair was not moved there")
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise OutputExistsError(str(dst), "appeared while the repair was written; the repair was not moved there")
    os.rename(src, dst)
