"""What a part file (``nandoctor scan --part I/N --json``) must hold, checked when merge loads it.

Merge trusts the counts in a part (engine/parts.py), but not its shape: a part file cut short, edited, fuzzed
or written by another version must be refused naming the file and what is wrong (exit 3), never reach the
merge as a ``KeyError`` or ``TypeError``. Every level merge reads is checked: the keys, their JSON types,
the records that become ``TensorResult``, ``Outliers``, ``UnviewedBad``, ``ScanProblem``, ``Tally`` and
``Census`` (their fields and types are taken from those dataclasses, so the check follows them), and the
values merge would fail on (a part outside 0..N-1, an option the scan refuses).

Records are checked a field at a time across the whole list (a column pulled out and its set of types taken
at C speed), positions are worked out only for the message: a part of a million tensors is checked in half the
time ``json.load`` takes to read it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nandoctor.engine.jobs import Tally
from nandoctor.kernels.census import Census
from nandoctor.model import ScanProblem, TensorResult, UnviewedBad

Place = Callable[[int], tuple[str, ...]]  # where value n of a column is, as path steps for a message


class BadPart(ValueError):
    """What is wrong with a part, in words (the caller names the file)."""


_INT64 = (-(1 << 63), (1 << 63) - 1)
_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
          dict: "an object", type(None): "null"}


@dataclass(frozen=True)
class Rule:
    """A JSON value: its allowed types; for a list, the rule of its items (and its length when fixed); for an
    object, the fields of a record."""

    types: frozenset[type]
    item: Rule | None = None
    length: int | None = None
    record: Record | None = None


@dataclass(frozen=True)
class Record:
    """An object with these fields (``required`` must be there; no other key when ``closed``)."""

    fields: dict[str, Rule]
    required: frozenset[str]
    closed: bool = True


def _rule(hint: Any) -> Rule:
    """The JSON rule of a dataclass field's type hint (a float may be written as an integer; a tuple is a list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_rule(a) for a in args]
        item = next((p.item for p in parts if p.item), None)
        record = next((p.record for p in parts if p.record), None)
        length = next((p.length for p in parts if p.length is not None), None)
        return Rule(frozenset().union(*(p.types for p in parts)), item, length, record)
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return Rule(frozenset({list}), _rule(args[0]), len(args))  # (every item of one type here)
        return Rule(frozenset({list}), _rule(args[0]))
    if dataclasses.is_dataclass(hint):
        return Rule(frozenset({dict}), record=record_of(hint))
    return Rule(frozenset({int, float}) if hint is float else frozenset({hint}))


def record_of(cls: Any, only: tuple[str, ...] | None = None, overrides: dict[str, Rule] | None = None,
              extra: dict[str, Rule] | None = None) -> Record:
    """The record a dataclass is written as, every field required (a part of this version writes them all):
    ``only`` these fields, an open record (the decoder picks them), else every field and no other key (it is
    built with ``cls(**record)``); ``extra``: fields written beside the dataclass's."""
    hints = typing.get_type_hints(cls)
    chosen = [f.name for f in dataclasses.fields(cls) if only is None or f.name in only]
    fields = {name: (overrides or {}).get(name) or _rule(hints[name]) for name in chosen}
    fields.update(extra or {})
    return Record(fields, frozenset(fields), closed=only is None)


def _simple(*kinds: type) -> Rule:
    return Rule(frozenset(kinds))


INT, STR, NUMBER = _simple(int), _simple(str), _simple(int, float)
_INTS = Rule(frozenset({list}), INT)


def _list(record: Record) -> Rule:
    return Rule(frozenset({list}), Rule(frozenset({dict}), record=record))


def part_record(result_fields: tuple[str, ...], option_fields: Record) -> Record:
    """The record of a whole part file (``result_fields``: the TensorResult fields a part writes)."""
    census = record_of(Census, overrides={"histogram": Rule(frozenset({list, type(None)}), INT),
                                          "high_segments": Rule(frozenset({list}), Rule(frozenset({list}), INT, 3))})
    share = Record({"file": STR, "key": STR, "span": Rule(frozenset({list}), INT, 2),
                    "tally": Rule(frozenset({dict}), record=record_of(Tally)),
                    "census": Rule(frozenset({dict}), record=census)},
                   frozenset({"file", "key", "span", "tally", "census"}))
    tensor = record_of(TensorResult, only=result_fields, extra={"ref": INT, "name": STR})
    fields = {
        "format": STR, "target": STR, "part": INT, "of": INT, "identity": STR,
        "options": Rule(frozenset({dict}), record=option_fields),
        "fingerprints": Rule(frozenset({dict}), Rule(frozenset({list}), INT, 4)),  # FileIdentity.portable()
        "device": STR, "seconds": NUMBER, "bytes_scanned": INT, "regions": INT,
        "tensors": _list(tensor), "unviewed": _list(record_of(UnviewedBad)),
        "problems": _list(record_of(ScanProblem)), "checkpoint_problems": _list(record_of(ScanProblem)),
        "shares": _list(share), "given": STR,  # given: the path `scan` was given (the CLI's parts only)
    }
    return Record(fields, frozenset(fields) - {"given"}, closed=False)


