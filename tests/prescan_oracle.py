"""One pass over a pickle's opcodes before it is unpickled: bound the work unpickling would do.

The pickle memo lets a few hundred bytes describe a tuple of 2**60 parts
(each level two references to the one below). Unpickling builds it for free,
but hashing it (a dict key, a set item, ``frozenset(...)``) walks every path:
an 849-byte file once hashed forever inside the unpickler. So the opcodes are
run first on a symbolic stack whose items carry only a weight (the parts a
hash of them visits, counted along every path); a tuple heavier than the
pickle could hold without sharing, or more hashing in total than a budget,
refuses the file before anything is built. The same pass records where each
non-finite ``BINFLOAT`` lies, so a value that lives in the pickle (a quantized
tensor's scale) can be scanned where it is.
"""

from __future__ import annotations

import math
import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

from nandoctor.readers.torch.stubs import PickleFormatError
from nandoctor.readers.torch.prescan import LARGE_FLOAT

_BASE_WEIGHT = 1_000_000  # parts of one tuple, counted along every path (a real checkpoint: a few)
_BASE_BUDGET = 20_000_000  # parts hashed in all (~1 s at worst); both grow with the pickle's size
_MARK = object()


class _Cell:
    """One object on the symbolic stack: its hash weight, and what was put in it (lists, dicts, sets)."""

    __slots__ = ("contents", "weight")

    def __init__(self, weight: int = 1, contents: int = 0) -> None:
        self.weight = weight  # 1 for anything hashed by identity, unhashable, or cached (frozenset)
        self.contents = contents  # summed weight of the items a container holds: set(list) hashes them


@dataclass
class Prescan:
    float_offsets: dict[bytes, int] = field(default_factory=dict)  # non-finite BINFLOAT bytes → offset


def prescan(stream: Any, size_hint: int) -> Prescan:
    """Run the opcodes of the pickle in ``stream`` (read up to its STOP) on a symbolic stack.

    Raises PickleFormatError for a hashing bomb; EOFError or ``pickle.UnpicklingError``-like ValueErrors
    from ``pickletools`` for malformed bytes (worded by the caller like the unpickler's own).
    """
    heavy = max(_BASE_WEIGHT, 2 * size_hint)
    budget = max(_BASE_BUDGET, 8 * size_hint)
    spent = 0
    stack: list[Any] = []
    memo: dict[Any, _Cell] = {}
    out = Prescan()

    def pop() -> Any:
        if not stack:
            raise PickleFormatError("the pickle's opcodes pop more than they push")
        return stack.pop()

    def pop_mark() -> list[_Cell]:
        items: list[_Cell] = []
        while True:
            item = pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)

    def hashed(weight: int) -> None:
        nonlocal spent
        spent += weight
        if spent > budget:
            raise PickleFormatError(
                f"unpickling would hash more than {budget:,} nested parts (tuples shared through the pickle "
                "memo: a hashing bomb); refused before it was built"
            )

    def tuple_of(items: list[_Cell]) -> _Cell:
        weight = 1 + sum(c.weight for c in items)
        if weight > heavy:
            raise PickleFormatError(
                f"a tuple holds more than {heavy:,} nested parts counted along every path (sub-tuples shared "
                "through the pickle memo: a hashing bomb); refused before it was built"
            )
        return _Cell(weight, sum(c.contents for c in items))

    for opcode, arg, pos in pickletools.genops(stream):
        kind = _KIND.get(opcode.name)
        if kind is None:  # a value or another opcode that builds nothing hashable: its generic stack effect
            # (NaN/Inf, and since the quantizer scales' rule, finite values of 2^LARGE_FLOAT_EXPONENT-1023 or more too)
            if (opcode.name == "BINFLOAT" and isinstance(arg, float) and (not math.isfinite(arg) or abs(arg) >= LARGE_FLOAT)
                    and pos is not None):
                out.float_offsets.setdefault(struct.pack(">d", arg), pos + 1)
            _generic(opcode, stack, pop, pop_mark)
        elif kind == "mark":
            stack.append(_MARK)
        elif kind == "stop":
            break
        elif kind == "tuple":
            n = _TUPLE_SIZE[opcode.name]
            if n is None:
                items = pop_mark()
            else:
                items = stack[len(stack) - n :] if n else []
                if n and (len(items) != n or _MARK in items):
                    raise PickleFormatError("the pickle's opcodes pop more than they push")
                del stack[len(stack) - n :]
            stack.append(tuple_of(items))
        elif kind == "new":
            stack.append(_Cell())
        elif kind == "list":
            items = pop_mark()
            stack.append(_Cell(1, sum(c.weight for c in items)))
        elif kind == "hashing":  # DICT, FROZENSET: build from items that are hashed
            items = pop_mark()
            hashed(sum(c.weight for c in (items[0::2] if opcode.name == "DICT" else items)))
            stack.append(_Cell())
        elif kind == "add":
            name = opcode.name
            items = [pop()] if name == "APPEND" else [pop(), pop()][::-1] if name == "SETITEM" else pop_mark()
            keys = items[0::2] if name.startswith("SETITEM") else items
            if name != "APPEND" and name != "APPENDS":
                hashed(sum(c.weight for c in keys))
            if not stack or stack[-1] is _MARK:
                raise PickleFormatError("the pickle's opcodes add items to nothing")
            stack[-1].contents += sum(c.weight for c in keys)
        elif kind == "put":
            if not stack or stack[-1] is _MARK:
                raise PickleFormatError("the pickle memoizes a mark")
            memo[len(memo) if opcode.name == "MEMOIZE" else arg] = stack[-1]
        elif kind == "get":
            stack.append(memo.get(arg) or _Cell())
        elif kind == "call":  # REDUCE, NEWOBJ, NEWOBJ_EX: set(list) and frozenset(tuple) hash what they get
            args = [pop() for _ in range(3 if opcode.name == "NEWOBJ_EX" else 2)]
            hashed(sum(c.weight + c.contents for c in args if c is not _MARK))
            stack.append(_Cell())
        elif kind == "dup":
            stack.append(stack[-1] if stack else _Cell())
        elif kind == "pop_mark":
            pop_mark()
    return out


_KIND = {
    "MARK": "mark", "STOP": "stop",
    "EMPTY_TUPLE": "tuple", "TUPLE1": "tuple", "TUPLE2": "tuple", "TUPLE3": "tuple", "TUPLE": "tuple",
    "EMPTY_LIST": "new", "EMPTY_DICT": "new", "EMPTY_SET": "new", "LIST": "list",
    "DICT": "hashing", "FROZENSET": "hashing",
    "APPEND": "add", "APPENDS": "add", "SETITEM": "add", "SETITEMS": "add", "ADDITEMS": "add",
    "PUT": "put", "BINPUT": "put", "LONG_BINPUT": "put", "MEMOIZE": "put",
    "GET": "get", "BINGET": "get", "LONG_BINGET": "get",
    "REDUCE": "call", "NEWOBJ": "call", "NEWOBJ_EX": "call",
    "DUP": "dup", "POP_MARK": "pop_mark",
}
_TUPLE_SIZE = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "TUPLE": None}


def _generic(opcode: Any, stack: list[Any], pop: Any, pop_mark: Any) -> None:
    """Stack effect of every other opcode from its pickletools description; what it pushes weighs 1."""
    before = opcode.stack_before
    if pickletools.markobject in before:
        pop_mark()
        for _ in range(before.index(pickletools.markobject)):
            pop()
    else:
        for _ in before:
            pop()
    stack.extend(_Cell() for _ in opcode.stack_after)
