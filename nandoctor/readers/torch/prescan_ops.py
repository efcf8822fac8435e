"""The pre-scan's state and its fast path: the common pickle opcodes walked straight over the bytes.

``pickletools.genops`` decodes every argument into a Python object and the pre-scan then dispatched on
opcode names; both cost more than the symbolic work itself (~1.5 µs an opcode). Here a table built
once from ``pickletools.opcodes`` says how long each fixed-size opcode is, and :func:`fast_walk` reads
only what the symbolic stack needs (memo indices, string lengths, a ``BINFLOAT``'s 8 bytes).

It handles only clean cases. At anything else (an opcode it does not know, a stack it would have to
pop past a mark or an empty stack for, a weight over a limit, a string that is not UTF-8, an argument
past the bytes it was given) it stops *before changing any state* and returns the opcode's position:
prescan.py then runs that one opcode the old way, through ``pickletools``' own argument readers, and
raises whatever the old pre-scan raised. So the fast path can be only as permissive as the slow one.

Stack cells are ``[weight, contents]`` lists (see prescan.py); :data:`LEAF` is one shared immutable
``(1, 0)`` for every fresh value. It is never mutated: a PUT/MEMOIZE or DUP that would alias it first
gives the value its own list, and adding items to it replaces it on the stack (copy on write). Because
only the memo and DUP alias cells, that keeps every answer what one fresh cell per value gave.
"""

from __future__ import annotations

import pickletools
import struct
from operator import itemgetter
from typing import Any

LEAF: tuple[int, int] = (1, 0)  # weight 1 (hashed by identity, or one part), nothing put in it
MARK: Any = object()

_CODE = {op.name: op.code.encode("latin-1")[0] for op in pickletools.opcodes}


def _table() -> tuple[bytes, bytes, bytes, bytes]:
    """Per opcode byte: total length of a fixed-size opcode (0: not handled generically), items it pops,
    items it pushes, and the length of an opcode pushing one fresh value with nothing popped."""
    size, pops, pushes, leaf = bytearray(256), bytearray(256), bytearray(256), bytearray(256)
    special = {"MARK", "STOP", "BINFLOAT", "DUP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET",
               "LONG_BINGET", "TUPLE1", "TUPLE2", "TUPLE3", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "APPEND", "SETITEM"}
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        before = op.stack_before
        if op.name in special or n < 0 or pickletools.markobject in before or len(before) > 2:
            continue  # variable arguments, marks, or opcodes with their own meaning: handled by name
        code = _CODE[op.name]
        size[code], pops[code], pushes[code] = 1 + n, len(before), len(op.stack_after)
        if not before and len(op.stack_after) == 1:
            leaf[code] = 1 + n
    leaf[_CODE["EMPTY_TUPLE"]] = 1  # a tuple of nothing weighs 1: a fresh leaf
    return bytes(size), bytes(pops), bytes(pushes), bytes(leaf)


SIZE, POPS, PUSHES, LEAF_SIZE = _table()

_MARK_OP, _STOP = _CODE["MARK"], _CODE["STOP"]
_BINPUT, _LONG_BINPUT, _MEMOIZE = _CODE["BINPUT"], _CODE["LONG_BINPUT"], _CODE["MEMOIZE"]
_BINGET, _LONG_BINGET = _CODE["BINGET"], _CODE["LONG_BINGET"]
_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = _CODE["TUPLE"], _CODE["TUPLE1"], _CODE["TUPLE2"], _CODE["TUPLE3"]
_REDUCE, _NEWOBJ = _CODE["REDUCE"], _CODE["NEWOBJ"]
_SETITEMS, _SETITEM, _APPENDS, _APPEND = _CODE["SETITEMS"], _CODE["SETITEM"], _CODE["APPENDS"], _CODE["APPEND"]
_BINUNICODE, _SHORT_BINUNICODE, _BINFLOAT = _CODE["BINUNICODE"], _CODE["SHORT_BINUNICODE"], _CODE["BINFLOAT"]
# Length-prefixed values whose argument never fails to decode once its bytes are there (latin-1, raw).
_BYTES1 = frozenset(_CODE[n] for n in ("SHORT_BINSTRING", "SHORT_BINBYTES", "LONG1"))
_BINBYTES, _BINPERSID = _CODE["BINBYTES"], _CODE["BINPERSID"]

