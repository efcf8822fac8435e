"""Strict safetensors header reader.

Validates every rule of the format (see docs/formats.md) before a single
tensor byte is touched, and is stricter than the reference parser where that
one is lax: duplicate tensor names are refused instead of "last one wins".
"""

from __future__ import annotations

import math
import os
import re
import struct
from array import array
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from nandoctor.checkpoint import jsonfiles
from nandoctor.dtypes import DTYPES, SAFETENSORS_DTYPES, TORCH_UNLOADABLE_SAFETENSORS, byte_length
from nandoctor.errors import CorruptCheckpointError
from nandoctor.model import UNLOADABLE_KIND, ReadResult, RefTable, ScanProblem
from nandoctor.readers import magic
from nandoctor.readers.compact_header import WORTH_FROM, HeaderColumns, parse_compact
from nandoctor.readers.formats import SAFETENSORS, looks_safetensors
from nandoctor.readers.formats import SAFETENSORS_MAX_HEADER_BYTES as MAX_HEADER_BYTES
from nandoctor.readers.shapes import refused_empty_shape
from nandoctor.wording import first_few


class SafetensorsReader:
    format_name = SAFETENSORS.name
    suffixes = SAFETENSORS.suffixes

    def sniff(self, head: bytes) -> bool:
        return looks_safetensors(head)

    def read(self, path: Path) -> ReadResult:
        return self.read_at(path, 0)

    def read_at(self, path: Path, base: int) -> ReadResult:
        """The safetensors stream that starts ``base`` bytes into ``path`` and runs to its end, its tensors as
        a RefTable (columns: no object per tensor until one is asked for)."""
        table, _, _ = read_table(path, base)
        return ReadResult(table, problems=torch_unloadable(path, table))


def torch_unloadable(path: Path, table: RefTable) -> tuple[ScanProblem, ...]:
    """A problem naming the tensors of dtypes safetensors.torch cannot load (F6_E2M3, F6_E3M2): nandoctor reads
    them (they hold no NaN/Inf), but ``load_file`` and transformers fail on the file, so the model will not load
    in torch: never CLEAN (docs/formats.md says why this is exit 3)."""
    if TORCH_UNLOADABLE_SAFETENSORS.isdisjoint(table.dtypes):
        return ()
    names = [name for name, dtype in zip(table.names, table.dtypes) if dtype in TORCH_UNLOADABLE_SAFETENSORS]
    dtypes = "/".join(sorted(TORCH_UNLOADABLE_SAFETENSORS.intersection(table.dtypes)))
    shown = first_few(names, 8, quoted=True)
    return (ScanProblem(
        str(path),
        f"{len(names)} tensor(s) of dtype {dtypes} ({shown}): safetensors.torch cannot load this dtype "
        "(load_file and transformers fail with 'Dtype not understood': torch has no 6-bit float), so this model "
        "will not load in torch; nandoctor read them (a 6-bit float holds no NaN/Inf)",
        "load the file with a library that reads these dtypes, or re-export those tensors in a dtype torch loads "
        "(the packed bytes as U8, or BF16)",
        kind=UNLOADABLE_KIND,  # read (its tensors are counted), but it would not load: FAIL NOT LOADABLE
    ),)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen = dict(pairs)  # one C call per object: a million-tensor header has a million of them
    if len(seen) == len(pairs):
        return seen
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} in the header")
        seen[key] = value
    return seen


# A lone surrogate can only come from a "\uD800"–"\uDFFF" escape (raw ones fail UTF-8 decoding), so
# strings are checked only in headers that hold such an escape: no per-tensor cost otherwise.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_duplicates_and_surrogates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    for key, value in pairs:
        for text in (key, *_texts(value)):
            if not _is_unicode(text):
                # A lone surrogate escape: the reference parser (Rust serde) refuses it.
                raise ValueError(f"{text!a} holds a lone surrogate escape, which is not Unicode")
    return _reject_duplicates(pairs)


def _texts(value: object) -> list[str]:
    """The strings of a JSON value outside the objects in it (each object's own pairs come through the hook): the
    value itself, or those in a list, however nested (an adversarial round: ``"x": ["\\ud800"]`` read CLEAN)."""
    found, todo = [], [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, list):
            todo.extend(item)
    return found


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is not an int here


_BITS = {name: DTYPES[name].bits for name in SAFETENSORS_DTYPES}
_BITS_KEYS = {name: name for name in _BITS}
_INT = frozenset({int})


