"""``pathlib`` paths in a pickle, read as the plain text of the path: shared by the restricted unpicklers.

A pickled ``pathlib.Path`` is a call of its class on the path's parts (``PosixPath('/', 'data')``).
Lightning saves ``save_hyperparameters()``'s arguments in every ``.ckpt`` (a ``data_dir: Path`` is
common), and torch.distributed.checkpoint's metadata records where it was saved as one. Both readers
answer these globals with :func:`path_standin`: a function that joins the parts as text with
``posixpath``/``ntpath`` (pure string functions) and returns a ``str``. pathlib's own classes are never
called, and nothing else of ``pathlib`` is allowed (``pathlib.Path.write_text`` is no path class).
"""

from __future__ import annotations

import ntpath
import pickle
import posixpath
from collections.abc import Callable

PATH_MODULES = ("pathlib", "pathlib._local")  # (Python 3.13 pickles name pathlib._local)
_WINDOWS = ("WindowsPath", "PureWindowsPath")
PATH_CLASSES = ("Path", "PurePath", "PosixPath", "PurePosixPath", *_WINDOWS)


def _joined(join: Callable[..., str]) -> Callable[..., str]:
    def path(*parts: object) -> str:
        if not all(isinstance(p, str) for p in parts):
            raise pickle.UnpicklingError("a pathlib path made of something other than strings")
        return join(*parts) if parts else ""

    return path


_POSIX, _NT = _joined(posixpath.join), _joined(ntpath.join)
_POSIX.__name__ = _NT.__name__ = "pathlib path"


def path_standin(module: str, name: str) -> Callable[..., str] | None:
    """The stand-in for the global ``module.name`` when it is one of pathlib's path classes, else None."""
    if module not in PATH_MODULES or name not in PATH_CLASSES:
        return None
    return _NT if name in _WINDOWS else _POSIX


__all__ = ["PATH_CLASSES", "PATH_MODULES", "path_standin"]