_U4 = struct.Struct("<I").unpack_from
_W = itemgetter(0)
_C = itemgetter(1)
_F64 = struct.Struct(">d")


class Walk:
    """The symbolic stack, its mark positions, the memo, and the limits; shared by both paths."""

    __slots__ = ("budget", "done", "float_offsets", "heavy", "marks", "memo", "spent", "stack")

    def __init__(self, heavy: int, budget: int) -> None:
        self.heavy = heavy  # a tuple's most parts counted along every path
        self.budget = budget  # the most parts hashed in all
        self.spent = 0
        self.stack: list[Any] = []  # cells and MARKs
        self.marks: list[int] = []  # stack index of every MARK on the stack, in order
        self.memo: dict[Any, Any] = {}
        self.float_offsets: dict[bytes, int] = {}  # non-finite BINFLOAT bytes → offset of the 8 bytes
        self.done = False  # STOP reached


def fast_walk(walk: Walk, data: bytes, p: int, end: int, base: int) -> int:
    """Walk the opcodes of ``data`` from ``p`` while they start before ``end`` (an opcode and 8 bytes of
    argument always lie inside ``data``); returns where it stopped: after STOP, or at an opcode for the
    slow path. ``base``: the offset of ``data[0]`` (for BINFLOAT offsets)."""
    stack = walk.stack
    push = stack.append
    marks = walk.marks
    memo = walk.memo
    recall = memo.get
    spent, budget, heavy = walk.spent, walk.budget, walk.heavy
    size = len(data)
    leaf_size, fixed, pops, pushes = LEAF_SIZE, SIZE, POPS, PUSHES
    u4, weights, contents, leaf, mark = _U4, _W, _C, LEAF, MARK
    # Opcode bytes as locals: the cheapest comparison in the loop below.
    LONG_BINPUT, BINPUT, MEMOIZE, BINGET, LONG_BINGET = _LONG_BINPUT, _BINPUT, _MEMOIZE, _BINGET, _LONG_BINGET
    BINUNICODE, SHORT_BINUNICODE, BINBYTES, BINFLOAT = _BINUNICODE, _SHORT_BINUNICODE, _BINBYTES, _BINFLOAT
    MARK_OP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = _MARK_OP, _TUPLE, _TUPLE1, _TUPLE2, _TUPLE3
    REDUCE, NEWOBJ, SETITEMS, APPENDS, SETITEM, APPEND = _REDUCE, _NEWOBJ, _SETITEMS, _APPENDS, _SETITEM, _APPEND
    STOP, BYTES1, BINPERSID = _STOP, _BYTES1, _BINPERSID
    try:  # an IndexError (empty stack, no mark) is raised before anything changed: the slow path decides
        while p < end:
            c = data[p]
            if c == LONG_BINPUT:
                top = stack[-1]
                if top is mark:
                    break
                if top is leaf:  # the memo will alias it: its own cell
                    top = stack[-1] = [1, 0]
                memo[u4(data, p + 1)[0]] = top
                p += 5
            elif c == BINGET:
                push(recall(data[p + 1], leaf))
                p += 2
            elif c == LONG_BINGET:
                push(recall(u4(data, p + 1)[0], leaf))
                p += 5
            elif n := leaf_size[c]:  # BININT*, NEWFALSE, EMPTY_TUPLE, EMPTY_DICT, NONE …
                push(leaf)
                p += n
            elif c == BINUNICODE:
                q = p + 5 + u4(data, p + 1)[0]
                if q > size:
                    break
                text = data[p + 5 : q]
                if not text.isascii():  # pickletools decodes it: what is not UTF-8 goes to the slow path
                    text.decode("utf-8", "surrogatepass")
                push(leaf)
                p = q
            elif c == MARK_OP:
                marks.append(len(stack))
                push(mark)
                p += 1
            elif c == TUPLE:
                m = marks[-1]
                items = stack[m + 1 :]
                w = 1 + sum(map(weights, items))
                if w > heavy:
                    break
                del marks[-1], stack[m:]
                push([w, sum(map(contents, items))])
                p += 1
            elif c == TUPLE1:
                a = stack[-1]
                if a is mark or a[0] >= heavy:
                    break
                stack[-1] = [1 + a[0], a[1]]
                p += 1
            elif c in (REDUCE, NEWOBJ):  # callable(args): set(list), frozenset(tuple) hash what they get
                b = stack[-1]
                a = stack[-2]
                if a is mark or b is mark:
                    break
                total = spent + a[0] + a[1] + b[0] + b[1]
                if total > budget:
                    break
                spent = total
                del stack[-1]
                stack[-1] = leaf
                p += 1
            elif c == BINPERSID:  # pops the id, pushes what it names
                if stack[-1] is mark:
                    break
                stack[-1] = leaf
                p += 1
            elif c in (TUPLE2, TUPLE3):
                n = 2 if c == TUPLE2 else 3
                items = stack[-n:]
                if len(items) != n or mark in items:
                    break
                w = 1 + sum(map(weights, items))
                if w > heavy:
                    break
                del stack[-n:]
                push([w, sum(map(contents, items))])
                p += 1
            elif c in (SETITEMS, APPENDS):
                m = marks[-1]
                keys = stack[m + 1 :: 2] if c == SETITEMS else stack[m + 1 :]
                added = sum(map(weights, keys))
                hashing = added if c == SETITEMS else 0
                if spent + hashing > budget or m == 0 or stack[m - 1] is mark:
                    break
                spent += hashing
                del marks[-1], stack[m:]
                if added:
                    target = stack[-1]
                    if target is leaf:  # copy on write: leaf is shared
                        stack[-1] = [1, added]
                    else:
                        target[1] += added
                p += 1
            elif c in (SETITEM, APPEND):
                n = 3 if c == SETITEM else 2
                items = stack[-n:]
                if len(items) != n or mark in items:
                    break
                added = items[1][0]
                hashing = added if c == SETITEM else 0
                if spent + hashing > budget:
                    break
                spent += hashing
                del stack[1 - n :]
                target = items[0]
                if target is leaf:
                    stack[-1] = [1, added]
                else:
                    target[1] += added
                p += 1
            elif c in (BINPUT, MEMOIZE):
                top = stack[-1]
                if top is mark:
                    break
                if top is leaf:
                    top = stack[-1] = [1, 0]
                if c == BINPUT:
                    memo[data[p + 1]] = top
                    p += 2
                else:
                    memo[len(memo)] = top
                    p += 1
            elif c == BINFLOAT:
                if data[p + 1] & 0x7F == 0x7F and data[p + 2] & 0xF0 == 0xF0:  # exponent all ones: NaN/Inf
                    raw = _F64.pack(_F64.unpack_from(data, p + 1)[0])
                    walk.float_offsets.setdefault(raw, base + p + 1)
                push(leaf)
                p += 9
            elif c == SHORT_BINUNICODE:
                q = p + 2 + data[p + 1]
                if q > size:
                    break
                text = data[p + 2 : q]
                if not text.isascii():
                    text.decode("utf-8", "surrogatepass")
                push(leaf)
                p = q
            elif c in BYTES1 or c == BINBYTES:
                q = p + 2 + data[p + 1] if c != BINBYTES else p + 5 + u4(data, p + 1)[0]
                if q > size:
                    break
                push(leaf)
                p = q
            elif fixed[c]:  # any other fixed-size opcode that pops at most two items, marks excepted
                n = pops[c]
                if n:
                    items = stack[-n:]
                    if len(items) != n or mark in items:
                        break
                    del stack[-n:]
                if pushes[c]:
                    push(leaf)
                p += fixed[c]
            elif c == STOP:
                walk.done = True
                p += 1
                break
            else:
                break
    except (IndexError, UnicodeDecodeError):
        pass
    walk.spent = spent
    return p
