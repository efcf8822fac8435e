"""A restricted unpickler for PyTorch checkpoints: it builds inert records and never runs the file's code.

``pickle`` runs code by calling whatever globals a pickle names. Here
``find_class`` never imports anything: the few globals torch checkpoints need
map to local stand-ins (the tensor rebuild functions return a
:class:`TensorStub`, storage types a :class:`StorageType` …); globals that
would run code (``os.system``, ``builtins.eval``, ``subprocess`` …) refuse the
file, naming the global; every other global becomes an inert
:class:`Placeholder` that records what the pickle passed to it, is never
called for real, and is listed in the report. ``persistent_load`` accepts
only torch's storage ids. Every global ``torch.load(weights_only=True)`` would refuse is recorded
(weights_only.py), since the file is laxer here than there.

Nothing here imports torch.
"""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nandoctor.dtypes import TORCH_DTYPE_NAMES
from nandoctor.readers.pathstandins import path_standin
from nandoctor.readers.torch.prescan import MemoryBound, Prescan, prescan
from nandoctor.readers.torch.rebuilds import QUIET_GLOBALS, SAFE_GLOBALS, Registry, SafeFunction
from nandoctor.readers.torch.stubs import (
    STORAGE_DTYPES,
    DTypeStub,
    PickleFormatError,
    PickleTooLargeError,
    Placeholder,
    StorageRef,
    StorageType,
    TensorStub,
    UnsafeGlobalError,
)
from nandoctor.readers.torch.weights_only import refused_name

# Modules (and their submodules) whose globals run code, touch the system or load more pickles.
UNSAFE_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "_winapi", "pty", "sys",
    "commands", "popen2", "platform", "shutil", "tempfile", "glob", "pathlib", "io", "_io", "codecs",
    "importlib", "runpy", "pkgutil", "zipimport", "imp", "site", "code", "codeop", "compileall", "py_compile",
    "pickle", "_pickle", "cPickle", "pickletools", "shelve", "marshal", "dill", "cloudpickle", "joblib",
    "types", "ctypes", "_ctypes", "cffi", "gc", "inspect", "operator", "_operator",
    "socket", "ssl", "select", "selectors", "asyncio", "urllib", "urllib2", "http", "httplib", "ftplib",
    "smtplib", "telnetlib", "xmlrpc", "requests", "httpx", "aiohttp", "webbrowser",
    "multiprocessing", "concurrent", "threading", "_thread", "signal",
    "pdb", "bdb", "trace", "timeit", "cProfile", "profile", "doctest", "idlelib", "tkinter", "turtle",
    "distutils", "setuptools", "pip", "ensurepip", "venv", "sysconfig",
    "torch.jit", "torch.hub", "torch.package", "torch.serialization", "torch._C", "torch.ops",
    "torch.utils.cpp_extension", "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.load",
})
# Exact globals outside those modules that load or run something.
UNSAFE_GLOBALS = frozenset({
    "torch.load", "torch.storage._load_from_bytes", "numpy.load", "numpy.lib.npyio.load",
    "numpy.loadtxt", "numpy.fromfile", "numpy.memmap", "copyreg.add_extension",
})
# Torch rebuild functions whose tensor data is not a storage in the file (numpy copies for XLA/MPS
# tensors): such tensors cannot be read in place, so the file is reported as not fully read.
UNREAD_TENSOR_GLOBALS = frozenset({
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_xla_tensor",
    "torch._utils._rebuild_mlc_tensor",
})
# In-memory buffers: built from their own bytes, they touch no file and run nothing (torchtitan's TrainState saves
# its loss history as io.BytesIO values, which dcp.save pickles): placeholders, though their modules are refused.
INERT_IN_UNSAFE_MODULES = frozenset({"_io.BytesIO", "_io.StringIO", "io.BytesIO", "io.StringIO"})
BUILTIN_MODULES = ("builtins", "__builtin__", "__builtins__", "exceptions")
# Builtins that are plain value types: harmless, so they become placeholders like any unknown global.
# Every other builtin (eval, exec, getattr, open, __import__, type, …) refuses the file.
INERT_BUILTINS = frozenset({
    "object", "int", "float", "bool", "str", "bytes", "bytearray", "tuple", "list", "dict", "range",
    "unicode", "long", "NoneType", "Ellipsis", "NotImplemented",
})


