"""``--only GLOB`` / ``--exclude GLOB``: which tensors of a checkpoint are scanned, by name.

Applied once, where a checkpoint is opened (``open_checkpoint``), so a scan, a
run's timeline and anything else that opens a checkpoint see the same tensors.
Patterns are shell globs (``fnmatch``, case-sensitive) on the full dotted name,
where ``*`` also crosses dots: ``--exclude 'callbacks.*'``,
``--only 'state_dict.*'``. What is left out is counted and reported, never
dropped in silence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Selection:
    """Tensors named by any ``only`` pattern (all when none), minus those named by any ``exclude`` pattern."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.only or self.exclude)

    def keeps(self, name: str) -> bool:
        if self.only and not any(fnmatchcase(name, p) for p in self.only):
            return False
        return not any(fnmatchcase(name, p) for p in self.exclude)

    def describe(self) -> str:
        """The options as typed, for notes and messages: ``--only 'state_dict.*' --exclude '*.bias'``."""
        parts = [f"--only {p!r}" for p in self.only] + [f"--exclude {p!r}" for p in self.exclude]
        return " ".join(parts)

    def to_json(self) -> dict[str, list[str]]:
        return {"only": list(self.only), "exclude": list(self.exclude)}


def selection(only: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> Selection | None:
    """A :class:`Selection` from the option values, or None when both are empty; ValueError for an empty pattern."""
    only_t = (only,) if isinstance(only, str) else tuple(only or ())  # one pattern given as a plain string
    exclude_t = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    if any(not p for p in only_t + exclude_t):
        raise ValueError("--only / --exclude take a non-empty glob such as 'callbacks.*'")
    chosen = Selection(only_t, exclude_t)
    return chosen if chosen else None


def of_report(extra: dict[str, object]) -> Selection | None:
    """The selection a report was scanned with (its ``extra["excluded"]``: engine), or None."""
    value = extra.get("excluded")
    if not isinstance(value, dict):
        return None
    only, exclude = value.get("only"), value.get("exclude")
    chosen = Selection(tuple(p for p in only if isinstance(p, str)) if isinstance(only, list) else (),
                       tuple(p for p in exclude if isinstance(p, str)) if isinstance(exclude, list) else ())
    return chosen if chosen else None


__all__ = ["Selection", "of_report", "selection"]
