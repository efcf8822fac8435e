"""What the file system lets nandoctor see of a user's path, its refusals turned into errors that say what to do.

``Path.exists()``, ``is_dir()`` and ``iterdir()`` raise ``PermissionError`` (and other ``OSError``\\ s)
for a path below a folder the user may not search, or a folder they may not list: a traceback, or
worse a "no such file" for a file that is there. Every probe of a user's path goes through here:
absent is ``False``/``None`` (as pathlib says it), and anything the file system refuses to say is an
:class:`UnreadablePathError` naming the path, with a hint (check the permissions, or run as a user who
can read it). Callers decide whether that stops a command (exit 3) or is one checkpoint's problem
(a run's row, a subfolder of a checkpoint).

Also the one description of a path that is not a regular file (:func:`not_regular`): a broken
symlink names what it points to (a Hugging Face cache blob that is gone), a FIFO or device says so.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nandoctor.errors import UnreadablePathError
from nandoctor.wording import path_word, shell_word

# What pathlib's exists()/is_dir() read as "not there" (its _IGNORED_ERRNOS): everything else is a refusal.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


def unreadable(path: str | os.PathLike[str], exc: OSError) -> UnreadablePathError:
    """``exc`` (an ``OSError`` met while looking at ``path``) as an error naming the path and what to do."""
    where = str(path)
    quoted = path_word(where)
    try:
        through = f" (it is a link to {os.readlink(where)})"  # what is denied lies where the link leads
    except (OSError, ValueError):
        through = ""
    if exc.errno in _DENIED:
        return UnreadablePathError(
            where, "permission denied" + through,
            f"check its permissions and those of the folders above it (ls -ld {quoted}), or run nandoctor "
            "as a user who can read it",
        )
    return UnreadablePathError(
        where, f"cannot be read ({exc.strerror or exc}){through}",
        "check the path and the disk it is on (a network mount that went away, a failing disk), then run the command again",
    )


@contextmanager
def reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """Any ``OSError`` inside the block becomes :func:`unreadable` of the path it names (else of ``path``)."""
    try:
        yield
    except OSError as exc:
        named = exc.filename if isinstance(exc.filename, (str, os.PathLike)) and str(exc.filename) else path
        raise unreadable(named, exc) from None


def status(path: str | os.PathLike[str], *, follow: bool = True) -> os.stat_result | None:
    """``os.stat`` of ``path`` (``follow=False``: of a link itself); None when it does not exist."""
    try:
        return os.stat(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise unreadable(path, exc) from None
    except ValueError:  # a NUL byte in the name: no such file
        return None


def unusable_name(name: str) -> str | None:
    """Why a file name read from inside a checkpoint (an index's shard, config.json's ``transformers_weights``, a
    DCP storage file) cannot name a file — a NUL byte, or a part over 255 bytes: os calls raise on them rather
    than say "missing" — else None."""
    if "\0" in name:
        return "it holds a NUL byte"
    try:
        encoded = os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") no file name on this system can hold
        return "it holds characters no file name can"
    if len(encoded) > _PATH_MAX or any(len(part) > 255 for part in encoded.split(b"/")):
        return "it is longer than a file name can be"
    return None


_PATH_MAX = 4096


def named_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as spelled when it names itself, its folder and that folder's folder (what a run's checkpoint is
    placed by: ``run/checkpoint-40/model.safetensors``); else its absolute form. ``.``, a bare file name,
    ``../checkpoint-40`` or ``sub/..`` spell a folder whose name is ``''`` or ``..``: read by name, a checkpoint
    scanned from inside its folder lost its run (a checkpoint the run calls diverged passed alone) and a
    suggested ``--out`` was ``./-repaired``."""
    spelled = Path(path)
    if spelled.is_absolute() or (len(Path(os.path.normpath(spelled)).parts) >= 3 and ".." not in spelled.parts):
        return spelled
    return Path(os.path.abspath(spelled))


