"""numpy arrays and scalars pickled inside a torch file, read from the pickle as data and counted.

``torch.save({"w": np.array([1.0, nan])})`` pickles the array through numpy's own
reduce, which the restricted unpickler turns into inert placeholders (nothing of
numpy's runs); this module reads them back as plain values (``str.encode("latin1")``,
``np.frombuffer`` / ``np.ndarray`` over the bytes) and counts NaN/+Inf/-Inf in every
floating value ``torch.load(weights_only=False)`` would give back, so that a torch file
whose numpy values hold NaN is never called clean. The forms numpy writes:

- an array: ``_reconstruct(subtype, (0,), b"b")`` with a BUILD state ``(version, shape,
  dtype, is_fortran, data)`` (``numpy.core.multiarray`` or numpy 2's ``numpy._core``;
  subtypes such as ``numpy.matrix`` and ``numpy.rec.recarray`` alike); pickle protocol 5:
  ``_frombuffer(buffer, dtype, shape, order)``; a masked array: ``numpy.ma.core._mareconstruct``
  with ``(version, shape, dtype, is_fortran, data, mask, fill_value)``;
- a scalar (``np.float32(nan)``, ``np.complex128``, a structured ``np.void``): ``scalar(dtype, data)``;
- data: raw ``bytes`` (protocol 3+), protocol 2's ``_codecs.encode(text, "latin1")``, or, for a dtype
  that holds Python objects, a list of them;
- a dtype: ``numpy.dtype(code, align, copy)`` (``code`` the class ``numpy.record`` for a record
  array) with a BUILD state ``(version, byte order, subarray, names, fields, itemsize, …)``.

Every float and complex width numpy has here is counted (float16 … float128, complex64 … complex256),
and so is every float field of a structured dtype, nested and subarray fields included (offsets from
the dtype's own state). Integer, bool, string and datetime values cannot hold NaN and are left alone;
the Python objects an object array (or an object field, or a masked array's fill value) holds are
handed back to the name walker (:func:`objects`), which finds arrays, scalars and tensors among them.
A value whose dtype or bytes cannot be decoded, or whose float type this numpy lacks (float128 off
x86), raises ValueError saying why: the reader reports it as not read (exit 3), never skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nandoctor.readers.torch.stubs import Placeholder

_MODULES = ("numpy.core", "numpy._core")
RECONSTRUCT = frozenset(f"{m}.multiarray._reconstruct" for m in _MODULES)
SCALAR = frozenset(f"{m}.multiarray.scalar" for m in _MODULES)
FROMBUFFER = frozenset(f"{m}.numeric._frombuffer" for m in _MODULES)
MARECONSTRUCT = frozenset({"numpy.ma.core._mareconstruct"})
_VALUES = RECONSTRUCT | SCALAR | FROMBUFFER | MARECONSTRUCT
_DTYPE = frozenset({"numpy.dtype"})
_RECORD = frozenset({"numpy.record", "numpy.rec.record"})  # a record array's dtype is built from this class
_ENCODE = frozenset({"_codecs.encode", "codecs.encode"})
_EMPTY_BYTES = frozenset({"__builtin__.bytes", "builtins.bytes"})  # protocol 2's b"" (an empty array's data)
_FLOAT_LETTERS = frozenset("fcdegFDG")  # type codes numpy reads as a float or complex type
_MAX_BYTES = 1 << 31
_MAX_LANES = 1 << 16  # float runs in one item (a structured dtype); real ones have a handful


@dataclass(frozen=True)
class ArrayCount:
    """One numpy floating array or scalar of the pickle: its name, dtype, element count and non-finite values."""

    name: str
    dtype: str
    size: int
    nan: int
    posinf: int
    neginf: int


@dataclass(frozen=True)
class _Lane:
    """``count`` floats of ``dtype`` (numpy's ``dtype.str``) in each item, the first ``offset`` bytes into it,
    ``stride`` bytes apart."""

    offset: int
    dtype: str
    count: int
    stride: int


@dataclass(frozen=True)
class _Layout:
    """Where a dtype's floats lie in one item of ``itemsize`` bytes; ``fields``: the top-level field names of a
    structured dtype, ``float_fields`` the indices of those that are plain floats; ``objects``: it holds Python
    objects (then an array's data is a list of them)."""

    itemsize: int
    lanes: tuple[_Lane, ...]
    text: str
    objects: bool = False
    fields: tuple[str, ...] = ()
    float_fields: tuple[int, ...] = ()


_NOT_FLOAT = _Layout(0, (), "")


def is_array(value: Any) -> bool:
    """A pickled numpy array or scalar (the placeholder numpy's reduce became)."""
    return isinstance(value, Placeholder) and value.global_name in _VALUES


def count(name: str, value: Placeholder) -> ArrayCount | None:
    """The counts of a pickled numpy array or scalar; None for one of a dtype that cannot hold NaN (integers,
    bools, strings, objects). ValueError, saying why, for one whose pickle cannot be read back as data."""
    shape, dtype, data, _ = _parts(value)
    layout = _layout(dtype, 0)
    if not layout.lanes:
        return None
    size = math.prod(shape)
    if isinstance(data, list):
        nan, posinf, neginf = _count_items(layout, data, size)
    else:
        nan, posinf, neginf = _count_bytes(layout, bytes_of(data), size)
    return ArrayCount(name, layout.text, size, nan, posinf, neginf)


def objects(value: Placeholder) -> list[tuple[str, Any]]:
    """The Python objects a pickled numpy value holds, named for the walker: an object array's items (``0``,
    ``1`` …), a masked array's fill value. [] when it holds none or cannot be decoded (:func:`count` says so)."""
    try:
        _, dtype, data, extra = _parts(value)
        layout = _layout(dtype, 0)
    except ValueError:
        return []
    held = list(extra)
    if layout.objects and isinstance(data, list):
        held += [(str(i), item) for i, item in enumerate(data)]
    elif layout.objects and value.global_name in SCALAR:
        held.append(("0", data))
    return held


def _parts(value: Placeholder) -> tuple[tuple[int, ...], Any, Any, list[tuple[str, Any]]]:
    """(shape, dtype placeholder, data, other held objects) of a pickled numpy value, whatever its form."""
    name, args, state = value.global_name, value.args, value.state
    extra: list[tuple[str, Any]] = []
    shape: Any
    if name in SCALAR:
        if len(args) != 2:
            raise ValueError("its scalar(dtype, data) call does not have two arguments")
        shape, dtype, data = (), args[0], args[1]
    elif name in FROMBUFFER:
        if len(args) != 4:
            raise ValueError("its _frombuffer(buffer, dtype, shape, order) call does not have four arguments")
        data, dtype, shape = args[0], args[1], args[2]
    else:
        if name in MARECONSTRUCT:
            if not isinstance(state, tuple) or len(state) != 7:
                raise ValueError("its BUILD state is not a masked array's (shape, dtype, order, data, mask, fill)")
            extra.append(("fill_value", state[6]))
            state = state[:5]
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], tuple):
            state = state[0]  # a subclass that pickles (ndarray state, its own state)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError("its BUILD state is not numpy's (shape, dtype, order, data)")
        shape, dtype, _fortran, data = state[-4:]
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError(f"its shape {shape!r} is not a tuple of sizes")
    return shape, dtype, data, extra


