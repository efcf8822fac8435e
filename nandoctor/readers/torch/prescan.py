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

Two paths share one state (prescan_ops.Walk). The fast path (prescan_ops.fast_walk) walks the common
opcodes over the raw bytes; every other opcode, and every case the fast path does not judge, is run
here by :func:`_step` exactly as the first pre-scan ran it: the opcode and its argument read by
``pickletools``' own readers (the same errors for malformed bytes), then its effect on the stack.
tests/prescan_oracle.py keeps that first pre-scan; tests/test_prescan_equivalence.py holds the two equal.

A caller may bound memory too (:class:`MemoryBound`): the walk adds up what the load would allocate
(prescan_ops.COST) and refuses the pickle once that passes a floor plus so many bytes for each pickle
byte walked, checked every :data:`_CHECK_BYTES`, so a pickle of millions of empty lists or sets is refused
near its start instead of being built.

A stream (a legacy file: the pickle is followed by the tensor data) is read in blocks up to its STOP,
never whole. An opcode that needs bytes past the block is retried after the next one; past the stream's
end or its reading budget, it is read from the stream itself, which raises what it raised before.
"""

from __future__ import annotations

import gc
import io
import math
import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

from nandoctor.readers.torch.prescan_ops import (
    COST,
    LARGE_FLOAT_EXPONENT,
    LEAF,
    MARK,
    PAIR_COST,
    Walk,
    fast_walk,
    memo_get,
    memo_put,
    memo_size,
    memory_in_use,
)
from nandoctor.readers.torch.stubs import PickleFormatError

LARGE_FLOAT = 2.0 ** (LARGE_FLOAT_EXPONENT - 1023)

_BASE_WEIGHT = 1_000_000  # parts of one tuple, counted along every path (a real checkpoint: a few)
_BASE_BUDGET = 20_000_000  # parts hashed in all (~1 s at worst); both grow with the pickle's size
_FIRST_BLOCK = 1 << 16  # a legacy file holds five pickles, the first ones a few bytes: start small
_MAX_BLOCK = 1 << 22
_FIXED = 9  # the longest fixed-size opcode (FRAME, BINFLOAT): the fast path needs this much ahead
_CODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_TUPLE_SIZE = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_CHECK_BYTES = 1 << 18  # the fast path hands back this often, for the memory bound's check


@dataclass
class Prescan:
    float_offsets: dict[bytes, int] = field(default_factory=dict)  # non-finite BINFLOAT bytes → offset
    memory: int = 0  # bytes the load (or the walk) holds at most, estimated (prescan_ops.memory_in_use)


@dataclass(frozen=True)
class MemoryBound:
    """At most ``floor`` + ``per_byte`` x the pickle bytes walked so far, allocated by the load (estimated)."""

    per_byte: int
    floor: int


def prescan(source: Any, size_hint: int, memory: MemoryBound | None = None) -> Prescan:
    """Run the opcodes of the pickle in ``source`` (bytes, or a stream read up to its STOP) symbolically.

    Offsets are from the start of bytes, or the stream's own positions. Raises PickleFormatError for a
    hashing bomb, an impossible stack, or (with ``memory``) a load that would allocate past the bound;
    ValueError (pickletools' own) for malformed bytes; what the stream raises (a reading budget's error)
    when the pickle runs past it. The stream is left anywhere.
    """
    paused = gc.isenabled()
    gc.disable()  # the walk makes no cycles; collections would only re-walk its many small cells
    try:
        return _prescan(source, size_hint, memory)
    finally:
        if paused:
            gc.enable()


def _prescan(source: Any, size_hint: int, memory: MemoryBound | None) -> Prescan:
    walk = Walk(max(_BASE_WEIGHT, 2 * size_hint), max(_BASE_BUDGET, 8 * size_hint))
    src = _Source(source)
    start = src.base
    p = 0
    while True:
        p = fast_walk(walk, src.buf, p, min(len(src.buf) - _FIXED + 1, p + _CHECK_BYTES), src.base)
        if memory is not None:
            _check_memory(walk, memory, src.base + p - start)
        if walk.done:
            break
        if src.more and p + _FIXED > len(src.buf):
            p = src.refill(p, p + _FIXED)
            continue
        window = _Window(src.buf, p)
        try:
            _step(walk, window, src.base + p)
            p = window.pos
        except _Beyond as beyond:  # the opcode runs past the bytes read so far
            if src.more and src.reachable(beyond.need):
                p = src.refill(p, beyond.need)
            else:  # past the end or the budget: the stream itself says what happens there
                _step(walk, src.at(p), src.base + p)
                p = src.restart()
    if memory is not None:
        _check_memory(walk, memory, src.base + p - start)
    return Prescan(walk.float_offsets, memory_in_use(walk))


def _check_memory(walk: Walk, memory: MemoryBound, walked: int) -> None:
    held = memory_in_use(walk)
    if held > memory.floor + memory.per_byte * walked:
        raise PickleFormatError(
            f"unpickling its first {walked:,} bytes would take about {held >> 20:,} MiB of memory, more than "
            f"{memory.per_byte} bytes for each byte of pickle (millions of empty containers, or a huge memo "
            "index: a memory bomb); refused before it was built"
        )


class _Beyond(Exception):
    """An opcode needs bytes after the block read so far: up to ``need`` (an index in the block) at least."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


