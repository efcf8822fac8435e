"""The opcode pre-scan (nandoctor/readers/torch/prescan.py) gives the first pre-scan's answers, always.

tests/prescan_oracle.py is the first pre-scan (``pickletools.genops`` and a symbolic stack of objects),
kept as the oracle. Both run on every pickle of the hostile corpus, real ``torch.save`` and ``pickle``
outputs, the bombs, and pickles generated and mutated by hypothesis, from bytes and from a budgeted
stream (a legacy file: bytes before and after the pickle): the same non-finite float offsets, or the same
refusal with the same message. One deliberate difference: where the oracle raised AttributeError (a mark
added to a container by APPEND/SETITEM), the pre-scan refuses the file with a PickleFormatError.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import nandoctor.readers.torch.prescan as prescan_module
import tests.prescan_oracle as oracle_module
from nandoctor.readers.torch.prescan import prescan
from nandoctor.readers.torch.safe_pickle import BoundedReader
from tests.prescan_oracle import prescan as oracle

_MARK_ADDED = "PickleFormatError: the pickle's opcodes add a mark to a container"


def _outcome(fn: Any, source: Any, size: int) -> str:
    try:
        return f"ok {fn(source, size).float_offsets!r}"
    except AttributeError as exc:  # the oracle's own failure on a mark used as an item
        assert "weight" in str(exc), exc
        return _MARK_ADDED
    except Exception as exc:  # noqa: BLE001  every refusal is compared by type and message
        return f"{type(exc).__name__}: {exc}"


@contextmanager
def limits(heavy: int, budget: int) -> Iterator[None]:
    """Tiny limits for both: a refusal then depends on every weight the walks count."""
    saved = [(m, m._BASE_WEIGHT, m._BASE_BUDGET) for m in (oracle_module, prescan_module)]
    for m, _, _ in saved:
        m._BASE_WEIGHT, m._BASE_BUDGET = heavy, budget
    try:
        yield
    finally:
        for m, w, b in saved:
            m._BASE_WEIGHT, m._BASE_BUDGET = w, b


def same(data: bytes, prefix: bytes = b"", suffix: bytes = b"", budget: int | None = None) -> str:
    """Old and new agree on ``data`` as bytes, and as a stream between ``prefix`` and ``suffix``."""
    for size in (0, len(data)):
        old = _outcome(oracle, io.BytesIO(data), size)
        new = _outcome(prescan, data, size)
        assert new == old, (data[:200], size, old, new)
    whole = prefix + data + suffix
    limit = len(data) + len(suffix) if budget is None else budget
    streams = []
    for _ in range(2):
        fh = io.BytesIO(whole)
        fh.seek(len(prefix))
        streams.append(BoundedReader(fh, limit))
    old_s = _outcome(oracle, streams[0], 0)
    new_s = _outcome(prescan, streams[1], 0)
    assert new_s == old_s, (data[:200], prefix, suffix, budget, old_s, new_s)
    return new


# ---------------------------------------------------------------------------------------------------------
# Seeds: real pickles, the hostile corpus, the bombs.
# ---------------------------------------------------------------------------------------------------------

NAN, INF = struct.pack(">d", math.nan), struct.pack(">d", math.inf)


def _python_pickles() -> list[bytes]:
    values: list[Any] = [
        {"a": [1, 2.5, float("nan"), float("-inf"), None, True], ("t", 1): frozenset({1, 2}), "s": {3, 4}},
        OrderedDict(w=(1, (2, 3)), b=b"xy" * 300, big=2**70, neg=-(2**40), ba=bytearray(b"z")),
        [("é" * 3, "\ud800"), [[[]]], (), {}],
        list(range(300)),
    ]
    return [pickle.dumps(v, protocol=p) for v in values for p in range(0, pickle.HIGHEST_PROTOCOL + 1)]


def _torch_pickles() -> list[bytes]:
    torch = pytest.importorskip("torch")
    state = {
        "w": torch.ones(3),
        "q": torch.quantize_per_tensor(torch.tensor([1.0, 2.0]), float("nan"), 3, torch.qint8),
        "v": torch.arange(6.0)[::2],
        "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": float("inf"), "params": [0]}]},
    }
    out = []
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        out += [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    out.append(legacy.getvalue())  # five pickles and the storages: streams read the first up to its STOP
    return out


def _bombs() -> list[bytes]:
    from tests.test_adversarial_readers import _shared_tuple

    return [
        b"\x80\x02" + _shared_tuple(60) + b"}" + b"h" + bytes([60]) + b"K\x01s.",
        b"\x80\x02" + _shared_tuple(40) + b"cbuiltins\nfrozenset\n(]" + b"(" + b"h\x28" * 200 + b"e" + b"tR.",
        b"\x80\x02" + _shared_tuple(18) + b"}h\x12K\x01s.",
        b"\x80\x02" + _shared_tuple(25) + b"(h\x19h\x19h\x19t.",
    ]


def _corpus_pickles(tmp: Path) -> list[bytes]:
    from tests.corpus import TORCH_CASES

    out = []
    for case in TORCH_CASES:
        folder = tmp / case.name
        folder.mkdir()
        try:
            built = case.build(folder)
        except Exception:  # noqa: BLE001  a case that needs what this machine lacks
            continue
        files = [built] if built.is_file() else [f for f in built.rglob("*") if f.is_file()]
        for f in files:
            raw = f.read_bytes()
            if raw[:4] == b"PK\x03\x04":
                try:
                    with zipfile.ZipFile(f) as z:
                        out += [z.read(n) for n in z.namelist() if n.lower().endswith(".pkl")]
                except Exception:  # noqa: BLE001  a broken archive: its bytes as a stream below
                    out.append(raw[:1 << 20])
            else:
                out.append(raw[:1 << 20])
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _python_pickles() + _torch_pickles() + _bombs() + _corpus_pickles(tmp_path_factory.mktemp("corpus"))


def test_every_seed_and_each_truncation_and_budget(seeds: list[bytes]) -> None:
    assert len(seeds) > 60
    for data in seeds:
        same(data, b"junk", b"\x00" * 100)
        for cut in sorted({1, 2, len(data) // 3, len(data) // 2, len(data) - 1}):
            if 0 < cut < len(data):
                same(data[:cut])
                same(data, b"", b"tail", budget=cut)  # the reading budget ends inside the pickle


def test_the_bombs_are_refused_as_before(seeds: list[bytes]) -> None:
    outcomes = [same(b) for b in _bombs()]
    assert [o.split(":")[0] for o in outcomes] == ["PickleFormatError", "PickleFormatError", "ok {}",
                                                    "PickleFormatError"]


def test_a_non_finite_binfloat_is_found_where_it_lies() -> None:
    data = b"\x80\x02(G" + NAN + b"G" + INF + b"G" + NAN + b"t."
    assert same(data) == f"ok {({NAN: 4, INF: 13})!r}"
    assert _outcome(prescan, _stream(data, b"abc"), 0) == f"ok {({NAN: 7, INF: 16})!r}"


def _stream(data: bytes, prefix: bytes) -> BoundedReader:
    fh = io.BytesIO(prefix + data)
    fh.seek(len(prefix))
    return BoundedReader(fh, 1 << 30)


class _Endless(io.RawIOBase):
    """A pickle followed by endless zeros (a legacy file's tensor data), counting what was read."""

    def __init__(self, head: bytes) -> None:
        self.head, self.pos, self.read_bytes = head, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = len(b)
        chunk = (self.head[self.pos : self.pos + n]).ljust(n, b"\x00")
        b[:n] = chunk
        self.pos += n
        self.read_bytes += n
        return n

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos


def test_a_stream_is_read_in_blocks_up_to_its_stop() -> None:
    head = b"\x80\x02}(" + b"X\x01\x00\x00\x00aK\x01" * 10_000 + b"u."
    raw = _Endless(head)
    reader = BoundedReader(raw, 1 << 30)
    assert prescan(reader, 0).float_offsets == {}
    assert raw.read_bytes < len(head) + (1 << 22) + (1 << 16)  # never the endless rest


def test_a_huge_length_within_a_budget_is_refused_unread() -> None:
    from nandoctor.readers.torch.stubs import PickleTooLargeError

    raw = _Endless(b"\x80\x02X\xff\xff\xff\xff")
    with pytest.raises(PickleTooLargeError):
        prescan(BoundedReader(raw, 1 << 20), 0)
    assert raw.read_bytes < 1 << 20


# ---------------------------------------------------------------------------------------------------------
# Generated and mutated pickles.
# ---------------------------------------------------------------------------------------------------------

_PIECES = [
    b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"K\x05", b"J\x01\x02\x03\x04", b"M\x01\x02", b"}", b"]",
    b"\x8f", b"u", b"s", b"a", b"e", b"\x90", b"\x91", b"d", b"l", b"R", b"\x81", b"\x92", b"Q", b"2", b"0",
    b"1", b"b", b"N", b"\x88", b"\x89", b"\x93", b"\x94", b"\x97", b"\x98", b"o", b"q\x00", b"q\x01",
    b"q\x02", b"h\x00", b"h\x01", b"h\x02", b"h\x07", b"r\x01\x00\x00\x00", b"j\x01\x00\x00\x00",
    b"r\x00\x01\x00\x00", b"j\x00\x01\x00\x00", b"X\x02\x00\x00\x00ab", b"X\x02\x00\x00\x00\xc3\xa9",
    b"X\x01\x00\x00\x00\xff", b"\x8c\x01a", b"\x8c\x01\xff", b"\x8c\x03\xed\xa0\x80", b"G" + NAN, b"G" + INF,
    b"G" + struct.pack(">d", -math.inf), b"G" + struct.pack(">d", 1.5), b"I1\n", b"I00\n", b"Ix\n",
    b"L5L\n", b"F1.5\n", b"Fnan\n", b"S'a'\n", b"Sa\n", b"Vab\n", b"p0\n", b"p1\n", b"g0\n", b"g9\n",
    b"cmod\nname\n", b"imod\nname\n", b"Pid\n", b"\x8a\x01\x05", b"\x8b\x01\x00\x00\x00\x05",
    b"\x8b\xff\xff\xff\xff", b"C\x01a", b"U\x01a", b"T\x01\x00\x00\x00a", b"T\xff\xff\xff\xff",
    b"B\x01\x00\x00\x00a", b"\x8d\x01" + b"\x00" * 7 + b"a", b"\x8e\x01" + b"\x00" * 7 + b"a",
    b"\x96\x01" + b"\x00" * 7 + b"a", b"\x95\x05" + b"\x00" * 7, b"\x80\x02", b"\x82\x01", b"\x83\x01\x00",
    b"\x84\x01\x00\x00\x00", b".", b"\xff", b"\x00",
]


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_PIECES), max_size=60), st.booleans(), st.integers(0, 400),
       st.integers(1, 12), st.integers(0, 40))