def _layout(dtype: Any, depth: int) -> _Layout:
    """Where the floats of the pickled dtype ``dtype`` lie in an item (read from its state, never built by numpy
    from the pickle's structure)."""
    if depth > 32:
        raise ValueError("its dtype nests more than 32 levels deep")
    if not (isinstance(dtype, Placeholder) and dtype.global_name in _DTYPE and dtype.args):
        raise ValueError("its dtype is not a numpy.dtype")
    code = dtype.args[0]
    if isinstance(code, type) and issubclass(code, Placeholder) and code.global_name in _RECORD:
        code = "V"  # a record array's dtype: numpy.dtype(numpy.record, …), its fields in the state
    if isinstance(code, bytes):
        code = code.decode("latin1")
    if not isinstance(code, str):
        raise ValueError(f"its dtype code {code!r} is not text")
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    code = code.lstrip("<>=|")
    if code[:1] == "V":
        return _structured(code, state, depth)
    import numpy as np

    if not code:
        raise ValueError("its dtype code is empty")
    order = state[1] if len(state) > 1 and state[1] in ("<", ">") else "="  # ("|", "=": native, one byte)
    try:
        leaf = np.dtype(order + code) if code[0] != "O" else np.dtype(object)
    except Exception:  # noqa: BLE001  any type string numpy cannot parse: no dtype it would build
        if code[:1] in _FLOAT_LETTERS:
            raise ValueError(f"its dtype {code!r} is no float type numpy has here (torch.load would fail too, or "
                             "read it as another type)") from None
        return _NOT_FLOAT
    if leaf.hasobject:
        return _Layout(leaf.itemsize, (), "object", objects=True)
    if leaf.kind not in "fc":
        return _NOT_FLOAT
    if leaf.fields is not None or leaf.subdtype is not None:
        raise ValueError(f"its dtype code {code!r} describes a structure numpy never pickles as a code")
    return _Layout(leaf.itemsize, (_Lane(0, leaf.str, 1, leaf.itemsize),), leaf.str)


