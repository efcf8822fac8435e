"""What a diff found: one :class:`TensorDiff` per tensor name, layer summaries, and the exit code.

Plain frozen values; the status words and the exit code are decided here and
nowhere else (reports render them). A tensor is only called ``identical`` or
``equal`` when every one of its elements was read on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nandoctor.errors import EXIT_NONFINITE, EXIT_OK, EXIT_UNREADABLE
from nandoctor.model import LayerRange, LayerSummary, ScanProblem, coords_of

# Per-tensor statuses.
IDENTICAL = "identical"  # the same bytes
EQUAL = "equal"  # the same values, other bytes (±0, NaN payloads, byte order, layout)
CAST = "cast"  # another dtype, every value its rounding (fp32 → bf16): not a corruption
CHANGED = "changed"  # some values differ
SHAPE = "shape"  # another shape: not compared element by element
ONLY_A = "only_a"
ONLY_B = "only_b"
TIED = "tied"  # present on one side only, rebuilt by loaders from a tied partner (lm_head ↔ embeddings)
UNREADABLE = "unreadable"

STATUSES = (IDENTICAL, EQUAL, CAST, CHANGED, SHAPE, ONLY_A, ONLY_B, TIED, UNREADABLE)
SAME = frozenset({IDENTICAL, EQUAL, TIED})  # exit 0 when every tensor is one of these


@dataclass(frozen=True, slots=True)
class Change:
    """Where one extreme change sits: flat index (in the tensor's order), its coordinates, the two values."""

    index: int
    coords: tuple[int, ...]
    a: float
    b: float
    amount: float  # |a - b|, or |a - b| / |b| (B is the reference) for the relative change


@dataclass(frozen=True, slots=True)
class TensorDiff:
    """One tensor name compared across A and B."""

    name: str
    status: str
    name_b: str | None = None  # B's name when it differs by a wrapper prefix (module., model. …)
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    file_a: str | None = None
    file_b: str | None = None
    numel: int = 0
    order: str = "C"  # A's dimension order: "F" for GGUF (ne0 first), as the scan gives coordinates
    order_b: str = "C"  # B's: a GGUF ``ne`` [32, 64] is the same tensor as a row-major [64, 32]
    changed: int | None = None  # elements that differ (beyond rounding for a dtype change); None: not compared
    blocks: int | None = None  # block-quantized (GGUF), compared block by block: its blocks
    changed_blocks: int | None = None  # … and those that differ (``changed`` is None: elements not decoded)
    # The largest absolute and relative change among the ``changed`` elements: across a dtype change, roundings
    # are left out (they are not changes), so an element rounded by more can lie elsewhere: ``max_abs_all``
    max_abs: Change | None = None
    max_rel: Change | None = None
    max_abs_all: Change | None = None  # the largest |a - b| of all elements finite on both sides, roundings included
    rounding: float | None = None  # largest |a - b| accepted as the rounding of a dtype change
    # NaN/Inf in A where B is finite (block-quantized: scale fields, as the scan counts them); None: not known
    nonfinite_a_only: int | None = None
    nonfinite_b_only: int | None = None  # NaN/Inf in B where A is finite
    first_nonfinite_a_only: int | None = None
    first_nonfinite_b_only: int | None = None
    compared_bytes: bool = False  # decided by comparing bytes alone (no element was decoded)
    tied_to: str | None = None  # TIED: the partner on the same side
    message: str | None = None  # UNREADABLE: why

    @property
    def same(self) -> bool:
        return self.status in SAME

    @property
    def first_nonfinite_a_only_coords(self) -> tuple[int, ...] | None:
        """Where the first NaN/Inf only in A sits, in coordinates (as the extreme changes are given)."""
        return self._coords(self.first_nonfinite_a_only)

    @property
    def first_nonfinite_b_only_coords(self) -> tuple[int, ...] | None:
        return self._coords(self.first_nonfinite_b_only)

    def _coords(self, index: int | None) -> tuple[int, ...] | None:
        return None if index is None else coords_of(index, self.shape_a or self.shape_b or (), self.order)

    @property
    def dtype_changed(self) -> bool:
        return self.dtype_a is not None and self.dtype_b is not None and self.dtype_a != self.dtype_b


@dataclass(frozen=True)
class DiffReport:
    """A compared with B: every tensor's :class:`TensorDiff`, what could not be read, layer ranges."""

    a: str
    b: str
    tensors: tuple[TensorDiff, ...]
    problems: tuple[ScanProblem, ...] = ()
    notes: tuple[str, ...] = ()
    layers: tuple[LayerSummary, ...] = ()  # bad_tensors = tensors not the same (changed, cast, missing …)
    changed_ranges: tuple[LayerRange, ...] = ()  # consecutive layers holding changed or missing tensors
    cast_ranges: tuple[LayerRange, ...] = ()  # consecutive layers whose only difference is a dtype cast
    bytes_read: int = 0  # both sides together
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.problems and not any(t.status == UNREADABLE for t in self.tensors)

    @property
    def same(self) -> bool:
        return self.complete and all(t.same for t in self.tensors)

    @property
    def exit_code(self) -> int:
        if not self.complete:
            return EXIT_UNREADABLE  # 3: never "same" for something not read
        return EXIT_OK if self.same else EXIT_NONFINITE  # 1: something differs

    @property
    def verdict(self) -> str:
        if not self.complete:
            return "INCOMPLETE"
        if self.same:
            return "SAME"
        only_casts = all(t.same or t.status == CAST for t in self.tensors)
        return "CAST" if only_casts else "DIFFERENT"

    def with_status(self, *statuses: str) -> tuple[TensorDiff, ...]:
        return tuple(t for t in self.tensors if t.status in statuses)