def test_generated_opcode_sequences(pieces: list[bytes], stop: bool, budget: int, heavy: int, hashing: int) -> None:
    data = b"\x80\x02" + b"".join(pieces) + (b"." if stop else b"")
    same(data, b"pre", b"after", budget=budget if budget < len(data) else None)
    with limits(heavy, hashing):
        same(data, b"pre", b"after", budget=budget if budget < len(data) else None)


# Only the opcodes that move weights: programs that nest, memoize, add and call far more often.
_STRUCTURE = [b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"K\x05", b"}", b"]", b"\x8f", b"u", b"s", b"a",
              b"e", b"\x90", b"\x91", b"d", b"l", b"R", b"\x81", b"\x92", b"Q", b"2", b"0", b"1", b"b",
              b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r\x02\x00\x00\x00", b"j\x02\x00\x00\x00", b"\x94"]


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_STRUCTURE), max_size=40), st.integers(1, 10), st.integers(0, 30))
def test_generated_structures_under_tiny_limits(pieces: list[bytes], heavy: int, hashing: int) -> None:
    data = b"\x80\x02" + b"".join(pieces) + b"."
    with limits(heavy, hashing):
        same(data, b"p", b"")


_NEEDS = {  # opcode → (items it pops above the last mark, whether it pops to a mark, what it pushes)
    b"K\x05": (0, False, "v"), b"}": (0, False, "v"), b"]": (0, False, "v"), b")": (0, False, "v"),
    b"h\x00": (0, False, "v"), b"h\x01": (0, False, "v"), b"j\x02\x00\x00\x00": (0, False, "v"),
    b"(": (0, False, "m"), b"q\x00": (1, False, "="), b"q\x01": (1, False, "="),
    b"r\x02\x00\x00\x00": (1, False, "="), b"\x94": (1, False, "="), b"2": (1, False, "+"),
    b"\x85": (1, False, "v"), b"Q": (1, False, "v"), b"0": (1, False, ""), b"\x86": (2, False, "v"),
    b"R": (2, False, "v"), b"\x81": (2, False, "v"), b"b": (2, False, "v"), b"a": (2, False, "v"),
    b"\x87": (3, False, "v"), b"s": (3, False, "v"), b"\x92": (3, False, "v"), b"t": (0, True, "v"),
    b"l": (0, True, "v"), b"d": (0, True, "v"), b"\x91": (0, True, "v"), b"1": (0, True, ""),
    b"u": (0, True, "t"), b"e": (0, True, "t"), b"\x90": (0, True, "t"),
}


