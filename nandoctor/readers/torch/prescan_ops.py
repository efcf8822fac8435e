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

Beside the weights the walk adds up what a load would allocate (:data:`COST`, bytes per opcode, and the
memo's array); :func:`memory_in_use` says the larger of that and what the walk itself holds, which the
callers that bound memory per pickle byte (the DCP metadata reader) check as it grows. The walk's memo is a
list (a pointer an entry, as in the unpickler) while the indices come in order, as every pickler writes
them; an index past the end goes to a dict beside it (:func:`memo_put`), and the fast path leaves every
such case to the slow one.

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

# What unpickling allocates, in bytes (CPython, 64-bit, pymalloc's 16-byte classes), for each opcode that
# makes a value: the object and a pointer to it (on the stack, then in a container). Values the pickle
# refers to again (GET, DUP, a MARK) add a pointer only, left out; so are the arguments' own bytes (a
# string's text): the bound counts both in its bytes per pickle byte. A set made by one byte is 232.
_OBJECT_COSTS = (
    (72, ("EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT")), (232, ("EMPTY_SET", "FROZENSET")),
    (56, ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3")),
    (72, ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING")),
    (56, ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8")),
    (40, ("BININT", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT")),
    (8, ("BININT1", "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE")),  # shared objects
    (136, ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST")),  # an object and its fields
    (72, ("GLOBAL", "STACK_GLOBAL")),
)
PAIR_COST = 32  # a dict or set entry, beyond its key's and value's own cost (SETITEM(S), DICT, ADDITEMS, …)
MEMO_INDEX_COST = 16  # a memo index's share of the unpickler's memo array (doubled as it grows), up to the highest
# What the walk itself holds for a memo entry or a stack item, at most: a cell (a two-item list) and a pointer;
# an index out of order also a dict entry and its int
CELL_COST = 88
SPARSE_COST = CELL_COST + 100


def _costs() -> list[int]:
    cost = [0] * 256
    for bytes_, names in _OBJECT_COSTS:
        for name in names:
            cost[_CODE[name]] = bytes_
    cost[_CODE["SETITEM"]] = PAIR_COST
    return cost


COST = _costs()  # per opcode byte; what makes no value costs nothing here (pairs and memo: see above)

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
# The biased float64 exponent from which a pickled float's place is recorded (Walk.float_offsets): |x| >= 2^16, and
# NaN/Inf (0x7FF). A per-tensor quantized tensor's scale that large makes values the exploded rule judges.
LARGE_FLOAT_EXPONENT = 1023 + 16


class Walk:
    """The symbolic stack, its mark positions, the memo, and the limits; shared by both paths."""

    __slots__ = ("allocated", "budget", "done", "float_offsets", "heavy", "marks", "memo", "memo_top", "sparse",
                 "spent", "stack")

    def __init__(self, heavy: int, budget: int) -> None:
        self.heavy = heavy  # a tuple's most parts counted along every path
        self.budget = budget  # the most parts hashed in all
        self.spent = 0
        self.stack: list[Any] = []  # cells and MARKs
        self.marks: list[int] = []  # stack index of every MARK on the stack, in order
        self.memo: list[Any] = []  # the cells put at memo indices 0, 1, 2 …, every one of them set
        self.sparse: dict[Any, Any] = {}  # cells put at other indices (past the list's end, or negative)
        self.float_offsets: dict[bytes, int] = {}  # non-finite or huge BINFLOAT bytes → offset of the 8 bytes
        self.done = False  # STOP reached
        self.allocated = 0  # bytes a load would allocate for the values made so far (COST)
        self.memo_top = 0  # the highest memo index put out of order: the unpickler's memo array reaches it


def memo_put(walk: Walk, index: Any, cell: Any) -> None:
    """Put ``cell`` at memo ``index``, as a dict would (the slow path's way; the fast path appends itself)."""
    memo, sparse = walk.memo, walk.sparse
    if type(index) is int and 0 <= index < len(memo):
        memo[index] = cell
    elif index == len(memo):
        memo.append(cell)
        while sparse and len(memo) in sparse:  # indices put ahead of the list are in order now
            memo.append(sparse.pop(len(memo)))
    else:
        sparse[index] = cell
    if type(index) is int and index > walk.memo_top:
        walk.memo_top = index


def memo_get(walk: Walk, index: Any) -> Any:
    """The cell at memo ``index`` (LEAF where nothing was put: the unpickler refuses the GET)."""
    if type(index) is int and 0 <= index < len(walk.memo):
        return walk.memo[index]
    return walk.sparse.get(index, LEAF)


def memo_size(walk: Walk) -> int:
    """How many memo indices are set: the index MEMOIZE puts at next (the unpickler's memo_len)."""
    return len(walk.memo) + len(walk.sparse)


def memory_in_use(walk: Walk) -> int:
    """Bytes the load would hold for what was walked, or the walk itself holds if more: estimated."""
    load = walk.allocated + MEMO_INDEX_COST * max(walk.memo_top + 1, memo_size(walk))
    held = CELL_COST * (len(walk.memo) + len(walk.stack)) + SPARSE_COST * len(walk.sparse)
    return max(load, held)


def fast_walk(walk: Walk, data: bytes, p: int, end: int, base: int) -> int:
    """Walk the opcodes of ``data`` from ``p`` while they start before ``end`` (an opcode and 8 bytes of
    argument always lie inside ``data``); returns where it stopped: after STOP, or at an opcode for the
    slow path. ``base``: the offset of ``data[0]`` (for BINFLOAT offsets)."""
    stack = walk.stack
    push = stack.append
    marks = walk.marks
    memo, sparse = walk.memo, walk.sparse
    remember = memo.append
    spent, budget, heavy = walk.spent, walk.budget, walk.heavy
    allocated, costs = walk.allocated, COST
    size = len(data)
    leaf_size, fixed, pops, pushes = LEAF_SIZE, SIZE, POPS, PUSHES
    u4, weights, contents, leaf, mark = _U4, _W, _C, LEAF, MARK
    # Opcode bytes as locals: the cheapest comparison in the loop below.
    LONG_BINPUT, BINPUT, MEMOIZE, BINGET, LONG_BINGET = _LONG_BINPUT, _BINPUT, _MEMOIZE, _BINGET, _LONG_BINGET
    BINUNICODE, SHORT_BINUNICODE, BINBYTES, BINFLOAT = _BINUNICODE, _SHORT_BINUNICODE, _BINBYTES, _BINFLOAT
    MARK_OP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = _MARK_OP, _TUPLE, _TUPLE1, _TUPLE2, _TUPLE3
    REDUCE, NEWOBJ, SETITEMS, APPENDS, SETITEM, APPEND = _REDUCE, _NEWOBJ, _SETITEMS, _APPENDS, _SETITEM, _APPEND
    STOP, BYTES1, BINPERSID, PAIR = _STOP, _BYTES1, _BINPERSID, PAIR_COST
    try:  # an IndexError (empty stack, no mark) is raised before anything changed: the slow path decides
        while p < end:
            c = data[p]
            if c == LONG_BINPUT:
                top = stack[-1]
                i = u4(data, p + 1)[0]
                n = len(memo)
                if top is mark or i > n or (i == n and sparse):  # an index out of order: the slow path
                    break
                if top is leaf:  # the memo will alias it: its own cell
                    top = stack[-1] = [1, 0]
                if i == n:
                    remember(top)
                else:
                    memo[i] = top
                p += 5
            elif c == BINGET:
                push(memo[data[p + 1]])  # (an index past the list: IndexError, the slow path)
                p += 2
            elif c == LONG_BINGET:
                push(memo[u4(data, p + 1)[0]])
                p += 5
            elif n := leaf_size[c]:  # BININT*, NEWFALSE, EMPTY_TUPLE, EMPTY_DICT, NONE …
                push(leaf)
                allocated += costs[c]
                p += n
            elif c == BINUNICODE:
                q = p + 5 + u4(data, p + 1)[0]
                if q > size:
                    break
                text = data[p + 5 : q]
                if not text.isascii():  # pickletools decodes it: what is not UTF-8 goes to the slow path
                    text.decode("utf-8", "surrogatepass")
                push(leaf)
                allocated += costs[c]
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
                allocated += costs[c]
                p += 1
            elif c == TUPLE1:
                a = stack[-1]
                if a is mark or a[0] >= heavy:
                    break
                stack[-1] = [1 + a[0], a[1]]
                allocated += costs[c]
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
                allocated += costs[c]
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
                allocated += costs[c]
                p += 1
            elif c in (SETITEMS, APPENDS):
                m = marks[-1]
                keys = stack[m + 1 :: 2] if c == SETITEMS else stack[m + 1 :]
                added = sum(map(weights, keys))
                hashing = added if c == SETITEMS else 0
                if spent + hashing > budget or m == 0 or stack[m - 1] is mark:
                    break
                spent += hashing
                if c == SETITEMS:
                    allocated += PAIR * len(keys)
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
                allocated += costs[c]
                del stack[1 - n :]
                target = items[0]
                if target is leaf:
                    stack[-1] = [1, added]
                else:
                    target[1] += added
                p += 1
            elif c in (BINPUT, MEMOIZE):
                top = stack[-1]
                n = len(memo)
                i = data[p + 1] if c == BINPUT else n
                if top is mark or i > n or (i == n and sparse):
                    break
                if top is leaf:
                    top = stack[-1] = [1, 0]
                if i == n:
                    remember(top)
                else:
                    memo[i] = top
                p += 2 if c == BINPUT else 1
            elif c == BINFLOAT:
                # exponent all ones (NaN/Inf), or |x| >= 2^16 (LARGE_FLOAT_EXPONENT: a quantizer's scale to judge)
                if ((data[p + 1] & 0x7F) << 4 | data[p + 2] >> 4) >= LARGE_FLOAT_EXPONENT:
                    raw = _F64.pack(_F64.unpack_from(data, p + 1)[0])
                    walk.float_offsets.setdefault(raw, base + p + 1)
                push(leaf)
                allocated += costs[c]
                p += 9
            elif c == SHORT_BINUNICODE:
                q = p + 2 + data[p + 1]
                if q > size:
                    break
                text = data[p + 2 : q]
                if not text.isascii():
                    text.decode("utf-8", "surrogatepass")
                push(leaf)
                allocated += costs[c]
                p = q
            elif c in BYTES1 or c == BINBYTES:
                q = p + 2 + data[p + 1] if c != BINBYTES else p + 5 + u4(data, p + 1)[0]
                if q > size:
                    break
                push(leaf)
                allocated += costs[c]
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
                allocated += costs[c]
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
    walk.allocated = allocated
    return p
