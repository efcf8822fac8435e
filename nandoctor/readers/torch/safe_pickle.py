"""A restricted unpickler for PyTorch checkpoints: it builds inert records and never runs the file's code.

``pickle`` runs code by calling whatever globals a pickle names. Here
``find_class`` never imports anything: the few globals torch checkpoints need
map to local stand-ins (the tensor rebuild functions return a
:class:`TensorStub`, storage types a :class:`StorageType` …); globals that
would run code (``os.system``, ``builtins.eval``, ``subprocess`` …) refuse the
file, naming the global; every other global becomes an inert
:class:`Placeholder` that records what the pickle passed to it, is never
called for real, and is listed in the report. ``persistent_load`` accepts
only torch's storage ids.

Nothing here imports torch.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nandoctor.dtypes import TORCH_DTYPE_NAMES

# Torch's typed storage classes → safetensors dtype names (element layout of the storage).
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    # Quantized storages hold integers: they cannot hold NaN/Inf.
    "QInt8Storage": "I8",
    "QUInt8Storage": "U8",
    "QInt32Storage": "I32",
    "QUInt4x2Storage": "U8",
    "QUInt2x4Storage": "U8",
    "UntypedStorage": "U8",  # raw bytes; the tensor's dtype comes from _rebuild_tensor_v3
}

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
BUILTIN_MODULES = ("builtins", "__builtin__", "__builtins__", "exceptions")
# Builtins that are plain value types: harmless, so they become placeholders like any unknown global.
# Every other builtin (eval, exec, getattr, open, __import__, type, …) refuses the file.
INERT_BUILTINS = frozenset({
    "object", "int", "float", "bool", "str", "bytes", "bytearray", "tuple", "list", "dict", "range",
    "unicode", "long", "NoneType", "Ellipsis", "NotImplemented",
})


class UnsafeGlobalError(Exception):
    """The pickle names a global that would run code when loaded; the file is refused."""

    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


class PickleFormatError(Exception):
    """The pickle is well-formed but is not the shape of a torch checkpoint (bad storage id, bad rebuild args)."""


class PickleTooLargeError(Exception):
    """A pickle tried to read past its size limit."""


class _RefusesBuild:
    """BUILD (``obj.__dict__.update(state)``) would rewrite a stand-in's fields, frozen or not: a file could
    turn a float storage into an integer one that is never scanned. torch refuses BUILD on these too."""

    def __setstate__(self, state: Any) -> None:
        raise PickleFormatError(f"the pickle sets the state of a {type(self).__name__}; torch refuses that")


@dataclass(frozen=True)
class StorageType(_RefusesBuild):
    name: str  # e.g. "FloatStorage"
    dtype: str  # safetensors dtype of one storage element

    @property
    def untyped(self) -> bool:
        return self.name == "UntypedStorage"


@dataclass(frozen=True)
class DTypeStub(_RefusesBuild):
    torch_name: str
    dtype: str


@dataclass(frozen=True)
class StorageRef(_RefusesBuild):
    """A persistent id ``('storage', type, key, location, numel[, view_metadata])``, checked."""

    key: str
    storage_type: StorageType
    location: str
    numel: int  # elements of storage_type (bytes for UntypedStorage)
    view: tuple[str, int, int] | None = None  # legacy: (view key, offset, size) in elements

    @property
    def nbytes(self) -> int:
        return self.numel * element_bytes(self.storage_type.dtype)


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, like torch tensors (two equal stubs as
class TensorStub:                   # dict keys must stay two entries, or one of them vanishes)
    """What ``_rebuild_tensor*`` would have built: a view of a storage, never the data."""

    storage: StorageRef
    storage_offset: int  # elements of ``dtype``
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str  # safetensors dtype name
    torch_dtype: str
    parameter: bool = False
    # Python attributes torch would set on the tensor (BUILD, _rebuild_parameter_with_state,
    # _rebuild_from_type_v2): they may hold tensors too, so the name walker visits them.
    state: Any = field(default=None, compare=False)

    def __setstate__(self, state: Any) -> None:
        # BUILD on a tensor. A dict is Python attributes (kept and walked). A tuple is torch's legacy
        # ``tensor.set_(storage, offset, size, stride)``: the tensor would now view other bytes than the
        # ones its rebuild named; nothing torch writes does that, so it is refused rather than followed.
        if not isinstance(state, dict):
            raise PickleFormatError("the pickle re-points a tensor at other storage bytes (BUILD with set_ "
                                    "arguments); torch.save never writes that, refused")
        object.__setattr__(self, "state", {**attributes(self.state), **attributes(state)})


def attributes(state: Any) -> dict[Any, Any]:
    """Recorded attributes as a plain dict: a dict's own items (never through methods a BUILD may have
    shadowed, as ``dict(x)`` and ``{**x}`` call ``x.keys()`` on a subclass), other state under "<state>"."""
    if state is None:
        return {}
    if isinstance(state, dict):
        return {key: value for key, value in dict.items(state)}
    return {"<state>": state}


class Placeholder:
    """An inert stand-in for a global nandoctor does not know. Calling it only records the arguments."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list[Any] = []  # APPEND / APPENDS / ADDITEMS
        self.entries: list[tuple[Any, Any]] = []  # SETITEM / SETITEMS
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # everything was recorded in __new__ (NEWOBJ calls only __new__)

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S)
        self.entries.append((key, value))

    def append(self, item: Any) -> None:  # APPEND(S)
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def add(self, item: Any) -> None:  # ADDITEMS
        self.items.append(item)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        # An instance used as a callable (e.g. a reconstructed factory): record, still inert.
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<placeholder {self.global_name}>"

    def __reduce__(self) -> Any:  # never pickled back out by accident
        raise TypeError("placeholders cannot be pickled")