def as_spelled(path: Path, like: str | os.PathLike[str]) -> Path:
    """``path`` (absolute, made from :func:`named_path`) relative to the working folder when ``like`` (what the
    user typed) was relative: a suggestion reads as the user spelled the checkpoint."""
    if Path(like).is_absolute() or not path.is_absolute():
        return path
    return Path(os.path.relpath(path))


def exists(path: str | os.PathLike[str]) -> bool:
    return status(path) is not None


def is_dir(path: str | os.PathLike[str], *, refused: bool | None = None) -> bool:
    """Whether ``path`` is a folder. ``refused``: the answer where the file system will not say (a link into a
    folder the user may not search), for a caller that lets the path's own scan report it; else that raises."""
    return _is_kind(path, stat.S_ISDIR, refused)


def is_file(path: str | os.PathLike[str], *, refused: bool | None = None) -> bool:
    """Whether ``path`` is a regular file; ``refused`` as for :func:`is_dir`."""
    return _is_kind(path, stat.S_ISREG, refused)


def _is_kind(path: str | os.PathLike[str], kind: Callable[[int], bool], refused: bool | None) -> bool:
    try:
        found = status(path)
    except UnreadablePathError:
        if refused is None:
            raise
        return refused
    return found is not None and kind(found.st_mode)


def is_link(path: str | os.PathLike[str]) -> bool:
    found = status(path, follow=False)
    return found is not None and stat.S_ISLNK(found.st_mode)


def broken_link(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(reason, hint) when ``path`` is a symlink that leads nowhere (its target gone, a loop); None otherwise."""
    if exists(path) or not is_link(path):
        return None
    return not_regular(path)


def listing(folder: str | os.PathLike[str]) -> list[Path]:
    """The entries of ``folder``, sorted; :class:`UnreadablePathError` when it may not be listed, or when
    its entries may not be looked at (a folder readable but not searchable: ``chmod a-x``)."""
    root = Path(folder)
    try:
        names = os.listdir(root)
        os.stat(os.path.join(root, "."))  # needs search permission on the folder, as every entry's stat does
    except OSError as exc:
        raise unreadable(root, exc) from None
    return sorted(root / name for name in names)


def not_regular(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(reason, hint) for a weight file that is not a regular file: a broken symlink (naming its target),
    a symlink loop, a FIFO, a device or a folder."""
    path = Path(path)
    try:
        target = os.readlink(path)
    except OSError:
        target = None
    if target is not None:
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "a symlink loop; refused", "replace the link with the file it should point to"
            if exc.errno not in _ABSENT:
                raise unreadable(path, exc) from None
            return _broken_link(path, target)
    found = status(path)
    if found is None:
        return "no such file", "check the path"
    kind = ("a folder" if stat.S_ISDIR(found.st_mode) else "a FIFO" if stat.S_ISFIFO(found.st_mode)
            else "a device" if stat.S_ISCHR(found.st_mode) or stat.S_ISBLK(found.st_mode)
            else "a socket" if stat.S_ISSOCK(found.st_mode) else "not a regular file")
    return (f"{kind}, not a regular file; refused (reading it could hang)",
            "point nandoctor at the weight files themselves")


def _broken_link(path: Path, target: str) -> tuple[str, str]:
    resolved = path.parent / target
    reason = f"a broken symlink: it points to {target}, which does not exist"
    repo = next((p.name for p in path.parents if p.name.startswith("models--")), None)
    if resolved.parent.name == "blobs" and repo is not None:  # a Hugging Face cache snapshot whose blob is gone
        repo_id = repo.removeprefix("models--").replace("--", "/")  # the cache's models--org--name
        return reason, ("the Hugging Face cache lost this blob (an interrupted download, or a cache clean-up): "
                        f"download the model again: huggingface-cli download {shell_word(repo_id)} --force-download")
    return reason, "restore the file it points to (or copy the weights in place of the link), then scan again"


__all__ = ["exists", "is_dir", "is_file", "is_link", "listing", "not_regular", "reading", "status", "unreadable"]
