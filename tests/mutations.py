"""Byte-level mutations shared by the differential fuzzers (safetensors and torch files)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

BYTE_EDITS = ("flip", "set", "truncate", "append", "insert", "delete")


def edit_bytes(draw: Callable, data: bytearray, kind: str) -> None:
    """Apply one drawn edit of ``kind`` to ``data`` in place (``data`` must not be empty)."""
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
        data[pos] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del data[pos:]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
    elif kind == "delete":
        del data[pos : pos + draw(st.integers(1, 4))]
    else:
        raise ValueError(kind)


def byte_mutations(seed: bytes, max_edits: int, extra: dict[str, Callable] | None = None):
    """A strategy: ``seed`` with 1..max_edits random edits; ``extra`` adds named edits (draw, data) → None."""
    extra = extra or {}

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, max_edits))):
            if not data:
                break
            kind = draw(st.sampled_from(BYTE_EDITS + tuple(extra)))
            if kind in extra:
                extra[kind](draw, data)
            else:
                edit_bytes(draw, data, kind)
        return bytes(data)

    return mutate()
