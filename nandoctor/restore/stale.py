"""Remove the temporary folders (and lock files) of repairs that no longer run (atomic.py makes them).

A folder is removed only when this process can take its lock itself: the
builder holds that lock from before the folder exists until after it is renamed
onto --out, and the kernel (or the shared file system's lock manager) lets go of
it only when the builder is gone, whatever pid namespace, container or node it
ran in. A pid is no such proof: from another namespace a live builder's pid
looks gone, or belongs to someone else.

A folder without a usable lock (an earlier nandoctor's, or one on a file system
without locks) is removed only by the old rule made strict: its recorded pid
runs no process here AND nothing in it changed for :data:`LOCKLESS_QUIET_S`; a
folder changed recently is always kept.

Removal renames the folder to a ``…nandoctor-trash-…`` name first: the rename
is atomic, so it takes exactly the temporary folder judged (one its builder
renamed onto --out is no longer at that name, and is never touched), and no
builder can rename it anywhere afterwards. Then the trash is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

from nandoctor.restore import atomic

LOCKLESS_QUIET_S = 3600.0  # a lockless folder untouched this long (writes, chmods) is no live repair's

_TAKEN, _HELD, _LOCKLESS = "taken", "held", "lockless"


def clean_stale(parent: Path) -> list[Path]:
    """Remove what repairs that are gone left in ``parent``; the paths removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        kind = atomic.kind(entry.name)
        path = Path(entry.path)
        if kind == "trash" and entry.is_dir(follow_symlinks=False):  # a clean-up's, cut off: nobody builds there
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif kind == "temp" and entry.is_dir(follow_symlinks=False) and not atomic.is_active(entry.path):
            if _remove_folder(path):
                removed.append(path)
        elif kind == "lock" and not os.path.lexists(atomic.folder_of(path)) and _remove_orphan_lock(path):
            removed.append(path)  # (its builder was killed before its folder was made, or after its rename)
    return removed


def _remove_folder(folder: Path) -> bool:
    lock = atomic.lock_of(folder)
    state, fd = _take_lock(lock)
    try:
        if state == _HELD or (state == _LOCKLESS and not _lockless_stale(folder)):
            return False  # its builder runs, wherever it runs (or it cannot be told: kept)
        if not _remove(folder):
            return False
        if fd is not None:
            _unlink(lock)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _remove_orphan_lock(lock: Path) -> bool:
    state, fd = _take_lock(lock)
    try:
        if state == _HELD or (state == _LOCKLESS and not _quiet(lock)):
            return False  # (an empty one: being made this instant)
        _unlink(lock)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def _take_lock(lock: Path) -> tuple[str, int | None]:
    """(_TAKEN, fd holding the lock): its builder is gone; (_HELD, None): its builder holds it, or it is not ours
    to judge; (_LOCKLESS, None): no usable lock, judged by the lockless rule."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _LOCKLESS, None
    except OSError:
        return _HELD, None  # (another user's, a link where the lock should be): never judged gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        no_locks = exc.errno in atomic.NO_LOCKS and not isinstance(exc, BlockingIOError)
        return (_LOCKLESS if no_locks else _HELD), None
    held = os.fstat(fd)
    if held.st_size == 0:  # created an instant ago, not yet locked by its builder
        os.close(fd)
        return _LOCKLESS, None
    try:
        now = os.lstat(lock)
    except OSError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
        os.close(fd)  # unlinked by its builder (done) or another clean-up while this one waited: not its lock
        return _HELD, None
    return _TAKEN, fd


def _lockless_stale(folder: Path) -> bool:
    """The rule for a folder without a usable lock: its pid runs nothing here, and it has been quiet long."""
    pid = atomic.recorded_pid(folder.name)
    # Our own pid on a folder we are not building: left by an earlier process that had this pid.
    if pid is None or (pid != os.getpid() and _alive(pid)):
        return False
    return _quiet(folder)


def _quiet(path: Path) -> bool:
    """Nothing in ``path`` was modified, or changed status (ctime: no copy can set it back), for
    :data:`LOCKLESS_QUIET_S`; False when it cannot all be looked at."""
    try:
        stamps = [_changed(path)]
        if path.is_dir():
            for here, dirs, files in os.walk(path, onerror=_raise):
                stamps += [_changed(Path(here, name)) for name in [*dirs, *files]]
    except OSError:
        return False
    return time.time() - max(stamps) > LOCKLESS_QUIET_S


def _changed(path: Path) -> float:
    st = os.lstat(path)
    return max(st.st_mtime, st.st_ctime)


def _raise(exc: OSError) -> None:
    raise exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove(folder: Path) -> bool:
    """Rename the folder to a trash name (atomic: exactly the folder judged, which no builder moves onto --out
    any more), then delete it."""
    trash = atomic.trash_name(folder)
    try:
        os.rename(folder, trash)  # (gone already: renamed onto --out by its builder, or another clean-up took it)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