@dataclass(frozen=True)
class LoadResult:
    value: Any
    placeholders: tuple[str, ...]  # unknown globals met, in order of first use
    built: tuple[TensorStub, ...] = ()  # every tensor the rebuild stand-ins returned, walked or not
    float_offsets: dict[bytes, int] = field(default_factory=dict)  # non-finite BINFLOATs → file offset
    refused: tuple[str, ...] = ()  # globals torch.load(weights_only=True) refuses, in order of first use


def _is_unsafe(module: str, name: str) -> bool:
    full = f"{module}.{name}"
    if module in BUILTIN_MODULES:
        return name not in INERT_BUILTINS
    if full in UNSAFE_GLOBALS:
        return True
    if full in INERT_IN_UNSAFE_MODULES:
        return False
    return any(module == m or module.startswith(m + ".") or full == m for m in UNSAFE_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are stand-ins and whose persistent ids are torch storages."""

    def __init__(
        self,
        file: Any,
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> None:
        # Python 2 pickles: decode their str as UTF-8, like torch; bad bytes become escapes, not errors.
        super().__init__(file, encoding="utf-8", errors="backslashreplace")
        self._persistent = persistent_load
        self.placeholders: dict[str, type[Placeholder]] = {}
        self.built = Registry()  # SafeFunction adds every tensor it returns
        self.refused: dict[str, None] = {}  # globals torch's weights-only unpickler refuses (an ordered set)

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleFormatError("a global's module and name must be strings")
        full = f"{module}.{name}"
        refused = refused_name(module, name)
        if refused is not None:
            self.refused[refused] = None
        if full in SAFE_GLOBALS:
            found = SAFE_GLOBALS[full]
            return SafeFunction(found, self.built, full) if isinstance(found, types.FunctionType) else found
        if module in ("torch", "torch.cuda", "torch.storage") and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPE_NAMES:
            return DTypeStub(name, TORCH_DTYPE_NAMES[name])
        path = path_standin(module, name)  # a Lightning hparam such as data_dir: its text, pathlib never called
        if path is not None:
            return SafeFunction(path, self.built)
        if _is_unsafe(module, name):
            raise UnsafeGlobalError(full)
        cls = self.placeholders.get(full)
        if cls is None:
            # A fresh class per global so NEWOBJ (which needs a type) works; it holds no behaviour of the file's.
            cls = type("Placeholder", (Placeholder,), {"global_name": full})
            self.placeholders[full] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise PickleFormatError("unexpected persistent id in a pickle that should have none")
        return self._persistent(pid)


def check_storage_id(pid: Any, *, legacy: bool) -> StorageRef:
    """Validate a persistent id and return it as a :class:`StorageRef`."""
    if not isinstance(pid, tuple) or not pid:
        raise PickleFormatError(f"persistent id must be a tuple, got {type(pid).__name__}")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise PickleFormatError(f"persistent id of kind {str(kind)[:40]!r}; only storages are accepted")
    if len(pid) != (6 if legacy else 5):
        raise PickleFormatError(f"storage id has {len(pid)} fields, expected {6 if legacy else 5}")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType):
        raise PickleFormatError("storage id does not name a torch storage type")
    if isinstance(key, int) and legacy:
        key = str(key)
    if isinstance(location, bytes):
        location = location.decode("ascii", "replace")
    if not isinstance(key, str) or not isinstance(location, str):
        raise PickleFormatError("storage key and location must be strings")
    if type(numel) is not int or numel < 0:
        raise PickleFormatError(f"storage {key!r}: element count must be a non-negative integer")
    view = None
    if legacy and pid[5] is not None:
        view_meta = pid[5]
        if (
            not isinstance(view_meta, tuple)
            or len(view_meta) != 3
            or not isinstance(view_meta[0], (str, int))
            or type(view_meta[1]) is not int
            or type(view_meta[2]) is not int
            or view_meta[1] < 0
            or view_meta[2] < 0
        ):
            raise PickleFormatError(f"storage {key!r}: malformed view metadata")
        view = (str(view_meta[0]), view_meta[1], view_meta[2])
    return StorageRef(key, storage_type, location, numel, view)


def restricted_load(
    file: Any, persistent_load: Callable[[Any], Any] | None = None, *, offset: int = 0
) -> LoadResult:
    """Unpickle one pickle from ``file`` (bytes, or a :class:`BoundedReader`) with stand-ins only.

    The opcodes are pre-scanned first (prescan.py): a hashing bomb is refused before anything is built.
    ``offset``: where bytes given as ``file`` start in their file (a reader's stream knows its own), so
    ``float_offsets`` are file offsets. Raises UnsafeGlobalError, PickleFormatError, PickleTooLargeError,
    or the pickle module's own errors for malformed bytes; callers turn them into nandoctor errors.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        scanned = _prescan(file, len(file))
        file = io.BytesIO(file)
    else:  # a stream's own positions are file offsets already
        start, offset = file.tell(), 0
        scanned = _prescan(file, 0)
        file.rewind(start)
    unpickler = RestrictedUnpickler(file, persistent_load)
    # Malformed opcodes stop pickletools and the unpickler at the same byte (one opcode table): the
    # unpickler's own error (truncated, too large …) is the one reported; were it to read on, the bytes the
    # pre-scan could not bound are refused all the same.
    value = unpickler.load()
    if isinstance(scanned, Exception):
        raise pickle.UnpicklingError(f"malformed opcodes: {scanned}")
    return LoadResult(
        value,
        tuple(n for n in unpickler.placeholders if n not in QUIET_GLOBALS),
        tuple(unpickler.built.tensors),
        {raw: offset + at for raw, at in scanned.float_offsets.items()},
        tuple(unpickler.refused),
    )


# What the load of a torch pickle may allocate (prescan.py's estimate): real state-dict pickles build ~10-30 bytes of
# objects per byte; a 9-byte pickle whose memo index is 2**28 made the unpickler allocate 4 GB.
MEMORY = MemoryBound(per_byte=64, floor=256 << 20)


def _prescan(stream: Any, size: int) -> Prescan | ValueError:
    """The pre-scan's result, or the ValueError pickletools raised for malformed opcodes."""
    try:
        return prescan(stream, size, MEMORY)
    except ValueError as exc:
        return exc


class BoundedReader:
    """A read-only file view that refuses to read more than ``limit`` bytes (pickles cannot balloon memory)."""

    def __init__(self, fh: Any, limit: int) -> None:
        self._fh = fh
        self._left = limit

    def tell(self) -> int:
        return int(self._fh.tell())

    @property
    def remaining(self) -> int:
        """Bytes it may still read (the pre-scan reads in blocks, never past the budget)."""
        return self._left

    def rewind(self, position: int) -> None:
        """Back to ``position`` (read before), the bytes since then given back to the budget."""
        self._left += self._fh.tell() - position
        self._fh.seek(position)

    def _take(self, n: int) -> int:
        if n < 0 or n > self._left:
            raise PickleTooLargeError("pickle is larger than the limit")
        self._left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(self._take(n))
        self._left += n - len(data)  # a short read at the end of the file costs only what it got
        return data

    def readline(self, limit: int = -1) -> bytes:
        line = self._fh.readline(self._left + 1)  # protocol 0 opcodes end in newlines
        self._take(len(line))
        return line
