"""A report file a user names (``--html FILE``) written without harming what the name points at; a file
nandoctor owns written without harming anything else.

- A name that does not exist yet, or a regular file, is written atomically: a temporary file created
  exclusively beside it (``O_CREAT | O_EXCL``, so a planted symlink at that name is never followed, and a
  random name no one can plant in advance), synced, then renamed over it. The new file gets the mode the
  user's umask gives (``0o666 & ~umask``, as a shell's ``>`` would), never ``mkstemp``'s 0600.
- A symlink is followed: its target is the file replaced (the link stays a link).
- ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` (links to this process's ``/proc/self/fd/N``) are written to
  descriptor N itself, as a shell's redirection to them does: ``--html /dev/stdout > page.html`` or ``>> log``
  adds to what the redirection opened, in order, instead of replacing or overwriting it.
- Anything else that exists (a FIFO, a character device such as ``/dev/stdout`` or ``/dev/null``, a
  socket) is opened and written as it is, never replaced by a regular file.

A file nandoctor owns (``owned=True``: a run's ``nandoctor-baseline.json``, the callbacks' ``nandoctor.json``)
lies in a folder the tool did not create and anyone may have put something at its name: it is always written
as above, temporary file and rename, and the rename replaces whatever is at the name (a link, not its
target; a FIFO, never opened; a directory is an OSError). Nothing but the new file is ever written.

On any failure the temporary file is removed and the ``OSError`` raised; the caller says what was not written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys

_TRIES = 16  # an O_EXCL name that exists is someone else's file: take another random one


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, a file name's undecodable bytes (Python's surrogate escapes, ``bad\udcff``) written as
    ``\xff``, the byte they stand for: valid UTF-8 that names the byte (an HTML report of such a name failed with
    "surrogates not allowed")."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        from nandoctor.wording import surrogate_shown

        return "".join(surrogate_shown(c) or c for c in text).encode("utf-8")


def write_text(path: str | os.PathLike[str], text: str, *, owned: bool = False) -> None:
    """Write ``text`` (UTF-8: :func:`utf8`) to ``path``: atomically for a regular or new file (through symlinks),
    directly for a FIFO or device; ``owned`` (a file nandoctor owns): atomically in place of whatever is at the
    name, never through it. Raises ``OSError``."""
    data = utf8(text)
    name = os.fspath(path)
    if owned:
        _replace(name, data)
        return
    own = _own_descriptor(name)
    if own is not None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # what was printed before stays before
        _write_all(own, data)
        return
    try:
        info = os.stat(name)  # follows symlinks: what a write would reach
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        _write_through(name, data)
        return
    final = os.path.realpath(name) if os.path.islink(name) else name
    if info is not None and final != name and not _same_file(final, info):
        # a link whose target has no name of its own (/proc/PID/fd/N of a deleted file): write through it
        _write_through(name, data)
        return
    _replace(final, data)


def _own_descriptor(name: str) -> int | None:
    """N when ``name`` leads, link by link, to this process's ``/proc/PID/fd/N``; else None."""
    fds = f"/proc/{os.getpid()}/fd"
    path = os.path.abspath(name)
    for _hop in range(40):  # the kernel's own limit on links followed
        head, tail = os.path.split(path)
        head = os.path.realpath(head)
        if head == fds and tail.isdigit():
            return int(tail)
        path = os.path.join(head, tail)
        if not os.path.islink(path):
            return None
        path = os.path.join(head, os.readlink(path))  # an absolute target replaces head
    return None


def _same_file(path: str, info: os.stat_result) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino)


def _write_through(path: str, data: bytes) -> None:
    """Open an existing non-regular file for writing (a FIFO waits for its reader, as ``>`` does) and write."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _replace(final: str, data: bytes) -> None:
    """A new file beside ``final``, written and synced, renamed onto it; removed again on any failure."""
    directory, base = os.path.split(final)
    fd, tmp = _create_exclusive(directory, base)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_exclusive(directory: str, base: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(_TRIES):
        tmp = os.path.join(directory, f".{base}.nandoctor-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp  # the kernel applies the umask
        except FileExistsError:
            if attempt == _TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
