"""Reading the JSON beside the weights (shard indexes, trainer_state.json, proofs, verdicts) safely.

Regular files only (opening a FIFO would wait forever for a writer), bounded in size, and nesting
bombs refused as invalid JSON instead of escaping as RecursionError. Every failure is an OSError
or a ValueError, which callers turn into a message naming the file. A number read from such a file
goes through :func:`number` (JSON's integers have no limit: ``float()`` or ``math.isfinite`` of a
400-digit one raises OverflowError).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 256 << 20  # a trainer_state.json of a very long run is a few MB; indexes far less
# What parsing may build: ~100 bytes of Python objects per JSON container, ~40 per value. A crafted 100 MB file
# of empty objects ([{},{},…]) took 2.7 GB; a million-step trainer_state.json logged every step has ~1M objects
# and ~6M values, well below.
MAX_JSON_CONTAINERS = 4_000_000
MAX_JSON_VALUES = 16_000_000


def loads(text: str | bytes, **options: Any) -> Any:
    """``json.loads`` whose nesting bombs raise ValueError like any other invalid JSON."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def number(value: Any) -> float | None:
    """A JSON value as a float when it is a number (NaN/Inf kept; an integer too large for a float is ±inf,
    never OverflowError); None for anything else (``true`` included: bool is an int in Python)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def finite_number(value: Any) -> float | None:
    """:func:`number` when it is finite, else None."""
    found = number(value)
    return found if found is not None and math.isfinite(found) else None


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES, *, follow_links: bool = True) -> Any:
    """Parse the JSON file at ``path``; OSError when it cannot be read, ValueError when it is not JSON.
    ``follow_links=False`` for a file nandoctor itself writes (a run's baseline, a callback's verdict): it
    is never a link, so a link planted at its name is refused (OSError), never followed out of the folder."""
    fd = _open_regular(path, follow_links)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"{Path(path).name} is {size:,} bytes, over the {limit:,}-byte limit")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 8 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ValueError(f"{Path(path).name} grew past the {limit:,}-byte limit while it was read")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    _bounded(Path(path).name, data)
    return loads(data.decode("utf-8"))


def read_ends(path: str | os.PathLike[str], head: int, tail: int) -> tuple[bytes, bytes, int]:
    """The first ``head`` bytes, the last ``tail`` bytes and the size of the regular file at ``path``, for a
    file too large to parse whole on every scan (OSError / ValueError as :func:`read_json`)."""
    fd = _open_regular(path, follow_links=True)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, min(head, size), 0), os.pread(fd, min(tail, size), max(0, size - tail)), size
    finally:
        os.close(fd)


def _open_regular(path: str | os.PathLike[str], follow_links: bool) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO opens at once instead of blocking
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{Path(path).name} is not a regular file")
    return fd


def _bounded(name: str, data: bytes) -> None:
    """ValueError when parsing ``data`` could build more objects than the limits allow (counted over the bytes,
    strings included: an overestimate, in two C passes)."""
    containers = data.count(b"{") + data.count(b"[")
    values = data.count(b",")
    if containers > MAX_JSON_CONTAINERS or values > MAX_JSON_VALUES:
        raise ValueError(f"{name} holds {containers:,} objects/arrays and {values:,} values, over the "
                         f"{MAX_JSON_CONTAINERS:,} / {MAX_JSON_VALUES:,} this reader builds; not read")