class _Window:
    """The block read so far, as the file-like object ``pickletools``' readers read from."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def read(self, n: int = -1) -> bytes:
        q = self.pos
        if n < 0 or q + n > len(self.buf):
            raise _Beyond(q + max(n, 1))
        self.pos = q + n
        return self.buf[q : q + n]

    def readline(self, limit: int = -1) -> bytes:
        q = self.pos
        end = self.buf.find(b"\n", q)
        if end < 0:
            raise _Beyond(len(self.buf) + 1)
        self.pos = end + 1
        return self.buf[q : end + 1]


class _Source:
    """Bytes, or a stream read in growing blocks (capped by a reading budget it reports, if any)."""

    def __init__(self, source: Any) -> None:
        self.stream: Any = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.buf, self.base, self.more = bytes(source), 0, False
            self._whole: io.BytesIO | None = None
        else:
            self.stream, self.buf, self.base, self.more = source, b"", source.tell(), True
        self.block = _FIRST_BLOCK

    def reachable(self, need: int) -> bool:
        """Whether the budget lets the block grow to ``need`` bytes (a huge length is refused unread)."""
        left = getattr(self.stream, "remaining", None)
        return left is None or need <= len(self.buf) + left

    def refill(self, p: int, need: int) -> int:
        """Drop the bytes before ``p``, read at least up to ``need`` (if the stream has them) and the next
        block; returns ``p``'s new index."""
        keep = self.buf[p:]
        # Doubling what is kept: an argument longer than a block costs linear time, not quadratic.
        want = max(self.block, need - len(self.buf), len(keep))
        self.block = min(2 * self.block, _MAX_BLOCK)
        left = getattr(self.stream, "remaining", None)
        if left is not None:
            want = min(want, left)
        block = self.stream.read(want) if want else b""
        if not block:
            self.more = False
        self.buf, self.base = keep + block, self.base + p
        return 0

    def at(self, p: int) -> Any:
        """The source positioned at ``p``, to read one opcode from as the first pre-scan read it."""
        if self.stream is None:
            self._whole = io.BytesIO(self.buf)
            self._whole.seek(p)
            return self._whole
        rewind = getattr(self.stream, "rewind", None) or self.stream.seek  # a budget gives back what is unread
        rewind(self.base + p)
        return self.stream

    def restart(self) -> int:
        """After reading from :meth:`at`: go on from where that read stopped."""
        if self.stream is None:
            assert self._whole is not None
            return self._whole.tell()
        self.buf, self.base, self.more = b"", self.stream.tell(), True
        return 0


def _step(walk: Walk, f: Any, pos: int) -> None:
    """Read one opcode from ``f`` as ``pickletools.genops`` does, and run it as the first pre-scan did."""
    code = f.read(1)
    opcode = _CODES.get(code)
    if opcode is None:
        if code == b"":
            raise ValueError("pickle exhausted before seeing STOP")
        raise ValueError(f"at position {pos}, opcode {code!r} unknown")
    arg = None if opcode.arg is None else opcode.arg.reader(f)
    _run(walk, opcode, arg, pos)
    walk.allocated += COST[code[0]]