@st.composite
def _programs(draw: Any) -> bytes:
    """Mostly well-formed programs (tracked as a stack of values and marks), a wrong opcode now and then."""
    stack: list[str] = []
    out = [b"\x80\x02"]
    for _ in range(draw(st.integers(0, 50))):
        above = len(stack) - (max(i for i, x in enumerate(stack) if x == "m") + 1 if "m" in stack else 0)
        target = "m" in stack and len(stack) - stack[::-1].index("m") - 1 > 0  # something below the mark
        fits = [op for op, (n, to_mark, pushes) in _NEEDS.items()
                if above >= n and (not to_mark or "m" in stack) and (pushes != "t" or target)]
        op = draw(st.sampled_from(sorted(_NEEDS) if draw(st.integers(0, 30)) == 0 else fits))
        n, to_mark, pushes = _NEEDS[op]
        out.append(op)
        if to_mark and "m" in stack:
            del stack[len(stack) - stack[::-1].index("m") - 1 :]
        elif not to_mark:
            del stack[max(0, len(stack) - n) :]
        if pushes in ("v", "t"):
            stack.append("v") if pushes == "v" or not stack else None
        elif pushes == "+":
            stack += ["v", "v"]
        elif pushes == "=":
            stack.append("v")
        elif pushes == "m":
            stack.append("m")
    return b"".join(out)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_programs())
