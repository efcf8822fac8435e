"""Timing helpers the benchmark scripts share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best(fn: Callable[[], Any], runs: int) -> float:
    """The fastest of ``runs`` calls of ``fn``, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)
