"""The CRC-32 checks a scan owes (torch storages), paid from the chunks it reads anyway.

Before a file's chunks go out, each is *claimed* for the storage entry it lies in
when it adds bytes not claimed there yet (a storage read as two dtypes is read
twice; only the first read counts). What no chunk claims — an integer storage
the scan does not read, a tensor left out by ``--only``, a trailing partial
element — is read as *gaps*, for their CRC-32 alone, so every byte of every
owed entry is covered exactly once. Pieces come back on the pipeline's thread
in submission order, which is not file order (small regions go out in
batches); each entry folds its pieces in order of offset with
``crc32_combine``, so the result is the same whichever thread finished first.
Verdicts (``crc.mismatch``: the same problem the separate pass gives) are
given when the file is closed, for the entries read whole.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from nandoctor import crc
from nandoctor.model import OwedCrc, ScanProblem


@dataclass
class _Entry:
    owed: OwedCrc
    claimed: int  # absolute end of the last claim: claims come in file order, none overlapping
    claims: list[tuple[int, int]] = field(default_factory=list)  # (absolute, length)
    folded: int = 0  # absolute offset up to which pieces are folded into ``value``
    value: int = 0
    early: dict[int, tuple[int, int]] = field(default_factory=dict)  # pieces past ``folded``: at -> (length, crc)

    @property
    def end(self) -> int:
        return self.owed.offset + self.owed.size


class CrcLedger:
    """The owed checks of one file, and the pieces of each found so far."""

    def __init__(self, owed: Sequence[OwedCrc]) -> None:
        self.entries = [_Entry(o, o.offset, folded=o.offset) for o in sorted(owed, key=lambda o: o.offset)]
        self.starts = [e.owed.offset for e in self.entries]

    def _entry(self, absolute: int) -> _Entry | None:
        i = bisect_right(self.starts, absolute) - 1
        return self.entries[i] if i >= 0 and absolute < self.entries[i].end else None

    def claim(self, absolute: int, length: int) -> bool:
        """True when the chunk [absolute, absolute + length) is to count toward its entry's check."""
        if not self.entries or not length:
            return False
        entry = self._entry(absolute)
        if entry is None or absolute + length > entry.end or absolute < entry.claimed:
            return False
        entry.claims.append((absolute, length))
        entry.claimed = absolute + length
        return True

    def gaps(self, piece_bytes: int) -> Iterator[tuple[int, int]]:
        """(absolute, length) of the owed bytes no claim covers, in file order, at most ``piece_bytes`` each."""
        for entry in self.entries:
            at = entry.owed.offset
            for start, length in [*entry.claims, (entry.end, 0)]:
                for piece in range(at, start, piece_bytes):
                    yield piece, min(piece_bytes, start - piece)
                at = start + length

    def add(self, absolute: int, length: int, value: int) -> None:
        """The CRC-32 of a claimed chunk or a gap, in whatever order they finish."""
        entry = self._entry(absolute)
        assert entry is not None, "a piece outside every owed entry"
        entry.early[absolute] = (length, value)
        while entry.folded in entry.early:
            n, piece = entry.early.pop(entry.folded)
            entry.value = crc.crc32_combine(entry.value, piece, n)
            entry.folded += n

    def problems(self) -> list[ScanProblem]:
        """The verdict of every entry read whole (one not read whole belongs to a file that failed, which
        is reported as such)."""
        found = (crc.mismatch(e.owed, e.value) for e in self.entries if e.folded == e.end)
        return [p for p in found if p is not None]


__all__ = ["CrcLedger"]
