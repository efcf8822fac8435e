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


def body_edits(body_start: int, specials: list[bytes]) -> dict[str, Callable]:
    """Edits that keep the file's structure and change tensor bytes only (from ``body_start`` on): a
    flipped bit, a random byte, or a non-finite bit pattern written over an element. Without them
    nearly every uniform edit lands in the header and only tests its refusal, never the counts."""

    def flip_body(draw: Callable, data: bytearray) -> None:
        if len(data) > body_start:
            data[draw(st.integers(body_start, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))

    def set_body(draw: Callable, data: bytearray) -> None:
        if len(data) > body_start:
            data[draw(st.integers(body_start, len(data) - 1))] = draw(st.integers(0, 255))

    def special_body(draw: Callable, data: bytearray) -> None:
        pattern = draw(st.sampled_from(specials))
        if len(data) >= body_start + len(pattern):
            pos = draw(st.integers(body_start, len(data) - len(pattern)))
            data[pos : pos + len(pattern)] = pattern

    return {"flip_body": flip_body, "set_body": set_body, "special_body": special_body}


def byte_mutations(
    seed: bytes, max_edits: int, extra: dict[str, Callable] | None = None, only_extra: bool = False
):
    """A strategy: ``seed`` with 1..max_edits random edits; ``extra`` adds named edits (draw, data) → None;
    ``only_extra`` draws from the extra edits alone."""
    extra = extra or {}
    kinds = tuple(extra) if only_extra else BYTE_EDITS + tuple(extra)

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, max_edits))):
            if not data:
                break
            kind = draw(st.sampled_from(kinds))
            if kind in extra:
                extra[kind](draw, data)
            else:
                edit_bytes(draw, data, kind)
        return bytes(data)

    return mutate()
