"""Indented JSON text, piece by piece, byte for byte what ``json.dumps(data, indent=2)`` writes.

The standard encoder runs in pure Python whenever it indents (its C accelerator
does not indent), at ~25 µs per tensor entry of a report: most of the time of a
``--json`` scan of 100,000 small tensors. This one dispatches on exact types
and joins strings (strings escaped by json's own C function), several times
faster. It also takes iterators where a list goes, encoding one item at a time,
so a report of a million tensors is never built as a million dicts at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii  # (C; json.dumps escapes strings with it)
from typing import Any

INDENT = 2
_STREAMED_LEVELS = 2  # items of containers this shallow are yielded one by one (the tensors list is at 1)


def iter_json(data: Any) -> Iterator[str]:
    """Pieces of ``json.dumps(data, indent=2)``; iterators are encoded like lists."""
    yield from _pieces(data, 0)


class EncodedItems:
    """A list whose items its owner writes as JSON text itself, a batch at a time: ``batches(level)`` yields
    lists of the items' texts as they are written at ``level`` (json_report's tensor entries, rendered
    column by column). Streamed batch by batch; the same text as the list of those items."""

    def __init__(self, batches: Callable[[int], Iterator[list[str]]]) -> None:
        self.batches = batches

    def pieces(self, level: int) -> Iterator[str]:
        """The list's text at ``level`` (its items one deeper), a batch per piece."""
        inner = "\n" + " " * (INDENT * (level + 1))
        first = True
        for batch in self.batches(level + 1):
            if batch:
                yield ("[" if first else ",") + inner + ("," + inner).join(batch)
                first = False
        yield "[]" if first else "\n" + " " * (INDENT * level) + "]"

    def json_text(self, level: int) -> str:
        return "".join(self.pieces(level))


_CONTAINERS = (dict, list, tuple, Iterator)


def _pieces(value: Any, level: int) -> Iterator[str]:
    if isinstance(value, EncodedItems):
        yield from value.pieces(level)
        return
    if level >= _STREAMED_LEVELS or not isinstance(value, _CONTAINERS):
        yield _encode(value, level)
        return
    inner = "\n" + " " * (INDENT * (level + 1))
    if isinstance(value, dict):
        items: Iterator[tuple[str | None, Any]] = ((_key(k), v) for k, v in value.items())
        opening, closing = "{", "}"
    else:
        items = ((None, v) for v in value)
        opening, closing = "[", "]"
    first = True
    for key, item in items:
        head = (opening if first else ",") + inner + ("" if key is None else encode_basestring_ascii(key) + ": ")
        first = False
        if not isinstance(item, EncodedItems) and (level + 1 >= _STREAMED_LEVELS or not isinstance(item, _CONTAINERS)):
            yield head + _encode(item, level + 1)  # (one piece, no generator: once per item)
        else:
            yield head
            yield from _pieces(item, level + 1)
    yield opening + closing if first else "\n" + " " * (INDENT * level) + closing


def encode_at(value: Any, level: int) -> str:
    """The text of ``value`` as it is written at indentation ``level`` (whole, not streamed)."""
    return _encode(value, level)


def _encode(value: Any, level: int) -> str:
    encoder = _BY_TYPE.get(type(value))
    if encoder is not None:
        return encoder(value, level)
    if isinstance(value, EncodedItems):
        return value.json_text(level)
    # Subclasses, in json's order of checks (bool before int: bool is an int).
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value, level)
    if isinstance(value, (list, tuple, Iterator)):
        return _list(value, level)
    if isinstance(value, dict):
        return _dict(value, level)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _float(value: float, level: int = 0) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _list(value: Any, level: int) -> str:
    parts = [_encode(item, level + 1) for item in value]
    if not parts:
        return "[]"
    inner = "\n" + " " * (INDENT * (level + 1))
    return "[" + inner + ("," + inner).join(parts) + "\n" + " " * (INDENT * level) + "]"


def _dict(value: dict, level: int) -> str:
    if not value:
        return "{}"
    # The keys' text and the indentation, once per shape of dict: every tensor entry has the same keys.
    shape = (tuple(value), level)
    template = _TEMPLATES.get(shape)
    if template is None:
        template = _template(shape[0], level)
        if all(type(k) is str for k in shape[0]):  # (True == 1: only string keys are told apart by equality)
            _TEMPLATES[shape] = template
    texts = []
    for item in value.values():
        kind = type(item)  # the common scalars inline: a call per value is most of the cost
        if kind is str:
            texts.append(encode_basestring_ascii(item))
        elif kind is int:
            texts.append(int.__repr__(item))
        elif item is None:
            texts.append("null")
        elif kind is bool:
            texts.append("true" if item else "false")
        elif kind is float and item - item == 0:  # finite (NaN and ±Inf take _float's spelling)
            texts.append(float.__repr__(item))
        elif kind is list:
            texts.append(_list(item, level + 1))
        else:
            texts.append(_encode(item, level + 1))
    return template % tuple(texts)


_TEMPLATES: dict[tuple[tuple[Any, ...], int], str] = {}


def dict_template(keys: tuple[str, ...], level: int) -> str:
    """``{ "key": %s, ... }``: the text of a dict with these keys at this level, its values' texts to fill in."""
    return _template(keys, level)


def _template(keys: tuple[Any, ...], level: int) -> str:
    """``{ "key": %s, ... }`` for these keys at this level (``%`` in a key escaped)."""
    inner = "\n" + " " * (INDENT * (level + 1))
    parts = [encode_basestring_ascii(_key(k)).replace("%", "%%") + ": %s" for k in keys]
    if len(_TEMPLATES) > 4096:  # arbitrary data (not reports): do not grow without bound
        _TEMPLATES.clear()
    return "{" + inner + ("," + inner).join(parts) + "\n" + " " * (INDENT * level) + "}"


def _key(key: Any) -> str:
    """A dict key as json writes it (only strings, numbers, booleans and None are allowed)."""
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float(key)
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


_BY_TYPE: dict[type, Callable[[Any, int], str]] = {
    str: lambda v, level: encode_basestring_ascii(v),
    int: lambda v, level: int.__repr__(v),
    float: _float,
    bool: lambda v, level: "true" if v else "false",
    type(None): lambda v, level: "null",
    list: _list,
    tuple: _list,
    dict: _dict,
}
