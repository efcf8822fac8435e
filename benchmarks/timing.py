"""Timing helpers the benchmark scripts share."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def best(fn: Callable[[], Any], runs: int) -> float:
    """The fastest of ``runs`` calls of ``fn``, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def warm(paths: Iterable[Path]) -> None:
    """Read every byte of ``paths`` once, so that the page cache holds them the same way for every way measured."""
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass
