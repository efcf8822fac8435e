"""Lists in messages: the first few names and how many more, one way everywhere a message names things."""

from __future__ import annotations

from collections.abc import Sequence


def first_few(names: Sequence[str], shown: int, *, quoted: bool = False) -> str:
    """``a, b, c and 4 more``: the first ``shown`` of ``names`` (``repr``'d when ``quoted``: names from a file,
    where a space or an empty name must stay visible), then how many were left out."""
    listed = ", ".join(repr(n) if quoted else n for n in names[:shown])
    more = len(names) - shown
    return listed + (f" and {more} more" if more > 0 else "")


__all__ = ["first_few"]