@example(b"\x80\x02]K\x05a\x85K\x05R")  # contents of a list carried by a tuple into a call
@example(b"\x80\x02]q\x00K\x05ah\x00K\x05R")  # a memoized list filled after it was memoized
@example(b"\x80\x02}q\x00(K\x05K\x05uh\x00\x85h\x00\x86K\x05R")  # a dict through the memo, twice
@example(b"\x80\x02K\x052(K\x05K\x05t\x86\x85K\x05\x81")  # DUP, a tuple of tuples
def test_generated_programs_under_every_tiny_limit(data: bytes) -> None:
    """Each limit swept: the first refusal moves with every weight and every part hashed. Run as it is
    (its last 8 bytes take the slow path) and padded (the fast path walks all of it)."""
    for heavy, hashing in [(1000, b) for b in range(40)] + [(h, 1000) for h in range(1, 16)]:
        with limits(heavy, hashing):
            same(data + b".", b"p", b"")
            same(data + b"N0" * 8 + b".", b"p", b"")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_seeds(seeds: list[bytes], data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(seeds)))[:20_000]
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, max(0, len(seed) - 1)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and seed:
            seed[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            seed[at:at] = data.draw(st.sampled_from(_PIECES))
        elif kind == "delete":
            del seed[at : at + data.draw(st.integers(1, 9))]
        else:
            del seed[at:]
    same(bytes(seed), b"x", b"\x00" * 20)
    with limits(data.draw(st.integers(1, 30)), data.draw(st.integers(0, 200))):
        same(bytes(seed), b"x", b"\x00" * 20)


def test_a_huge_finite_float_is_recorded_by_both():
    """CI's hypothesis run found it: the pre-scan records finite BINFLOATs of 2^(LARGE_FLOAT_EXPONENT-1023) or more
    (a quantizer's scale judged where it lies) since session 16, the oracle did not; the oracle now does too."""
    data = pickle.dumps({"a": [1, 2.5, 5.5e303, float("-inf")]}, protocol=2)
    assert same(data).startswith("ok {b'\\x7f")