def _structured(code: str, state: tuple, depth: int) -> _Layout:
    """A ``V`` dtype: raw bytes, a subarray ``(base, shape)`` or named fields at offsets (its BUILD state)."""
    if len(state) < 6:
        raise ValueError("its structured dtype has no (order, subarray, names, fields, itemsize) state")
    subarray, names, fields, itemsize = state[2], state[3], state[4], state[5]
    if type(itemsize) is not int or itemsize < 0:
        digits = code[1:]
        itemsize = int(digits) if digits.isdigit() else -1
    if itemsize < 0:
        raise ValueError("its structured dtype has no item size")
    if subarray is not None:
        if not (isinstance(subarray, tuple) and len(subarray) == 2 and isinstance(subarray[1], tuple)
                and all(type(n) is int and n >= 0 for n in subarray[1])):
            raise ValueError("its subarray dtype is not (base, shape)")
        base = _layout(subarray[0], depth + 1)
        n = math.prod(subarray[1])
        if n * base.itemsize != itemsize:
            raise ValueError(f"its subarray of {n} × {base.itemsize} bytes is not its {itemsize}-byte item")
        runs = [lane for lane in base.lanes if lane.count > 1]  # repeated per subarray element, one lane each
        _bounded(len(base.lanes) + n * len(runs))  # (before the lanes are made: n can be huge)
        lanes = [_Lane(lane.offset, lane.dtype, n, base.itemsize) for lane in base.lanes if lane.count == 1]
        lanes += [_Lane(lane.offset + k * base.itemsize, lane.dtype, lane.count, lane.stride)
                  for lane in runs for k in range(n)]
        return _Layout(itemsize, tuple(lanes), f"({base.text}, {subarray[1]})", base.objects)
    if names is None:
        return _Layout(itemsize, (), f"V{itemsize}")
    if not (isinstance(names, tuple) and all(isinstance(n, str) for n in names) and isinstance(fields, dict)):
        raise ValueError("its structured dtype's names and fields are not a tuple and a dict")
    lanes, held, float_fields, texts = [], False, [], []
    for i, field in enumerate(names):
        entry = dict.get(fields, field)
        if not (isinstance(entry, tuple) and len(entry) in (2, 3) and type(entry[1]) is int and entry[1] >= 0):
            raise ValueError(f"its field {field!r} is not (dtype, offset)")
        inner = _layout(entry[0], depth + 1)
        if entry[1] + inner.itemsize > itemsize:
            raise ValueError(f"its field {field!r} runs past its {itemsize}-byte item")
        lanes += [_Lane(entry[1] + lane.offset, lane.dtype, lane.count, lane.stride) for lane in inner.lanes]
        _bounded(len(lanes))
        held |= inner.objects
        if inner.lanes and inner.lanes == (_Lane(0, inner.text, 1, inner.itemsize),):
            float_fields.append(i)
        texts.append(f"{field!r}: {inner.text or 'other'}")
    return _Layout(itemsize, tuple(lanes), "{" + ", ".join(texts) + "}", held, names, tuple(float_fields))


