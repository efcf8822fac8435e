"""An output folder that appears whole or not at all.

The repair is built in ``<parent>/.<name>.nandoctor-tmp-<pid>-<random>`` and
renamed onto ``--out`` (which must not exist) only once it is written, synced
and verified. A build that dies (SIGKILL, power loss) leaves only such a
temporary folder; :func:`clean_stale` removes those whose process is gone, at
the start of the next repair into the same parent folder.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from nandoctor.errors import OutputExistsError

_TEMP = re.compile(r"^\..+\.nandoctor-tmp-(\d+)-[0-9a-f]{8}$")
_ACTIVE: set[str] = set()  # temp folders this process is building right now (API used from threads)
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def temp_name(out: Path) -> Path:
    return out.parent / f".{out.name}.nandoctor-tmp-{os.getpid()}-{secrets.token_hex(4)}"


def make_temp(out: Path) -> Path:
    for _ in range(8):
        candidate = temp_name(out)
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        _ACTIVE.add(str(candidate))
        return candidate
    raise OutputExistsError(str(out.parent), "could not create a temporary folder for the repair")


def forget(temp: Path) -> None:
    _ACTIVE.discard(str(temp))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def is_temp(name: str) -> bool:
    return _TEMP.match(name) is not None


def clean_stale(parent: Path) -> list[Path]:
    """Remove temporary repair folders in ``parent`` left by processes that no longer run."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or entry.path in _ACTIVE:
            continue
        pid = int(match.group(1))
        # Our own pid with a folder we are not building: left by an earlier process that had this pid.
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


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