def check(data: Any, record: Record) -> None:
    """BadPart saying the first thing in ``data`` (a part file's JSON) that ``record`` does not allow."""
    if type(data) is not dict:
        raise BadPart(f"the file holds {_word(type(data))}, not an object")
    _check_records([data], record, lambda n: ())


def _where(place: tuple[str, ...]) -> str:
    return "".join(place).lstrip(".") or "the file"


def _word(kind: type) -> str:
    return _WORDS.get(kind, kind.__name__)


def _shown(value: Any) -> str:
    """A wrong value as the file has it (a scalar, shortened), or its kind (a list, an object)."""
    if isinstance(value, (list, dict)):
        return _word(type(value))
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_records(values: list[dict[str, Any]], record: Record, place: Place) -> None:
    """Every one of ``values`` is a ``record``; ``place(n)`` is where value n is, for the message."""
    if record.closed:
        unknown = set().union(*map(dict.keys, values)) - set(record.fields)
        if unknown:
            key = sorted(unknown)[0]
            first = next(n for n, v in enumerate(values) if key in v)
            raise BadPart(f"{_where(place(first))} has a key {key!r} that no part of this version has")
    for key, rule in record.fields.items():
        have: list[int] | None = None  # which records hold an optional key, when not all of them
        try:
            column = list(map(operator.itemgetter(key), values))  # a field of every record at C speed
        except KeyError:
            if key in record.required:
                missing = next(n for n, v in enumerate(values) if key not in v)
                raise BadPart(f"{_where(place(missing))} has no {key!r}") from None
            have = [n for n, v in enumerate(values) if key in v]
            column = [values[n][key] for n in have]
        _check_values(column, rule, _field_place(place, key, have))


def _field_place(place: Place, key: str, have: list[int] | None) -> Place:
    def at(n: int) -> tuple[str, ...]:
        return (*place(n if have is None else have[n]), f".{key}")

    return at


def _check_values(column: list[Any], rule: Rule, place: Place) -> None:
    """Every value of ``column`` follows ``rule``; ``place(n)`` is where value n is, for the message."""
    kinds = set(map(type, column))
    if not kinds <= rule.types:
        n = next(n for n, v in enumerate(column) if type(v) not in rule.types)
        allowed = rule.types - {int} if float in rule.types else rule.types  # "a number" covers the integers
        wanted = " or ".join(sorted(_word(t) for t in allowed))
        raise BadPart(f"{_where(place(n))} is {_shown(column[n])}, not {wanted}")
    if int in kinds:  # (numpy and the census's struct packing take 64-bit integers at most)
        ints = column if len(kinds) == 1 else [v for v in column if type(v) is int]
        if min(ints) < _INT64[0] or max(ints) > _INT64[1]:
            n = next(n for n, v in enumerate(column) if type(v) is int and not _INT64[0] <= v <= _INT64[1])
            raise BadPart(f"{_where(place(n))} is {_shown(column[n])}, beyond a 64-bit integer")
    if rule.record is not None and dict in kinds:
        objects, at = _of_kind(column, kinds, dict, place)
        _check_records(objects, rule.record, at)
    if list in kinds and (rule.length is not None or rule.item is not None):
        lists, at = _of_kind(column, kinds, list, place)
        if rule.length is not None and set(map(len, lists)) != {rule.length}:
            n = next(n for n, v in enumerate(lists) if len(v) != rule.length)
            raise BadPart(f"{_where(at(n))} has {len(lists[n])} items, not {rule.length}")
        if rule.item is not None:
            _check_values(list(itertools.chain.from_iterable(lists)), rule.item,
                          lambda f: _inside(lists, f, at, lambda _c, j: f"[{j}]"))
    if rule.record is None and rule.item is not None and dict in kinds:  # a mapping (fingerprints): its values
        mappings, at = _of_kind(column, kinds, dict, place)
        _check_values([x for m in mappings for x in m.values()], rule.item,
                      lambda f: _inside(mappings, f, at, lambda m, j: f"[{list(m)[j]!r}]"))


def _of_kind(column: list[Any], kinds: set[type], kind: type, place: Place) -> tuple[list[Any], Place]:
    """The values of ``column`` of type ``kind``, and where each of them is."""
    if len(kinds) == 1:
        return column, place
    have = [n for n, v in enumerate(column) if type(v) is kind]
    return [column[n] for n in have], lambda m: place(have[m])


def _inside(containers: list[Any], flat: int, at: Place, step: Any) -> tuple[str, ...]:
    """Where item ``flat`` of the containers' items laid end to end is (found only for a message)."""
    for n, container in enumerate(containers):
        if flat < len(container):
            return (*at(n), step(container, flat))
        flat -= len(container)
    raise AssertionError("unreachable")


__all__ = ["BadPart", "Record", "Rule", "check", "part_record", "record_of"]
