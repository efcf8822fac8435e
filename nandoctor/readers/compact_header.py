"""A safetensors header in the compact form writers produce, parsed into columns without a dict per tensor.

``json.loads`` builds a dict, two lists and several strings per tensor (1.6 s for a header of a million
tensors). The reference writer's output (serde_json: no whitespace, each entry's keys in the order
``dtype``, ``shape``, ``data_offsets``) is read here by regular expressions, in C: one pass proves the
whole text is such a header, a second takes out the fields of every entry, a slice of the text at a
time. Anything else (whitespace, escapes in names, another key order, a number of 19 digits or more, a
duplicate key) gives None, and the reader parses the text with json: the same answer, only slower. Only
the syntax is decided here; every rule of the format is checked by the reader, whichever way it parsed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import cast

import numpy as np

_NUMBER = r"(?:0|[1-9][0-9]{0,17})"  # a JSON integer below 10**18: int64 holds it, and 8 times it
_PLAIN = r'[^"\\\x00-\x1f]*'  # a string's text without escapes or control characters: the text is its value


def _tensor(group: str) -> str:
    """One tensor's entry; ``group`` opens each field's group: ``(`` to capture it, ``(?:`` not to."""
    return (
        rf'"{group}{_PLAIN})":\{{"dtype":"{group}{_PLAIN})","shape":\[{group}(?:{_NUMBER}(?:,{_NUMBER})*+)?)\],'
        rf'"data_offsets":\[{group}{_NUMBER}),{group}{_NUMBER})\]\}}'
    )


_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+"'  # any JSON string
_METADATA = rf'"__metadata__":\{{(?:{_STRING}:{_STRING}(?:,{_STRING}:{_STRING})*+)?\}}'
_ITEM = rf"(?>{_tensor('(?:')}|{_METADATA})"
_SLICE = 1 << 20  # characters of text per findall: its tuples are turned into columns before the next
WORTH_FROM = 256 << 10  # characters of header text from which this parser is worth compiling (5 ms, once)


@cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(the whole document, one entry with its fields captured, the metadata item), compiled on first use:
    the document's pattern takes 5 ms to compile, as long as json takes over a header of ~2,000 tensors."""
    # Atomic groups and possessive repeats: a million entries are matched without a backtracking stack.
    document = re.compile(rf"[ \t\n\r]*+\{{(?:{_ITEM}(?:,{_ITEM})*+)?\}}[ \t\n\r]*+")
    return document, re.compile(_tensor("(")), re.compile(_METADATA)


@dataclass(frozen=True)
class HeaderColumns:
    """The tensors of a header, in its order; the spans are relative to the data buffer."""

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    begins: np.ndarray  # int64
    ends: np.ndarray  # int64
    metadata: dict[str, str]


class _Shapes(dict):
    """A shape's text → its tuple, made once per distinct shape."""

    def __missing__(self, text: str) -> tuple[int, ...]:
        self[text] = shape = tuple(map(int, text.split(","))) if text else ()
        return shape


def parse_compact(text: str, dtypes: dict[str, str]) -> HeaderColumns | None:
    """The columns of ``text`` when it is a compact header whose dtypes are all keys of ``dtypes`` (which
    maps each to the one string kept for it); None when it is anything else."""
    document, entry, metadata_item = _patterns()
    if not document.fullmatch(text):
        return None
    metadata: dict[str, str] = {}
    found = metadata_item.search(text)
    if found is not None:
        if text.count('"__metadata__":') > 1:  # a duplicate key (two metadata entries, or one a tensor)
            return None
        try:
            metadata = json.loads("{" + found.group()[len('"__metadata__":{') :], object_pairs_hook=_unique)
        except ValueError:
            return None
    names: list[str] = []
    kinds: list[str | None] = []
    shapes: list[tuple[int, ...]] = []
    begins: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    shape_of = _Shapes()
    start, size = 0, len(text)
    while start < size:
        # Entries end with "}," before the next one's name: cut there (no name or string holds a quote).
        stop = text.find('},"', min(start + _SLICE, size))
        stop = size if stop < 0 else stop + 2
        entries = entry.findall(text, start, stop)
        if entries:
            entry_names, entry_dtypes, entry_shapes, entry_begins, entry_ends = zip(*entries)
            names += entry_names
            kinds += map(dtypes.get, entry_dtypes)
            shapes += map(shape_of.__getitem__, entry_shapes)
            begins.append(np.array(entry_begins, dtype=np.int64))  # (decimal texts below 10**18)
            ends.append(np.array(entry_ends, dtype=np.int64))
        start = stop
    if None in kinds or len(set(names)) != len(names) or "__metadata__" in names:
        return None  # a dtype the format does not have, or a duplicate name: json's path says which
    return HeaderColumns(names, cast("list[str]", kinds), shapes, _joined(begins), _joined(ends), metadata)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out