@dataclass(frozen=True)
class LoadResult:
    value: Any
    placeholders: tuple[str, ...]  # unknown globals met, in order of first use


def element_bytes(dtype: str) -> int:
    from nandoctor.dtypes import DTYPES

    return DTYPES[dtype].itemsize


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise PickleFormatError(f"{what} must be a tuple of integers, got {type(value).__name__}")
    return tuple(value)


def _make_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: DTypeStub | None) -> TensorStub:
    if not isinstance(storage, StorageRef):
        raise PickleFormatError(f"a tensor's storage must be a storage id, got {type(storage).__name__}")
    if type(storage_offset) is not int:
        raise PickleFormatError("a tensor's storage offset must be an integer")
    size_t, stride_t = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if len(size_t) != len(stride_t):
        raise PickleFormatError(f"tensor size {size_t} and stride {stride_t} differ in length")
    if dtype is None:  # v1/v2: the storage's element type is the tensor's dtype
        if storage.storage_type.untyped:
            torch_name, name = "uint8", "U8"
        else:
            torch_name, name = storage.storage_type.name, storage.storage_type.dtype
    else:
        torch_name, name = dtype.torch_name, dtype.dtype
    return TensorStub(storage, storage_offset, size_t, stride_t, name, torch_name)


def _check_tensor_args(requires_grad: Any, metadata: Any) -> None:
    # torch sets these on the tensor it rebuilds and refuses the file when their types are wrong
    # (backward_hooks it stores whatever they are).
    if type(requires_grad) is not bool:
        raise PickleFormatError(f"a tensor's requires_grad must be True or False, got {type(requires_grad).__name__}")
    if metadata and not isinstance(metadata, dict):
        raise PickleFormatError(f"a tensor's metadata must be a dict, got {type(metadata).__name__}")


def _check_grad_dtype(tensor: TensorStub, requires_grad: Any) -> TensorStub:
    # "Only Tensors of floating point and complex dtype can require gradients": torch refuses the file.
    floating = tensor.dtype[0] in "FC" or tensor.dtype == "BF16" or tensor.torch_dtype.startswith("float")
    if requires_grad is True and not floating:
        raise PickleFormatError(
            f"a tensor of dtype {tensor.dtype} cannot require gradients (only floating point ones can)"
        )
    return tensor


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> TensorStub:
    return _make_tensor(storage, storage_offset, size, stride, None)


# The same parameters as torch's own functions: a call with too few or too many arguments is refused
# (a TypeError, worded as an invalid pickle), as torch refuses it.
def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> TensorStub:
    _check_tensor_args(requires_grad, metadata)
    return _with_hooks(_check_grad_dtype(_make_tensor(storage, storage_offset, size, stride, None), requires_grad),
                       backward_hooks)


def _with_hooks(stub: TensorStub, backward_hooks: Any) -> TensorStub:
    """torch keeps ``backward_hooks`` on the tensor (``t._backward_hooks``): walked like its attributes."""
    if not backward_hooks:
        return stub
    return dataclasses.replace(stub, state={**attributes(stub.state), "_backward_hooks": backward_hooks})


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    dtype: Any, metadata: Any = None,
) -> TensorStub:
    if not isinstance(dtype, DTypeStub):
        raise PickleFormatError("_rebuild_tensor_v3 needs a torch dtype as its 7th argument")
    _check_tensor_args(requires_grad, metadata)
    return _with_hooks(_check_grad_dtype(_make_tensor(storage, storage_offset, size, stride, dtype), requires_grad),
                       backward_hooks)


def _rebuild_parameter(data: Any, requires_grad: Any = False, *rest: Any) -> Any:
    # (data, requires_grad, backward_hooks[, state]): hooks and state (attributes) stay on the parameter.
    if isinstance(data, TensorStub):
        extra = attributes(data.state)
        if rest and rest[0]:
            extra["_backward_hooks"] = rest[0]
        if len(rest) > 1:
            extra.update(attributes(rest[1]))
        return dataclasses.replace(_check_grad_dtype(data, requires_grad), parameter=True, state=extra or None)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    # torch calls func(*args) and then sets the Python type (ignored here). func must be one of our
    # rebuild stand-ins or a placeholder (which only records its arguments): nothing else is called.
    rebuilds = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)
    is_placeholder = isinstance(func, type) and issubclass(func, Placeholder)
    if (getattr(func, "function", None) in rebuilds or is_placeholder) and isinstance(args, tuple):
        built = func(*args)
        if isinstance(built, TensorStub) and state:  # a subclass's attributes: walked like the tensor's own
            built = dataclasses.replace(built, state=state)
        elif isinstance(built, Placeholder) and state:  # a wrapper subclass (DTensor): its _local_tensor
            built.__setstate__(state)
        return built
    raise PickleFormatError("_rebuild_from_type_v2 called with a function that is not a tensor rebuild")


