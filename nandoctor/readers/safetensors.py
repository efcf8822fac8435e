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
from pathlib import Path

from nandoctor.checkpoint import jsonfiles
from nandoctor.dtypes import DTYPES, SAFETENSORS_DTYPES, byte_length
from nandoctor.errors import CorruptCheckpointError
from nandoctor.model import ReadResult, Region, TensorRef
from nandoctor.readers import magic

MAX_HEADER_BYTES = 100_000_000  # the reference parser's limit
SUFFIXES = (".safetensors",)


class SafetensorsReader:
    format_name = "safetensors"
    suffixes = SUFFIXES

    def sniff(self, head: bytes) -> bool:
        if len(head) < 9:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return 0 < n <= MAX_HEADER_BYTES and head[8:9] == b"{"

    def read(self, path: Path) -> ReadResult:
        return self.read_at(path, 0)

    def read_at(self, path: Path, base: int) -> ReadResult:
        """The safetensors stream that starts ``base`` bytes into ``path`` and runs to its end."""
        header, data_start, _ = read_header(path, base)
        file = str(path)
        refs: list[TensorRef] = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            dtype = _BITS_KEYS[entry["dtype"]]  # one shared string per dtype, not one per tensor
            region = Region(file, data_start + begin, end - begin, dtype, name)
            refs.append(TensorRef(name, dtype, tuple(entry["shape"]), region))
        return ReadResult(tuple(refs))


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
        for text in (key, value):
            if isinstance(text, str) and not _is_unicode(text):
                # A lone surrogate escape: the reference parser (Rust serde) refuses it.
                raise ValueError(f"{text!a} holds a lone surrogate escape, which is not Unicode")
    return _reject_duplicates(pairs)


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
    size = os.stat(path).st_size - base
    if size < 8:
        raise CorruptCheckpointError(p, f"file is {size} bytes, too short for a safetensors header")
    with open(path, "rb") as fh:
        fh.seek(base)
        head = fh.read(64)
        (n,) = struct.unpack("<Q", head[:8])
        if n + 8 > size and head[8:9] != b"{":  # no header of this file: text, a web page, another format
            raise magic.not_a(p, "safetensors", head)
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptCheckpointError(p, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        hook = _reject_duplicates_and_surrogates if _SURROGATE_ESCAPE.search(text) else _reject_duplicates
        header = jsonfiles.loads(text, object_pairs_hook=hook)
    except ValueError as exc:
        raise CorruptCheckpointError(p, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(p, "header is JSON but not an object")

    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptCheckpointError(p, "__metadata__ must map strings to strings")

    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        # A valid entry passes these C-level checks (a million of them for a million tensors);
        # anything else goes through _checked_span, which says what is wrong.
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
                and math.prod(shape) * _BITS[dtype] == (end - begin) * 8
            ):
                spans.append((begin, end, name))
                continue
        spans.append((*_checked_span(p, name, entry), name))

    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            kind = "overlaps the previous tensor" if begin < cursor else f"leaves a hole of {begin - cursor} bytes"
            raise CorruptCheckpointError(p, f"tensor {name!r} at byte {begin} {kind}")
        cursor = end
    data_start = 8 + n
    if data_start + cursor != size:
        if data_start + cursor > size:
            raise CorruptCheckpointError(
                p, f"tensor data needs {cursor} bytes but the file holds {size - data_start} (truncated?)"
            )
        raise CorruptCheckpointError(p, f"{size - data_start - cursor} unexpected bytes after the last tensor")
    return header, base + data_start, metadata