def _checked_span(p: str, name: str, entry: object) -> tuple[int, int]:
    """(begin, end) of a header entry, or CorruptCheckpointError saying which rule it breaks."""
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(p, f"{where}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise CorruptCheckpointError(p, f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CorruptCheckpointError(p, f"{where}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CorruptCheckpointError(p, f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    numel = math.prod(shape)
    refused = refused_empty_shape(shape)
    if refused is not None:
        raise CorruptCheckpointError(p, f"{where}: {refused}")
    expected = byte_length(DTYPES[dtype], numel)
    if expected is None:
        raise CorruptCheckpointError(p, f"{where}: {numel} elements of {dtype} are not a whole number of bytes")
    if expected != offsets[1] - offsets[0]:
        raise CorruptCheckpointError(
            p,
            f"{where}: shape {shape} of {dtype} needs {expected} bytes "
            f"but data_offsets span {offsets[1] - offsets[0]}",
        )
    return offsets[0], offsets[1]


def read_header(path: Path, base: int = 0) -> tuple[dict, int, dict[str, str]]:
    """Return (header without reordering, absolute start of the data buffer, metadata).

    ``base``: where the safetensors stream starts in the file (a DCP ``.distcp`` file ends with one);
    it runs to the end of the file.
    """
    p = str(path)
    text, data_start, size = _header_text(path, base)
    header, metadata = _json_header(p, text)
    _check_layout(p, _json_columns(p, header, metadata, data_start, size), data_start, size)
    return header, base + data_start, metadata


def read_table(path: Path, base: int = 0) -> tuple[RefTable, int, dict[str, str]]:
    """(the tensors as a RefTable, absolute start of the data buffer, metadata), every rule checked as
    :func:`read_header` checks it. A compact header (what writers produce) is parsed by
    ``compact_header`` without an object per tensor when it is large; any other by json."""
    p = str(path)
    text, data_start, size = _header_text(path, base)
    compact = len(text) >= WORTH_FROM and not _SURROGATE_ESCAPE.search(text)
    columns = parse_compact(text, _BITS_KEYS) if compact else None
    if columns is None or not _entries_valid(columns):
        columns = _json_columns(p, *_json_header(p, text), data_start, size)  # (raises, naming the first bad entry)
    del text
    _check_layout(p, columns, data_start, size)
    start = base + data_start
    offsets = array("q", (columns.begins + start).tobytes())
    nbytes = array("q", (columns.ends - columns.begins).tobytes())
    return RefTable.plain(p, columns.names, columns.dtypes, columns.shapes, offsets, nbytes), start, columns.metadata


def _header_text(path: Path, base: int) -> tuple[str, int, int]:
    """(the header's text, where the data buffer starts relative to ``base``, bytes from ``base`` to the end)."""
    p = str(path)
    size = os.stat(path).st_size - base
    if size < 8:
        raise CorruptCheckpointError(p, f"file is {size} bytes, too short for a safetensors header")
    with open(path, "rb") as fh:
        fh.seek(base)
        head = fh.read(64)
        (n,) = struct.unpack("<Q", head[:8])
        if n + 8 > size and head[8:9] != b"{":  # no header of this file: text, a web page, another format
            raise magic.not_a(p, SAFETENSORS.words, head)
        if n > MAX_HEADER_BYTES:
            raise CorruptCheckpointError(p, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n + 8 > size:
            raise CorruptCheckpointError(
                p, f"header length {n} runs past the end of the {size}-byte file (truncated?)"
            )
        fh.seek(base + 8)
        raw = fh.read(n)
    if len(raw) != n:
        raise CorruptCheckpointError(p, "file shrank while its header was read")
    try:
        return raw.decode("utf-8"), 8 + n, size
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(p, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _header_int(text: str) -> int:
    """A header's integers are sizes and offsets: the reference parser (serde) reads ``-0`` as a float and
    refuses the file, where Python's json would read 0 (other negatives are refused by the entry checks,
    which name the field). An integer no float can hold is out of serde's range (it reads one past u64 as f64)."""
    value = int(text)
    if value == 0 and text.startswith("-"):
        raise ValueError(f"{text} where a size or offset belongs (a float to the reference parser)")
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"number out of range ({text[:20]}…, {len(text)} digits)") from None
    return value


def _header_float(text: str) -> float:
    """A float of the header, as serde reads it: one that overflows a double is out of range (Python's json
    reads ``1e400`` as inf; safetensors refuses the file: "number out of range")."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range ({text[:24]})")
    return value


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON: Python's json reads them (and writes them, allow_nan), serde refuses
    the header, and so does safetensors: "invalid JSON in header"."""
    raise ValueError(f"{name} is not JSON")


# serde_json's recursion limit: safetensors refuses a header nested deeper (its top object is level 1: an entry's
# field nested 125 deep loads, 126 does not), which Python's json reads up to its own recursion limit.
MAX_HEADER_DEPTH = 127


def _nesting(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests objects and arrays: 0 for a scalar, 1 for ``[]``."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            level.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _json_header(p: str, text: str) -> tuple[dict, dict[str, str]]:
    """(the header parsed by json, its metadata); CorruptCheckpointError unless it is an object of entries."""
    try:
        hook = _reject_duplicates_and_surrogates if _SURROGATE_ESCAPE.search(text) else _reject_duplicates
        header = jsonfiles.loads(text, object_pairs_hook=hook, parse_int=_header_int, parse_float=_header_float,
                                 parse_constant=_no_constant)
    except ValueError as exc:
        raise CorruptCheckpointError(p, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(p, "header is JSON but not an object")
    for name, entry in header.items():  # (what a writer puts in an entry beyond its three fields may nest)
        if isinstance(entry, dict) and len(entry) > 3 and 2 + max(map(_nesting, entry.values())) > MAX_HEADER_DEPTH:
            raise CorruptCheckpointError(p, f"header is not valid JSON to safetensors: {name[:60]!r} nests deeper than "
                                         f"the {MAX_HEADER_DEPTH} levels its parser allows (recursion limit exceeded)")

    metadata = header.get("__metadata__", {})
    if metadata is None:  # the reference's metadata is an Option: null is no metadata (safetensors loads the file)
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptCheckpointError(p, "__metadata__ must map strings to strings")
    return header, metadata


def _json_columns(p: str, header: dict, metadata: dict[str, str], data_start: int, size: int) -> HeaderColumns:
    """The columns of a parsed header; CorruptCheckpointError naming the first entry that breaks a rule."""
    names: list[str] = []
    dtypes: list[str] = []
    shapes: list[tuple[int, ...]] = []
    begins: list[int] = []
    ends: list[int] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        # A valid entry passes these C-level checks; anything else goes through _checked_span, which
        # says what is wrong.
        if type(entry) is dict:
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if (
                type(dtype) is str
                and dtype in _BITS
                and type(shape) is list
                and type(offsets) is list
                and len(offsets) == 2
                and type(begin := offsets[0]) is int
                and type(end := offsets[1]) is int
                and 0 <= begin <= end
                and _INT.issuperset(map(type, shape))  # exactly int: a bool is not a count
                and min(shape, default=0) >= 0
                and (numel := math.prod(shape)) * _BITS[dtype] == (end - begin) * 8
                and (numel or refused_empty_shape(shape) is None)  # (an empty one: what the loaders multiply)
            ):
                names.append(name)
                dtypes.append(_BITS_KEYS[dtype])
                shapes.append(tuple(shape))
                begins.append(begin)
                ends.append(end)
                continue
        begin, end = _checked_span(p, name, entry)
        names.append(name)
        dtypes.append(_BITS_KEYS[entry["dtype"]])
        shapes.append(tuple(entry["shape"]))
        begins.append(begin)
        ends.append(end)
    if ends and max(ends) >= _MAX_OFFSET:  # past any real file, and past int64: words the layout error here
        _layout_error(p, begins, ends, names, data_start, size)
    return HeaderColumns(names, dtypes, shapes, np.array(begins, np.int64), np.array(ends, np.int64), metadata)


_MAX_OFFSET = 1 << 62  # offsets are int64 from here on (no file is this large: such a span never tiles one)


def _entries_valid(columns: HeaderColumns) -> bool:
    """Every entry's shape needs exactly the bytes its data_offsets span (the compact parser checked the
    rest of an entry's syntax); False sends the header through json, which names the first one that does not."""
    numels = _Numels()
    counts = [numels[shape] for shape in dict.fromkeys(columns.shapes)]
    if counts and max(counts) >= 1 << 50:  # past int64 once multiplied by bits: json's path says why
        return False
    if not all(count or refused_empty_shape(shape) is None for shape, count in zip(dict.fromkeys(columns.shapes), counts)):
        return False  # (an empty tensor whose shape the loaders refuse: json's path says why)
    bits = np.fromiter(map(_BITS.__getitem__, columns.dtypes), np.int64, len(columns.dtypes))
    numel = np.fromiter(map(numels.__getitem__, columns.shapes), np.int64, len(columns.shapes))
    spans = columns.ends - columns.begins
    return bool(np.all(spans >= 0) and np.array_equal(numel * bits, spans * 8))


class _Numels(dict):
    def __missing__(self, shape: tuple[int, ...]) -> int:
        self[shape] = value = math.prod(shape)
        return value


def _check_layout(p: str, columns: HeaderColumns, data_start: int, size: int) -> None:
    """The spans tile the data buffer: no overlap, no hole, nothing past or after them (vectorised; the
    loop below only words what is wrong)."""
    begins, ends = columns.begins, columns.ends
    order = np.lexsort((ends, begins))
    begins, ends = begins[order], ends[order]
    cursor = int(ends[-1]) if ends.size else 0
    if (begins.size == 0 or begins[0] == 0) and np.array_equal(begins[1:], ends[:-1]) and data_start + cursor == size:
        return
    _layout_error(p, columns.begins.tolist(), columns.ends.tolist(), columns.names, data_start, size)


def _layout_error(p: str, begins: list[int], ends: list[int], names: list[str], data_start: int, size: int) -> NoReturn:
    """CorruptCheckpointError saying how spans that do not tile the data buffer fail to."""
    spans = sorted(zip(begins, ends, names))
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            kind = "overlaps the previous tensor" if begin < cursor else f"leaves a hole of {begin - cursor} bytes"
            raise CorruptCheckpointError(p, f"tensor {name!r} at byte {begin} {kind}")
        cursor = end
    if data_start + cursor > size:
        raise CorruptCheckpointError(
            p, f"tensor data needs {cursor} bytes but the file holds {size - data_start} (truncated?)"
        )
    raise CorruptCheckpointError(p, f"{size - data_start - cursor} unexpected bytes after the last tensor")