def _legacy_tensor(*args: Any) -> Any:
    """``torch.Tensor(storage)``: torch's legacy constructor views the whole storage as float32. Called
    otherwise (or named as a type, as _rebuild_from_type_v2 does), it is an inert placeholder."""
    if len(args) == 1 and isinstance(args[0], StorageRef):
        storage = args[0]
        if not storage.storage_type.untyped and storage.storage_type.dtype != "F32":
            raise PickleFormatError(f"torch.Tensor() of a {storage.storage_type.name}: torch refuses it")
        numel = storage.nbytes // 4
        return TensorStub(storage, 0, (numel,), (1,), "F32", "float32")
    return _TensorType(*args)


class _TensorType(Placeholder):
    global_name = "torch.Tensor"


def _rebuild_device_tensor_from_cpu_tensor(data: Any, dtype: Any = None, *_: Any) -> Any:
    # torch: data.to(dtype=dtype, device=device). The same dtype is the same bytes; a cast (float32 to
    # float16 turns 1e10 into inf) would have to be computed to be checked: refused, never guessed.
    if isinstance(data, TensorStub) and isinstance(dtype, DTypeStub) and dtype.dtype != data.dtype:
        raise PickleFormatError(
            f"a tensor is cast from {data.dtype} to {dtype.torch_name} when loaded; the cast's result "
            "is not in the file, so it cannot be checked"
        )
    return data


def _get_layout(name: Any = None) -> str:
    # torch.serialization._get_layout("torch.strided") returns a layout object (DTensor pickles use it);
    # here the name is all that matters, and nothing is looked up.
    return f"layout {name}" if isinstance(name, str) else "layout"


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _ints(args[0] if args else (), "torch.Size")


def _torch_device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); no other codec is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise PickleFormatError("_codecs.encode is only accepted for text with latin1/utf-8/ascii")
    return text.encode(encoding, "strict")


def _parameter(data: Any = None, requires_grad: Any = True, *_: Any) -> Any:
    return _rebuild_parameter(data)


# Globals with a meaning here → their stand-in. Everything returned is inert.
SAFE_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.Size": _torch_size,
    "torch.serialization._get_layout": _get_layout,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
    "torch.Tensor": _legacy_tensor,
    "torch._tensor.Tensor": _legacy_tensor,
    "torch.device": _torch_device,
    "_codecs.encode": _codecs_encode,
}
for _module in ("builtins", "__builtin__"):
    SAFE_GLOBALS.update({f"{_module}.set": set, f"{_module}.frozenset": frozenset, f"{_module}.complex": complex})
# Globals that tensor pickles name only as markers (the Python type of a rebuilt tensor): placeholders,
# but not worth listing in the report.
QUIET_GLOBALS = frozenset({"torch.nn.parameter.Buffer"})


def _is_unsafe(module: str, name: str) -> bool:
    full = f"{module}.{name}"
    if module in BUILTIN_MODULES:
        return name not in INERT_BUILTINS
    if full in UNSAFE_GLOBALS:
        return True
    return any(module == m or module.startswith(m + ".") or full == m for m in UNSAFE_MODULES)


class SafeFunction:
    """A safe global's function as the pickle sees it: callable, with no attributes a BUILD could set
    (on the module's own function object that would outlive this load)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise PickleFormatError(f"the pickle sets the state of {self.function.__name__}; torch refuses that")


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

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleFormatError("a global's module and name must be strings")
        full = f"{module}.{name}"
        if full in SAFE_GLOBALS:
            found = SAFE_GLOBALS[full]
            return SafeFunction(found) if isinstance(found, types.FunctionType) else found
        if module in ("torch", "torch.cuda", "torch.storage") and name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPE_NAMES:
            return DTypeStub(name, TORCH_DTYPE_NAMES[name])
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


def restricted_load(file: Any, persistent_load: Callable[[Any], Any] | None = None) -> LoadResult:
    """Unpickle one pickle from ``file`` (a binary file object or bytes) with stand-ins only.

    Raises UnsafeGlobalError, PickleFormatError, PickleTooLargeError, or the
    pickle module's own errors for malformed bytes; callers turn them into
    nandoctor errors naming the file.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(file)
    unpickler = RestrictedUnpickler(file, persistent_load)
    value = unpickler.load()
    return LoadResult(value, tuple(n for n in unpickler.placeholders if n not in QUIET_GLOBALS))


class BoundedReader:
    """A read-only file view that refuses to read more than ``limit`` bytes (pickles cannot balloon memory)."""

    def __init__(self, fh: Any, limit: int) -> None:
        self._fh = fh
        self._left = limit

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