def _run(walk: Walk, opcode: Any, arg: Any, pos: int) -> None:
    stack, marks, name = walk.stack, walk.marks, opcode.name

    def pop() -> Any:
        if not stack:
            raise PickleFormatError("the pickle's opcodes pop more than they push")
        if marks and marks[-1] == len(stack) - 1:
            del marks[-1]
        return stack.pop()

    def pop_mark() -> list[Any]:
        items: list[Any] = []
        while True:
            item = pop()
            if item is MARK:
                items.reverse()
                return items
            items.append(item)

    def hashed(weight: int) -> None:
        walk.spent += weight
        if walk.spent > walk.budget:
            raise PickleFormatError(
                f"unpickling would hash more than {walk.budget:,} nested parts (tuples shared through the "
                "pickle memo: a hashing bomb); refused before it was built"
            )

    def tuple_of(items: list[Any]) -> Any:
        weight = 1 + sum(c[0] for c in items)
        if weight > walk.heavy:
            raise PickleFormatError(
                f"a tuple holds more than {walk.heavy:,} nested parts counted along every path (sub-tuples "
                "shared through the pickle memo: a hashing bomb); refused before it was built"
            )
        return [weight, sum(c[1] for c in items)]

    def weight_of(items: list[Any]) -> int:
        if any(c is MARK for c in items):  # the first pre-scan failed here (an AttributeError): refuse
            raise PickleFormatError("the pickle's opcodes add a mark to a container")
        return sum(c[0] for c in items)

    if name == "BINFLOAT":
        if isinstance(arg, float) and (not math.isfinite(arg) or abs(arg) >= LARGE_FLOAT):
            walk.float_offsets.setdefault(struct.pack(">d", arg), pos + 1)
        stack.append(LEAF)
    elif name == "MARK":
        marks.append(len(stack))
        stack.append(MARK)
    elif name == "STOP":
        walk.done = True
    elif name in _TUPLE_SIZE or name == "TUPLE":
        n = _TUPLE_SIZE.get(name)
        if n is None:
            items = pop_mark()
        else:
            items = stack[len(stack) - n :] if n else []
            if n and (len(items) != n or MARK in items):
                raise PickleFormatError("the pickle's opcodes pop more than they push")
            del stack[len(stack) - n :]
        stack.append(tuple_of(items))
    elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
        stack.append(LEAF)
    elif name == "LIST":
        items = pop_mark()
        stack.append([1, sum(c[0] for c in items)])
    elif name in ("DICT", "FROZENSET"):  # built from items that are hashed
        items = pop_mark()
        keys = items[0::2] if name == "DICT" else items
        hashed(sum(c[0] for c in keys))
        walk.allocated += PAIR_COST * len(keys)  # a dict's entries, a set's (pointer and hash) alike
        stack.append(LEAF)
    elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"):
        items = [pop()] if name == "APPEND" else [pop(), pop()][::-1] if name == "SETITEM" else pop_mark()
        keys = items[0::2] if name.startswith("SETITEM") else items
        if name != "APPEND" and name != "APPENDS":
            hashed(weight_of(keys))
            if name != "SETITEM":  # (SETITEM's entry is in COST)
                walk.allocated += PAIR_COST * len(keys)
        if not stack or stack[-1] is MARK:
            raise PickleFormatError("the pickle's opcodes add items to nothing")
        added = weight_of(keys)
        if stack[-1] is LEAF:  # copy on write: LEAF is shared
            stack[-1] = [1, 0]
        stack[-1][1] += added
    elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        if not stack or stack[-1] is MARK:
            raise PickleFormatError("the pickle memoizes a mark")
        if stack[-1] is LEAF:  # the memo aliases it: its own cell
            stack[-1] = [1, 0]
        memo_put(walk, memo_size(walk) if name == "MEMOIZE" else arg, stack[-1])
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo_get(walk, arg))
    elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):  # set(list) and frozenset(tuple) hash what they get
        args = [pop() for _ in range(3 if name == "NEWOBJ_EX" else 2)]
        hashed(sum(c[0] + c[1] for c in args if c is not MARK))
        stack.append(LEAF)
    elif name == "DUP":
        if not stack:
            stack.append(LEAF)
        elif stack[-1] is MARK:
            marks.append(len(stack))
            stack.append(MARK)
        else:
            if stack[-1] is LEAF:  # two places on the stack alias it: its own cell
                stack[-1] = [1, 0]
            stack.append(stack[-1])
    elif name == "POP_MARK":
        pop_mark()
    else:  # a value or another opcode that builds nothing hashable: its generic stack effect
        before = opcode.stack_before
        if pickletools.markobject in before:
            pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                pop()
        else:
            for _ in before:
                pop()
        stack.extend(LEAF for _ in opcode.stack_after)
