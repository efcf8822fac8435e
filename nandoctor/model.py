"""Plain values that flow through nandoctor: tensor references, counts, findings, reports.

Frozen dataclasses only; this module imports nothing from the package so every
other module can depend on it. Values that need a decision (which findings
fail, the exit code) are made by ``verdict.py`` and stored here as a
:class:`Verdict`; nothing here decides.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# What the API takes as a path, and the progress callback every long job calls.
PathLike = str | os.PathLike[str]
ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


@dataclass(frozen=True, slots=True)
class BlockFields:
    """The scale fields of a block-quantized tensor (GGUF ``Q4_K`` …): the only bytes that can hold NaN/Inf.

    The region is a run of blocks of ``block_bytes`` bytes, each holding ``block_elems`` elements; in
    every block, ``count`` lanes of the region's dtype (fp16 ``d``/``dmin``, fp32, E8M0) start at byte
    ``offset``. ``packed``: the lane is assembled from bit fields (IQ1_M's fp16 scale, four nibbles of
    its block scales) rather than stored whole. The scan counts these lanes; the quantized payload is
    read but never tested.
    """

    kind: str  # the quantization type, e.g. "Q4_K"
    block_bytes: int
    block_elems: int
    offset: int
    count: int
    packed: bool = False

    def blocks_in(self, nbytes: int) -> int:
        return nbytes // self.block_bytes


@dataclass(frozen=True, slots=True)
class Region:
    """A contiguous run of bytes in one file holding elements of one dtype.

    A safetensors tensor is one region; a torch storage is one region that
    several tensors (views) may share. A block-quantized GGUF tensor is one
    region whose ``blocks`` say where the scale fields of ``dtype`` lie.
    """

    file: str
    offset: int  # absolute byte offset of the first element in ``file``
    nbytes: int
    dtype: str
    key: str  # unique within the file: the tensor name, or the torch storage key
    byteorder: str = "little"  # "big" for torch files saved on big-endian machines and big-endian GGUF
    blocks: BlockFields | None = None  # set for block-quantized tensors: only these fields are counted


@dataclass(frozen=True, slots=True)
class ChunkOf:
    """Where a stored chunk sits in its global tensor (DCP: one rank's shard of a sharded parameter)."""

    offsets: tuple[int, ...]  # the chunk's first element, in global coordinates
    global_shape: tuple[int, ...]
    # True: ``offsets`` is one flat C-order index and the chunk a 1-D run of the global tensor's elements
    # (a DeepSpeed ZeRO partition cuts a flattened parameter anywhere, not along dimensions)
    flat: bool = False


@dataclass(frozen=True, slots=True)
class TensorRef:
    """Where one named tensor's elements live, without reading them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    region: Region
    storage_offset: int = 0  # in elements, from the start of ``region``
    strides: tuple[int, ...] | None = None  # in elements; None means C-contiguous
    role: str = "weight"  # weight | buffer | optimizer | trainer (checkpoint/roles.py)
    order: str = "C"  # "C": the last dimension varies fastest; "F": the first (GGUF's ne0, ne1 …)
    experts: int = 0  # experts stacked along the slowest dimension (GGUF MoE ``*_exps``); 0: not a stack
    chunk: ChunkOf | None = None  # a chunk of a larger tensor: results are merged under ``name``

    @property
    def file(self) -> str:
        return self.region.file

    @property
    def counted(self) -> int:
        """How many values the counts are of: the elements, or a block-quantized tensor's scale fields."""
        blocks = self.region.blocks
        if blocks is None:
            return self.numel
        return blocks.blocks_in(self.region.nbytes) * blocks.count

    def coords(self, index: int) -> tuple[int, ...]:
        """The coordinates of flat ``index`` in this tensor's own dimension order."""
        if self.order == "F":
            return tuple(reversed(coords_of(index, tuple(reversed(self.shape)))))
        return coords_of(index, self.shape)

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
    def effective_strides(self) -> tuple[int, ...]:
        """The strides in elements, C-contiguous ones spelled out."""
        return self.strides if self.strides is not None else self.contiguous_strides

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
class Counts:
    """NaN, +Inf and -Inf counts: the one type every count of non-finite values is added up in."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.nan + other.nan, self.posinf + other.posinf, self.neginf + other.neginf)


@dataclass(frozen=True, slots=True)
class Outliers:
    """Finite elements far above their tensor's bulk scale: the bit-flip / silent-corruption signature."""

    count: int
    worst: float  # the largest outlier magnitude, signed as stored
    first: int  # flat (C-order) index of the first outlier
    threshold: float  # the magnitude they reached: bulk scale x outlier factor


_FAILING_FINDINGS = frozenset(("nonfinite", "exploded", "outlier"))


@dataclass(frozen=True, slots=True)
class TensorResult:
    """Counts and census of one tensor. ``first_bad`` is a flat index in the tensor's ``order``.

    For a block-quantized tensor the counts and census are of its scale fields, and ``first_bad``
    is the first element of the first block with a bad one.

    ``findings`` (``nonfinite``, ``exploded``, ``outlier``, ``zeroed``, ``overflow``) are
    decided by verdict.py from the counts, the census and the tensor's role.
    """

    ref: TensorRef
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int | None = None
    can_hold_nonfinite: bool = True
    overflow: int = 0  # finite values that become Inf/NaN when cast to the target dtype (--target-dtype)
    max_abs: float | None = None  # largest finite magnitude; None for integer tensors or none finite
    max_abs_exact: bool = True  # False: below 2.0 in a large tensor, the largest sampled magnitude
    zeros: int = 0  # elements that are exactly +0 or -0 (floating tensors)
    outliers: Outliers | None = None
    bulk_scale: float | None = None  # the robust magnitude of the tensor's bulk (kernels/census.py)
    exploded: int = 0  # finite elements above the absolute ceiling (--max-abs)
    experts: tuple[int, ...] = ()  # NaN/Inf per expert of a stacked-experts tensor that holds some
    findings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def role(self) -> str:
        return self.ref.role

    @property
    def counts(self) -> Counts:
        return Counts(self.nan, self.posinf, self.neginf)

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def bad(self) -> bool:
        """Holds NaN/Inf (whatever its role); see ``unhealthy`` for every finding."""
        return self.nonfinite > 0

    @property
    def unhealthy(self) -> bool:
        """Has a finding that fails by default (non-finite, exploded or outlier values)."""
        return not _FAILING_FINDINGS.isdisjoint(self.findings)  # (one C call: asked of every tensor)

    @property
    def fraction(self) -> float:
        """Bad values over the values counted (a block-quantized tensor's scale fields, not its elements)."""
        n = self.ref.counted
        return self.nonfinite / n if n else 0.0

    @property
    def first_bad_coords(self) -> tuple[int, ...] | None:
        return None if self.first_bad is None else self.ref.coords(self.first_bad)

    @property
    def first_bad_block(self) -> int | None:
        """For a block-quantized tensor: the block whose scale field is the first bad one."""
        blocks = self.ref.region.blocks
        return None if blocks is None or self.first_bad is None else self.first_bad // blocks.block_elems


def coords_of(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The C-order coordinates of flat ``index`` in ``shape``."""
    coords, rest = [], index
    for size in reversed(shape):
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
    """Something that could not be read, was invalid or was refused (each one makes the exit code 3).

    ``kind`` says which: ``unreadable`` (could not be read, invalid or refused: the default),
    ``hash`` (read, but not the bytes recorded for it), ``selection`` (``--only``/``--exclude``
    left nothing to scan), ``unverified`` (``--verify-hashes`` found no recorded sha256 for any
    weight file). Reports head their problem lists by it; verdict.py words the verdict by it.
    """

    path: str
    message: str
    hint: str = ""
    kind: str = "unreadable"


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
    owed: tuple[OwedCrc, ...] = ()  # checks left to the caller, who asked for that (nandoctor.crc)


@dataclass(frozen=True, slots=True)
class OwedCrc:
    """A zip entry's bytes and the CRC-32 its directory records: a check still to make (a torch storage)."""

    path: str
    label: str  # "data/0"
    offset: int  # absolute, in ``path``
    size: int
    expected: int
    tensors: str  # the tensors on it, listed for the message ("" when none)


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


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verdict.py decided about a report: the gate's answer and the words for it."""

    exit_code: int  # 0 pass, 1 a failing finding, 3 something unreadable
    words: str  # CLEAN, NON-FINITE, EXPLODED, OUTLIERS, … joined by " + "
    health: str  # healthy | poisoned | diverged | unreadable
    failing: tuple[str, ...] = ()  # the findings that fail the gate
    reported: tuple[str, ...] = ()  # findings present that do not fail (zeroed, trainer sentinels …)
    fail_on: frozenset[str] = frozenset()


@dataclass(frozen=True)  # no slots: the tie-deduplicated totals are cached on the instance
class ScanReport:
    """Everything one scan found. ``ok`` means every tensor was read and passes the default gate."""

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
    judgement: Verdict | None = None  # set by verdict.judged(); the properties below read it

    @property
    def bad_tensors(self) -> tuple[TensorResult, ...]:
        """Tensors whose NaN/Inf are a finding (a trainer-state sentinel such as ``kth_value = inf`` is not)."""
        return tuple(t for t in self.tensors if "nonfinite" in t.findings)

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

    def _verdict(self) -> Verdict:
        if self.judgement is None:
            raise ValueError("this report has no verdict yet; pass it through nandoctor.verdict.judged()")
        return self.judgement

    @property
    def ok(self) -> bool:
        return self._verdict().exit_code == 0

    @property
    def exit_code(self) -> int:
        return self._verdict().exit_code

    @property
    def verdict(self) -> str:
        return self._verdict().words

    @property
    def health(self) -> str:
        return self._verdict().health

    @property
    def unhealthy_tensors(self) -> tuple[TensorResult, ...]:
        return tuple(t for t in self.tensors if t.unhealthy)

    @property
    def gbps(self) -> float:
        return self.bytes_scanned / self.seconds / 1e9 if self.seconds > 0 else 0.0
