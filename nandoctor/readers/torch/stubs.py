"""The inert records the restricted unpickler builds instead of torch objects, and its errors.

A :class:`StorageRef` is a checked storage id, a :class:`TensorStub` a view of
one (what ``_rebuild_tensor*`` would have built, never the data), a
:class:`Placeholder` an unknown global that only records what it was given.
None of them runs anything; the ones torch never lets a pickle change refuse
``BUILD``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


class UnsafeGlobalError(Exception):
    """The pickle names a global that would run code when loaded; the file is refused."""

    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


class PickleFormatError(Exception):
    """The pickle is well-formed but is not the shape of a torch checkpoint (bad storage id, bad rebuild args)."""


class PickleTooLargeError(Exception):
    """A pickle tried to read past its size limit."""



class RefusesBuild:
    """BUILD (``obj.__dict__.update(state)``) would rewrite a stand-in's fields, frozen or not: a file could
    turn a float storage into an integer one that is never scanned. torch refuses BUILD on these too."""

    def __setstate__(self, state: Any) -> None:
        raise PickleFormatError(f"the pickle sets the state of a {type(self).__name__}; torch refuses that")


@dataclass(frozen=True)
class StorageType(RefusesBuild):
    name: str  # e.g. "FloatStorage"
    dtype: str  # safetensors dtype of one storage element

    @property
    def untyped(self) -> bool:
        return self.name == "UntypedStorage"


@dataclass(frozen=True)
class DTypeStub(RefusesBuild):
    torch_name: str
    dtype: str


@dataclass(frozen=True)
class StorageRef(RefusesBuild):
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
    quantizer: Any = field(default=None, compare=False)  # quantized.Quantizer of a _rebuild_qtensor

    def __setstate__(self, state: Any) -> None:
        # BUILD on a tensor. A dict is Python attributes (kept and walked). A tuple is torch's legacy
        # ``tensor.set_(storage, offset, size, stride)``: the tensor would now view other bytes than the
        # ones its rebuild named; nothing torch writes does that, so it is refused rather than followed.
        if not isinstance(state, dict):
            raise PickleFormatError("the pickle re-points a tensor at other storage bytes (BUILD with set_ "
                                    "arguments); torch.save never writes that, refused")
        object.__setattr__(self, "state", {**attributes(self.state), **attributes(state)})

    @property
    def view_key(self) -> tuple[Any, ...]:
        """Equal for two stubs that view the same elements the same way (a rebuild and its re-wrapping)."""
        return (self.storage.key, self.storage.view, self.storage_offset, self.size, self.stride, self.dtype)


def attributes(state: Any) -> dict[Any, Any]:
    """Recorded attributes as a plain dict: a dict's own items (never through methods a BUILD may have
    shadowed, as ``dict(x)`` and ``{**x}`` call ``x.keys()`` on a subclass), other state under "<state>"."""
    if state is None:
        return {}
    if isinstance(state, dict):
        return {key: value for key, value in dict.items(state)}
    return {"<state>": state}


def object_state(state: Any) -> dict[Any, Any]:
    """The attributes torch's ``_set_obj_state`` sets from a tensor's saved state: a dict, or a pair
    ``(dict, slots dict)``; anything else (torch's legacy 4- and 5-entry ``set_``/``data`` tuples among them)
    torch refuses, and so is it here, rather than charged to an invented tensor named after its positions."""
    if state is None:
        return {}
    if isinstance(state, dict):
        return attributes(state)
    if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
        return {**attributes(state[0]), **attributes(state[1])}
    raise PickleFormatError(
        f"a tensor's saved state is a {type(state).__name__}"
        f"{f' of {len(state)} entries' if isinstance(state, tuple) else ''}, not its attributes; torch refuses it"
    )


META_TENSOR_GLOBAL = "torch._utils._rebuild_meta_tensor_no_storage"  # a tensor of the meta device: no data saved


class Placeholder:
    """An inert stand-in for a global nandoctor does not know. Calling it only records the arguments."""

    global_name = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: list[Any]  # APPEND / APPENDS / ADDITEMS
    entries: list[tuple[Any, Any]]  # SETITEM / SETITEMS

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = []
        self.entries = []
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



def element_bytes(dtype: str) -> int:
    from nandoctor.dtypes import DTYPES

    return DTYPES[dtype].itemsize


