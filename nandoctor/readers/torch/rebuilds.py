"""Stand-ins for the globals a torch checkpoint's pickle may call, and the wrapper that registers what they build.

Each function has torch's own parameters (a call with the wrong number or
types of arguments is refused, as torch refuses it) and returns an inert
record from stubs.py. :class:`SafeFunction` hands them to the pickle and
registers every :class:`TensorStub` they return, so the reader scans every
tensor the pickle builds, whether or not the name walker reaches it.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from nandoctor.readers.torch.quantized import QScheme, check_quantizer
from nandoctor.readers.torch.stubs import (
    DTypeStub,
    PickleFormatError,
    Placeholder,
    StorageRef,
    TensorStub,
    attributes,
    element_bytes,
    object_state,
)

MAX_TENSORS = 1_000_000  # tensors one pickle may build (a real checkpoint: thousands)
MAX_VIEWS_PER_STORAGE = 10_000  # see refs.py: refused here too, as they are built, before minutes are spent


class Registry:
    """Every tensor one load's rebuild stand-ins returned, counted as they come (total and per storage)."""

    __slots__ = ("per_storage", "tensors")

    def __init__(self) -> None:
        self.tensors: list[TensorStub] = []
        self.per_storage: collections.Counter[str] = collections.Counter()

    def add(self, stub: TensorStub) -> None:
        if len(self.tensors) >= MAX_TENSORS:
            raise PickleFormatError(f"the pickle builds more than {MAX_TENSORS:,} tensors; refused")
        self.per_storage[stub.storage.key] += 1
        if self.per_storage[stub.storage.key] > MAX_VIEWS_PER_STORAGE:
            raise PickleFormatError(
                f"the pickle builds more than {MAX_VIEWS_PER_STORAGE:,} views of storage {stub.storage.key!r} (a "
                "checkpoint has a few per storage): refused rather than spent minutes on, view by view"
            )
        self.tensors.append(stub)


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


# The same parameters as torch's own functions, none added, none with a default torch's lacks: a call with too
# few or too many arguments is refused (a TypeError, worded as an invalid pickle), as torch refuses it.
def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorStub:
    return _make_tensor(storage, storage_offset, size, stride, None)


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


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    return _as_parameter(data, requires_grad, backward_hooks)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    return _as_parameter(data, requires_grad, backward_hooks, state)


def _as_parameter(data: Any, requires_grad: Any, backward_hooks: Any = None, state: Any = None) -> Any:
    """The tensor as a parameter: its backward hooks and state (attributes) stay on it, walked like its own."""
    if isinstance(data, TensorStub):
        extra = attributes(data.state)
        if backward_hooks:
            extra["_backward_hooks"] = backward_hooks
        if state is not None:
            extra.update(object_state(state))
        return dataclasses.replace(_check_grad_dtype(data, requires_grad), parameter=True, state=extra or None)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # torch calls func(*args) and then sets the Python type (ignored here). func must be one of our
    # rebuild stand-ins or a placeholder (which only records its arguments): nothing else is called.
    rebuilds = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                _rebuild_parameter_with_state, _rebuild_qtensor)
    is_placeholder = isinstance(func, type) and issubclass(func, Placeholder)
    if (getattr(func, "function", None) in rebuilds or is_placeholder) and isinstance(args, tuple):
        built = func(*args)
        if isinstance(built, TensorStub) and state:
            # a subclass's attributes join the tensor's own (its backward hooks): both are walked
            built = dataclasses.replace(built, state={**attributes(built.state), **object_state(state)})
        elif isinstance(built, Placeholder) and state:  # a wrapper subclass (DTensor): its _local_tensor
            built.__setstate__(state)
        return built
    raise PickleFormatError("_rebuild_from_type_v2 called with a function that is not a tensor rebuild")


# torch's legacy tensor classes (torch.FloatTensor …, and torch.Tensor itself: float32) and their element types.
TENSOR_CLASSES: dict[str, str] = {
    "Tensor": "F32", "FloatTensor": "F32", "DoubleTensor": "F64", "HalfTensor": "F16", "BFloat16Tensor": "BF16",
    "ByteTensor": "U8", "CharTensor": "I8", "ShortTensor": "I16", "IntTensor": "I32", "LongTensor": "I64",
    "BoolTensor": "BOOL",
}