def _bounded(count: int) -> None:
    if count > _MAX_LANES:
        raise ValueError(f"its structured dtype has more than {_MAX_LANES:,} float fields")


def _count_bytes(layout: _Layout, data: bytes, size: int) -> tuple[int, int, int]:
    """NaN, +Inf, -Inf among the float lanes of ``size`` items of ``layout`` packed in ``data``."""
    import numpy as np

    if len(data) != size * layout.itemsize:
        raise ValueError(f"{len(data):,} bytes for {size:,} values of {layout.itemsize} bytes")
    totals = [0, 0, 0]
    for lane in layout.lanes:
        dtype = np.dtype(lane.dtype)
        if lane.offset + (lane.count - 1) * lane.stride + dtype.itemsize > layout.itemsize:
            raise ValueError("a float field runs past its item")
        if size == 0 or lane.count == 0:
            continue
        values = np.ndarray((size, lane.count), dtype, buffer=data, offset=lane.offset,
                            strides=(layout.itemsize, lane.stride))
        for i, n in enumerate(_tally(values)):
            totals[i] += n
    return totals[0], totals[1], totals[2]


def _count_items(layout: _Layout, items: list, size: int) -> tuple[int, int, int]:
    """NaN, +Inf, -Inf in the float fields of a structured array with object fields, pickled as a list of
    Python tuples (numpy's ``item()`` of each element: floats as Python floats)."""
    import numpy as np

    if len(items) != size:
        raise ValueError(f"{len(items):,} items for {size:,} values")
    if sum(lane.count for lane in layout.lanes) != len(layout.float_fields):
        raise ValueError("its float fields sit inside nested fields beside Python objects, which are not decoded")
    totals = [0, 0, 0]
    values: list[complex] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == len(layout.fields)):
            raise ValueError(f"an item is not a tuple of its {len(layout.fields)} fields")
        for i in layout.float_fields:
            field = item[i]
            if isinstance(field, (float, complex)):
                values.append(field)
            elif isinstance(field, Placeholder) and field.global_name in SCALAR:  # a float128 field's item()
                found = count("", field)
                if found is not None:
                    totals = [totals[0] + found.nan, totals[1] + found.posinf, totals[2] + found.neginf]
            elif not isinstance(field, int):  # (an int or bool is finite)
                raise ValueError(f"its float field {layout.fields[i]!r} holds a {type(field).__name__}")
    nan, posinf, neginf = _tally(np.array(values, dtype=np.complex128))
    return totals[0] + nan, totals[1] + posinf, totals[2] + neginf


def _tally(values: Any) -> tuple[int, int, int]:
    """NaN, +Inf, -Inf among numpy ``values``; a complex value is NaN when either part is, else Inf when either
    part is, signed by the first infinite part (real before imaginary), as the tensor kernels count."""
    import numpy as np

    if values.dtype.kind == "c":
        real, imag = values.real, values.imag
        nan = np.isnan(real) | np.isnan(imag)
        inf = ~nan & (np.isinf(real) | np.isinf(imag))
        sign = np.where(np.isinf(real), real, imag)
        return int(nan.sum()), int((inf & (sign > 0)).sum()), int((inf & (sign < 0)).sum())
    return int(np.isnan(values).sum()), int(np.isposinf(values).sum()), int(np.isneginf(values).sum())


def bytes_of(raw: Any) -> bytes:
    """The value's bytes: raw ``bytes`` / ``bytearray`` (pickle protocol 3+, 5) or protocol 2's
    ``_codecs.encode(text, "latin1")`` (``bytes()`` when empty)."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, Placeholder) and raw.global_name in _EMPTY_BYTES and not raw.args and not raw.kwargs:
        return b""
    if isinstance(raw, Placeholder) and raw.global_name in _ENCODE and len(raw.args) == 2:
        text, encoding = raw.args
        if isinstance(text, str) and isinstance(encoding, str) and encoding.lower().replace("-", "") == "latin1":
            if len(text) > _MAX_BYTES:
                raise ValueError("its bytes are larger than any array a pickle holds")
            try:
                return text.encode("latin1")
            except UnicodeEncodeError:
                raise ValueError("its bytes are not latin-1 text") from None
    raise ValueError("its bytes are not stored as bytes")
