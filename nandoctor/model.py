"""Plain values that flow through nandoctor: tensor references, counts, reports.

Frozen dataclasses only; this module imports nothing from the package so every
other module can depend on it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Region:
    """A contiguous run of bytes in one file holding elements of one dtype.

    A safetensors tensor is one region; a torch storage is one region that
    several tensors (views) may share.
    """

    file: str
    offset: int  # absolute byte offset of the first element in ``file``
    nbytes: int
    dtype: str
    key: str  # unique within the file: the tensor name, or the torch storage key
    byteorder: str = "little"  # "big" only for torch files saved on big-endian machines


@dataclass(frozen=True, slots=True)
class TensorRef:
    """Where one named tensor's elements live, without reading them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    region: Region
    storage_offset: int = 0  # in elements, from the start of ``region``
    strides: tuple[int, ...] | None = None  # in elements; None means C-contiguous

    @property
    def file(self) -> str:
        return self.region.file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def contiguous_strides(self) -> tuple[int, ...]:
        out, step = [], 1
        for size in reversed(self.shape):
            out.append(step)
            step *= size
        return tuple(reversed(out))

    @property
    def is_contiguous(self) -> bool:
        if self.strides is None:
            return True
        return all(st == cs for st, cs, n in zip(self.strides, self.contiguous_strides, self.shape) if n > 1)

    @property
    def elements_key(self) -> tuple[Any, ...]:
        """Equal for two refs that view exactly the same elements (tied weights saved as one storage)."""
        where = (self.region.file, self.region.key, self.region.dtype, self.storage_offset)
        if self.is_contiguous:  # the same span of the storage, whatever the shape (emb and emb.view(-1))
            return (*where, self.numel)
        return (*where, self.shape, self.strides)


@dataclass(frozen=True, slots=True)
class TensorResult:
    """NaN/Inf counts for one tensor. ``first_bad`` is a flat (C-order) index."""

    ref: TensorRef
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int | None = None
    can_hold_nonfinite: bool = True
    # Filled only when a scan is asked about a target dtype (--target-dtype):
    overflow: int = 0  # finite values that become Inf/NaN when cast to the target dtype
    max_abs: float | None = None  # largest finite magnitude seen

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def bad(self) -> bool:
        return self.nonfinite > 0

    @property
    def fraction(self) -> float:
        n = self.ref.numel
        return self.nonfinite / n if n else 0.0

    @property
    def first_bad_coords(self) -> tuple[int, ...] | None:
        if self.first_bad is None:
            return None
        coords, rest = [], self.first_bad
        for size in reversed(self.ref.shape):
            coords.append(rest % size if size else 0)
            rest = rest // size if size else 0
        return tuple(reversed(coords))


@dataclass(frozen=True, slots=True)
class UnviewedBad:
    """Non-finite values in storage bytes that no tensor views (torch files)."""

    file: str
    storage: str
    nan: int
    posinf: int
    neginf: int


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something that could not be read, was invalid or was refused."""

    path: str
    message: str
    hint: str = ""


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One file as a reader saw it: its tensors, plus what the report should say about the file.

    Readers that have more to say than a list of tensors (the torch reader: unknown
    globals turned into placeholders, a storage failing its CRC-32) offer a
    ``read(path) -> ReadResult`` method next to ``read_refs``.
    """

    refs: tuple[TensorRef, ...]
    notes: tuple[str, ...] = ()
    problems: tuple[ScanProblem, ...] = ()  # the file was read, but something in it is corrupt


@dataclass(frozen=True, slots=True)
class LayerSummary:
    """Counts for one group of tensors: a numbered layer, or a group outside the layers."""

    layer: str  # e.g. "transformer.h.21" or "transformer.wte"
    stack: str | None  # e.g. "transformer.h"; None for tensors outside any layer stack
    index: int | None
    tensors: int
    bad_tensors: int
    nan: int
    posinf: int
    neginf: int
    worst: str | None  # name of the tensor with the most non-finite values
    bad_components: tuple[str, ...] = ()

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def bad(self) -> bool:
        return self.bad_tensors > 0


@dataclass(frozen=True, slots=True)
class LayerRange:
    """Consecutive bad layers of one stack, for display: ``transformer.h.21–23``."""

    stack: str | None
    first: int | None
    last: int | None
    label: str
    tensors: int
    bad_tensors: int
    nonfinite: int


@dataclass(frozen=True)  # no slots: the tie-deduplicated totals are cached on the instance
class ScanReport:
    """Everything one scan found. ``ok`` means every tensor was read and is finite."""

    target: str
    files: tuple[str, ...]
    tensors: tuple[TensorResult, ...]
    layers: tuple[LayerSummary, ...]
    errors: tuple[ScanProblem, ...] = ()
    unviewed: tuple[UnviewedBad, ...] = ()
    notes: tuple[str, ...] = ()
    bytes_scanned: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bad_tensors(self) -> tuple[TensorResult, ...]:
        return tuple(t for t in self.tensors if t.bad)

    @property
    def bad_layers(self) -> tuple[LayerSummary, ...]:
        return tuple(layer for layer in self.layers if layer.bad)

    @functools.cached_property
    def distinct_bad_tensors(self) -> tuple[TensorResult, ...]:
        """Bad tensors, a tied copy (same elements as one listed before it) left out: what the totals add up."""
        seen: set[tuple[Any, ...]] = set()
        out = []
        for t in self.bad_tensors:
            key = t.ref.elements_key
            if key not in seen:
                seen.add(key)
                out.append(t)
        return tuple(out)

    @property
    def nan(self) -> int:
        return sum(t.nan for t in self.distinct_bad_tensors) + sum(u.nan for u in self.unviewed)

    @property
    def posinf(self) -> int:
        return sum(t.posinf for t in self.distinct_bad_tensors) + sum(u.posinf for u in self.unviewed)

    @property
    def neginf(self) -> int:
        return sum(t.neginf for t in self.distinct_bad_tensors) + sum(u.neginf for u in self.unviewed)

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def complete(self) -> bool:
        """True when every file was read; a report that is not complete is never 'clean'."""
        return not self.errors

    @property
    def ok(self) -> bool:
        return self.complete and self.nonfinite == 0

    @property
    def exit_code(self) -> int:
        # 3 wins over 1: an unread part could hide anything, so it is the stronger signal.
        if self.errors:
            return 3
        if self.nonfinite:
            return 1
        return 0

    @property
    def verdict(self) -> str:
        if self.errors and self.nonfinite:
            return "NON-FINITE + UNREADABLE"
        if self.errors:
            return "UNREADABLE"
        if self.nonfinite:
            return "NON-FINITE"
        return "CLEAN"

    @property
    def gbps(self) -> float:
        return self.bytes_scanned / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        from nandoctor.report.json_report import report_to_json  # late: keeps model import-free

        return report_to_json(self)