def _tensor_class(class_name: str) -> Callable[..., Any]:
    """``torch.<class_name>(...)`` as torch's weights-only loader runs it: of one storage of its element type,
    a view of the whole storage; with no arguments, an empty tensor. Any other call (a list of values written
    inline in the pickle, or sizes, which give uninitialised memory) builds a tensor whose values are not a
    storage of the file: refused, never left as an inert placeholder that hides them."""
    dtype = TENSOR_CLASSES[class_name]

    def build(*args: Any) -> Any:
        if not args:
            return _TensorType()
        if len(args) == 1 and isinstance(args[0], StorageRef):
            storage = args[0]
            if not storage.storage_type.untyped and storage.storage_type.dtype != dtype:
                raise PickleFormatError(f"torch.{class_name}() of a {storage.storage_type.name}: torch refuses it")
            itemsize = element_bytes(dtype)
            return TensorStub(storage, 0, (storage.nbytes // itemsize,), (1,), dtype, class_name)
        raise PickleFormatError(
            f"torch.{class_name}() is called with {_described(args)}: tensor values written into the pickle "
            "itself (or uninitialised memory), not a storage of the file; nandoctor does not read those"
        )

    build.__name__ = f"torch.{class_name}"
    return build


def _described(args: tuple[Any, ...]) -> str:
    kinds = sorted({type(a).__name__ for a in args})
    return f"{len(args)} argument(s) of type {', '.join(kinds)}"


class _TensorType(Placeholder):
    global_name = "torch.Tensor"


def _rebuild_device_tensor_from_cpu_tensor(data: Any, dtype: Any, device: Any, requires_grad: Any) -> Any:
    # torch: data.to(dtype=dtype, device=device). The same dtype is the same bytes; a cast (float32 to
    # float16 turns 1e10 into inf) would have to be computed to be checked: refused, never guessed.
    if isinstance(data, TensorStub) and isinstance(dtype, DTypeStub) and dtype.dtype != data.dtype:
        raise PickleFormatError(
            f"a tensor is cast from {data.dtype} to {dtype.torch_name} when loaded; the cast's result "
            "is not in the file, so it cannot be checked"
        )
    return data


QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
            "per_channel_affine_float_qparams")


def _qscheme(name: str) -> QScheme:
    return QScheme(name)


def _rebuild_qtensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, quantizer_params: Any, requires_grad: Any,
    backward_hooks: Any,
) -> TensorStub:
    """A quantized tensor: integers in the storage, and its real values ``(q - zero_point) * scale``. A
    per-tensor scale or zero point lives in the pickle, not the storage: checked here (see quantized.py);
    per-channel ones are tensors of their own, registered and scanned like any other."""
    stub = _with_hooks(_make_tensor(storage, storage_offset, size, stride, None), backward_hooks)
    return dataclasses.replace(stub, quantizer=check_quantizer(quantizer_params, stub))


# torch's layouts by name (str(torch.strided) …): torch.serialization._get_layout looks the name up among them
LAYOUTS = frozenset({"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr",
                     "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"})


def _get_layout(name: Any) -> str:
    # torch.serialization._get_layout("torch.strided") returns a layout object (DTensor pickles use it); here the
    # name is all that matters, and nothing is looked up. Another name: torch raises KeyError.
    if name not in LAYOUTS:
        raise PickleFormatError(f"the pickle asks for the layout {str(name)[:40]!r}, which torch does not have")
    return f"layout {name}"


def _torch_size(sizes: Any = ()) -> tuple[int, ...]:
    # torch.Size takes any sequence of ints (a bool counts as one, as in Python)
    if not isinstance(sizes, (tuple, list)) or not all(type(v) in (int, bool) for v in sizes):
        raise PickleFormatError(f"torch.Size of {type(sizes).__name__} {str(sizes)[:40]}: torch refuses it")
    return tuple(int(v) for v in sizes)


def _torch_device(kind: Any, index: Any = None) -> str:
    # torch.device("cuda", 0), ("cpu"), ("cuda:1"); an index that is no int, a bool or negative: torch raises
    if not isinstance(kind, str) or (index is not None and (type(index) is not int or index < 0)):
        raise PickleFormatError(f"the pickle calls torch.device with {_described((kind, index))}, which torch refuses")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    # Protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); no other codec is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise PickleFormatError("_codecs.encode is only accepted for text with latin1/utf-8/ascii")
    return text.encode(encoding, "strict")


def _parameter(data: Any = None, requires_grad: Any = True) -> Any:
    return _as_parameter(data, requires_grad)


# Globals with a meaning here → their stand-in. Everything returned is inert.
SAFE_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.nn.parameter.Parameter": _parameter,
    "torch.Size": _torch_size,
    "torch.serialization._get_layout": _get_layout,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
    "torch._utils._rebuild_qtensor": _rebuild_qtensor,
    "torch.device": _torch_device,
    "_codecs.encode": _codecs_encode,
}
for _class in TENSOR_CLASSES:
    for _module in ("torch", "torch.cuda", "torch._tensor"):
        SAFE_GLOBALS[f"{_module}.{_class}"] = _tensor_class(_class)
for _scheme in QSCHEMES:
    SAFE_GLOBALS[f"torch.{_scheme}"] = _qscheme(_scheme)
for _module in ("builtins", "__builtin__"):
    SAFE_GLOBALS.update({f"{_module}.set": set, f"{_module}.frozenset": frozenset, f"{_module}.complex": complex})
# Globals that tensor pickles name only as markers (the Python type of a rebuilt tensor): placeholders,
# but not worth listing in the report.
QUIET_GLOBALS = frozenset({"torch.nn.parameter.Buffer"})



class SafeFunction:
    """A safe global's function as the pickle sees it: callable, with no attributes a BUILD could set
    (on the module's own function object that would outlive this load). Every tensor it returns is
    appended to ``built``, the load's registry."""

    __slots__ = ("built", "function", "name")

    def __init__(self, function: Callable[..., Any], built: Registry, name: str = "") -> None:
        self.function = function
        self.built = built
        self.name = name or function.__name__  # the global the pickle named (torch._utils._rebuild_tensor)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self.function(*args, **kwargs)
        except TypeError as exc:  # called with arguments torch's own function does not take: torch refuses it too
            said = str(exc)
            stand_in = f"{self.function.__name__}()"
            if said.startswith(stand_in):
                raise PickleFormatError(f"the pickle calls {self.name} with arguments it does not take ("
                                        f"{said[len(stand_in):].strip()}): torch.load raises TypeError") from None
            raise
        if isinstance(result, TensorStub):
            self.built.add(result)
        return result

    def __setstate__(self, state: Any) -> None:
        raise PickleFormatError(f"the pickle sets the state of {self.function.__name__}; torch refuses that")


