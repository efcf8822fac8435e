"""Plain values that flow through nandoctor: tensor references, counts, findings, reports.

Frozen dataclasses only; this module imports nothing from the package so every
other module can depend on it. Values that need a decision (which findings
fail, the exit code) are made by ``verdict.py`` and stored here as a
:class:`Verdict`; nothing here decides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Generic, TypeVar, overload

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


PICKLED_FLOAT = "pickled float"  # the region key of a Python float read as a tensor (readers/torch/quantized.py)
QUANTIZER_SCALE = ".<scale>"  # the name suffix of a per-tensor quantized tensor's scale so read: the weight's own


def is_pickled_float(ref: TensorRef) -> bool:
    """Whether ``ref`` is a non-finite Python float of a pickle (an optimizer's learning rate), not a tensor: no
    repair restores it (a donor holds the finite value as a float no scan reads)."""
    return ref.region.key.startswith(PICKLED_FLOAT)


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
    def c_shape(self) -> tuple[int, ...]:
        """The shape in C order (the last dimension fastest): a GGUF tensor of ``ne`` [8, 4] holds the bytes of a
        safetensors or torch [4, 8] one, so two tensors hold alike-laid elements where their C shapes agree."""
        return tuple(self.shape) if self.order == "C" else tuple(reversed(self.shape))

    def row_major(self) -> TensorRef:
        """This tensor with its dimensions in C order, the same elements at the same bytes (a GGUF tensor of ``ne``
        [32, 64] is the C-contiguous [64, 32] array gguf's reader and torch give): what element-wise work across
        formats (diff, repair) lines up."""
        if self.order == "C":
            return self
        strides = None if self.strides is None else tuple(reversed(self.strides))
        return dataclasses.replace(self, shape=tuple(reversed(self.shape)), strides=strides, order="C")

    @property
    def counted(self) -> int:
        """How many values the counts are of: the elements, or a block-quantized tensor's scale fields."""
        blocks = self.region.blocks
        if blocks is None:
            return self.numel
        return blocks.blocks_in(self.region.nbytes) * blocks.count

    def coords(self, index: int) -> tuple[int, ...]:
        """The coordinates of flat ``index`` in this tensor's own dimension order."""
        return coords_of(index, self.shape, self.order)

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
        """Equal for two refs that view exactly the same elements in the same order (tied weights saved as one
        storage): restoring one restores the other, byte for byte."""
        where = (self.region.file, self.region.key, self.region.dtype, self.storage_offset)
        if self.is_contiguous:  # the same span of the storage, whatever the shape (emb and emb.view(-1))
            return (*where, self.numel)
        return (*where, self.shape, self.strides)

    @property
    def element_set_key(self) -> tuple[Any, ...]:
        """Equal for two refs that view the same set of elements, in any order (a weight and its transpose):
        what the totals count once. The set does not depend on the order of the dimensions: the (stride, size)
        pairs are taken sorted, and pairs that pack densely are the same span as the contiguous view."""
        if self.is_contiguous or self.strides is None:
            return self.elements_key
        where = (self.region.file, self.region.key, self.region.dtype, self.storage_offset)
        if self.is_dense:
            return (*where, self.numel)
        return (*where, tuple(sorted((stride, size) for size, stride in zip(self.shape, self.strides) if size != 1)))

    @property
    def is_dense(self) -> bool:
        """True when the view reads one run of its storage, each element once, in some order (contiguous,
        transposed, permuted): its (stride, size) pairs, taken sorted, pack densely."""
        if self.strides is None:
            return True
        packed = 1
        for stride, size in sorted((stride, size) for size, stride in zip(self.shape, self.strides) if size != 1):
            if stride != packed:
                return False
            packed *= size
        return True


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


_Row = TypeVar("_Row")


class _RowsOnDemand(Sequence[_Row], Generic[_Row]):
    """A sequence whose rows are frozen objects made from columns the first time each is asked for, and
    kept (asking twice gives the same object): RefTable's TensorRefs, TensorResults' TensorResults."""

    __slots__ = ()

    def _made(self) -> list[_Row | None]:
        """The rows made so far (None: not yet), one slot per row."""
        raise NotImplementedError

    def _make(self, index: int) -> _Row:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._made())

    @overload
    def __getitem__(self, index: int) -> _Row: ...

    @overload
    def __getitem__(self, index: slice) -> list[_Row]: ...

    def __getitem__(self, index: int | slice) -> _Row | list[_Row]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        made = self._made()
        row = made[index]
        if row is None:
            row = made[index] = self._make(index)
        return row

    def __iter__(self) -> Iterator[_Row]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        return _same_rows(self, other)

    __hash__ = None  # type: ignore[assignment]


class RefTable(_RowsOnDemand[TensorRef]):
    """Tensor references as columns: what the scan, the verdict and the reports read about every tensor,
    without a TensorRef object per tensor (a million small tensors of a safetensors file are a few lists).

    A row is either a TensorRef given as one (kept, and handed back as it is) or a *plain* tensor:
    C-contiguous, the one view of a region of its own at ``offsets[i]``, ``nbytes[i]`` bytes long,
    keyed by its name (a safetensors tensor). A plain row's TensorRef is made the first time it is
    asked for, and kept: asking twice gives the same object.
    """

    __slots__ = ("_refs", "blocks", "dtypes", "files", "names", "nbytes", "offsets", "orders", "roles", "shapes")

    def __init__(
        self, names: list[str], dtypes: list[str], shapes: list[tuple[int, ...]], files: list[str], roles: list[str],
        orders: list[str], blocks: list[BlockFields | None], offsets: array, nbytes: array,
        refs: list[TensorRef | None],
    ) -> None:
        self.names, self.dtypes, self.shapes, self.files, self.roles = names, dtypes, shapes, files, roles
        self.orders, self.blocks, self.offsets, self.nbytes, self._refs = orders, blocks, offsets, nbytes, refs

    @classmethod
    def plain(
        cls, file: str, names: list[str], dtypes: list[str], shapes: list[tuple[int, ...]], offsets: array,
        nbytes: array,
    ) -> RefTable:
        """The plain tensors of one file (roles: all weights until checkpoint/roles.py says otherwise)."""
        n = len(names)
        return cls(names, dtypes, shapes, [file] * n, ["weight"] * n, ["C"] * n, [None] * n, offsets, nbytes, [None] * n)

    @classmethod
    def of(cls, refs: Iterable[TensorRef]) -> RefTable:
        """Columns of TensorRef objects (each kept as its row)."""
        made = list(refs)
        n = len(made)
        return cls(
            [r.name for r in made], [r.dtype for r in made], [r.shape for r in made], [r.region.file for r in made],
            [r.role for r in made], [r.order for r in made], [r.region.blocks for r in made],
            array("q", bytes(8 * n)), array("q", bytes(8 * n)), list(made),
        )

    @staticmethod
    def concat(tables: Sequence[RefTable]) -> RefTable:
        if len(tables) == 1:
            return tables[0]
        joined: list[Any] = [[] for _ in range(8)] + [array("q"), array("q")]
        for t in tables:
            for column, part in zip(joined, t._columns()):
                column += part
        names, dtypes, shapes, files, roles, orders, blocks, refs, offsets, nbytes = joined
        return RefTable(names, dtypes, shapes, files, roles, orders, blocks, offsets, nbytes, refs)

    def _columns(self) -> tuple[Any, ...]:
        return (self.names, self.dtypes, self.shapes, self.files, self.roles, self.orders, self.blocks, self._refs,
                self.offsets, self.nbytes)

    def _made(self) -> list[TensorRef | None]:
        return self._refs

    def _make(self, index: int) -> TensorRef:
        name, dtype = self.names[index], self.dtypes[index]
        region = Region(self.files[index], self.offsets[index], self.nbytes[index], dtype, name)
        return TensorRef(name, dtype, self.shapes[index], region, role=self.roles[index])

    def made(self) -> list[tuple[int, TensorRef]]:
        """(row, ref) of the rows that exist as TensorRef objects (given, or asked for)."""
        return [(i, ref) for i, ref in enumerate(self._refs) if ref is not None]

    def take(self, rows: Sequence[int]) -> RefTable:
        """These rows only, in this order (made refs kept)."""
        picks = [[c[i] for i in rows] for c in self._columns()[:8]]
        offsets, nbytes = array("q", (self.offsets[i] for i in rows)), array("q", (self.nbytes[i] for i in rows))
        names, dtypes, shapes, files, roles, orders, blocks, refs = picks
        return RefTable(names, dtypes, shapes, files, roles, orders, blocks, offsets, nbytes, refs)

    def with_roles(self, roles: list[str]) -> RefTable:
        """The same rows with these roles (a made ref whose role changes is replaced)."""
        refs = [r if r is None or r.role == role else dataclasses.replace(r, role=role) for r, role in zip(self._refs, roles)]
        return RefTable(self.names, self.dtypes, self.shapes, self.files, roles, self.orders, self.blocks,
                        self.offsets, self.nbytes, refs)

    def with_dtypes(self, dtypes: list[str]) -> RefTable:
        """The same rows read as these dtypes of the same width (a made ref whose dtype changes is replaced)."""
        refs = [r if r is None or r.dtype == dtype else dataclasses.replace(
                    r, dtype=dtype, region=dataclasses.replace(r.region, dtype=dtype))
                for r, dtype in zip(self._refs, dtypes)]
        return RefTable(self.names, dtypes, self.shapes, self.files, self.roles, self.orders, self.blocks,
                        self.offsets, self.nbytes, refs)

    def numels(self) -> list[int]:
        """Elements of each row (worked out once per distinct shape)."""
        return list(map(_Numels().__getitem__, self.shapes))


class _Numels(dict):
    def __missing__(self, shape: tuple[int, ...]) -> int:
        self[shape] = value = math.prod(shape)
        return value


def _same_rows(table: Sequence[Any], other: object) -> bool:
    """Sequence equality, row by row (a table equals the tuple or list of the same rows)."""
    if not isinstance(other, (tuple, list, _RowsOnDemand)):
        return False
    return len(table) == len(other) and all(a == b for a, b in zip(table, other))


# TensorResult's fields after ``ref``, in order: the columns of TensorResults.
RESULT_COLUMNS = tuple(f.name for f in dataclasses.fields(TensorResult) if f.name != "ref")


class TensorResults(_RowsOnDemand[TensorResult]):
    """A report's tensor results as columns, one list per TensorResult field, with their refs as a RefTable.

    The verdict, the layer summary and the JSON report read the columns (a million small tensors need no
    million objects); anything else sees a sequence of TensorResult. A row given as a TensorResult is kept
    and handed back as it is; another is made the first time it is asked for, and kept.
    """

    __slots__ = ("_flagged", "_largest", "_rows", "bulk_scale", "can_hold_nonfinite", "experts", "exploded", "findings",
                 "first_bad", "max_abs", "max_abs_exact", "nan", "neginf", "outliers", "overflow", "posinf", "refs",
                 "zeros")

    refs: RefTable
    nan: list[int]
    posinf: list[int]
    neginf: list[int]
    first_bad: list[int | None]
    can_hold_nonfinite: list[bool]
    overflow: list[int]
    max_abs: list[float | None]
    max_abs_exact: list[bool]
    zeros: list[int]
    outliers: list[Outliers | None]
    bulk_scale: list[float | None]
    exploded: list[int]
    experts: list[tuple[int, ...]]
    findings: list[tuple[str, ...]]

    def __init__(self, refs: RefTable, columns: Sequence[list[Any]], rows: list[TensorResult | None] | None = None):
        self.refs = refs
        for name, column in zip(RESULT_COLUMNS, columns, strict=True):
            setattr(self, name, column)
        self._rows: list[TensorResult | None] = [None] * len(refs) if rows is None else rows
        self._flagged: list[int] | None = None
        self._largest: dict[str | None, float | None] = {}

    @classmethod
    def of(cls, results: Iterable[TensorResult]) -> TensorResults:
        """Columns of TensorResult objects (each kept as its row)."""
        if isinstance(results, TensorResults):
            return results
        rows = list(results)
        columns = [list(map(getter, rows)) for getter in _RESULT_GETTERS]
        return cls(RefTable.of(r.ref for r in rows), columns, list(rows))

    @staticmethod
    def concat(parts: Sequence[TensorResults]) -> TensorResults:
        if len(parts) == 1:
            return parts[0]
        columns: list[list[Any]] = [[] for _ in RESULT_COLUMNS]
        rows: list[TensorResult | None] = []
        for part in parts:
            for column, name in zip(columns, RESULT_COLUMNS):
                column += getattr(part, name)
            rows += part._rows
        return TensorResults(RefTable.concat([p.refs for p in parts]), columns, rows)

    def _made(self) -> list[TensorResult | None]:
        return self._rows

    def _make(self, index: int) -> TensorResult:
        return TensorResult(self.refs[index], *(getattr(self, n)[index] for n in RESULT_COLUMNS))

    def rows(self, indices: Iterable[int]) -> tuple[TensorResult, ...]:
        return tuple(self[i] for i in indices)

    def with_findings(self, findings: list[tuple[str, ...]]) -> TensorResults:
        """The same results with these findings (rows already made are replaced where theirs differ)."""
        rows = [
            r if r is None or r.findings == f else dataclasses.replace(r, findings=f) for r, f in zip(self._rows, findings)
        ]
        columns = [findings if name == "findings" else getattr(self, name) for name in RESULT_COLUMNS]
        return TensorResults(self.refs, columns, rows)

    def with_columns(self, changed: Mapping[str, list[Any]]) -> TensorResults:
        """The same results with the ``changed`` columns (by field name) in place of theirs; rows already made
        are made again where they differ."""
        differ = {i for name, column in changed.items() for i, (was, now) in enumerate(zip(getattr(self, name), column))
                  if was != now}
        rows = [None if i in differ else r for i, r in enumerate(self._rows)]
        columns = [changed.get(name, getattr(self, name)) for name in RESULT_COLUMNS]
        return TensorResults(self.refs, columns, rows)

    @property
    def flagged(self) -> list[int]:
        """Rows with some finding, in order (worked out once)."""
        if self._flagged is None:
            self._flagged = [i for i, found in enumerate(self.findings) if found]
        return self._flagged

    def with_finding(self, finding: str) -> tuple[TensorResult, ...]:
        findings = self.findings
        return self.rows(i for i in self.flagged if finding in findings[i])

    def with_any(self, wanted: Iterable[str]) -> tuple[TensorResult, ...]:
        """Rows with one of the ``wanted`` findings, in order."""
        wanted, findings = frozenset(wanted), self.findings
        return self.rows(i for i in self.flagged if not wanted.isdisjoint(findings[i]))

    def largest(self, role: str | None = None) -> float | None:
        """The largest ``max_abs`` (of the tensors of ``role``); None when none has one (worked out once)."""
        if role not in self._largest:
            if role is None or self.refs.roles.count(role) == len(self.refs.roles):
                values = [value for value in self.max_abs if value is not None]
            else:
                values = [value for value, its in zip(self.max_abs, self.refs.roles) if value is not None and its == role]
            self._largest[role] = max(values) if values else None
        return self._largest[role]

    def unhealthy_rows(self) -> list[int]:
        """Rows with a finding that fails by default (see TensorResult.unhealthy), in order."""
        findings = self.findings
        return [i for i in self.flagged if not _FAILING_FINDINGS.isdisjoint(findings[i])]

    def unhealthy(self) -> tuple[TensorResult, ...]:
        return self.rows(self.unhealthy_rows())


_RESULT_GETTERS = tuple(attrgetter(name) for name in RESULT_COLUMNS)


def coords_of(index: int, shape: tuple[int, ...], order: str = "C") -> tuple[int, ...]:
    """The coordinates of flat ``index`` in ``shape``: C order (the last dimension fastest), or ``"F"`` (the
    first fastest: GGUF's ne0, ne1 …, as :attr:`TensorRef.order` says). The one coordinate function that
    every report uses (scan, diff, JSON)."""
    if order == "F":
        return tuple(reversed(coords_of(index, tuple(reversed(shape)))))
    coords, rest = [], index
    for size in reversed(shape):
        coords.append(rest % size if size else 0)
        rest = rest // size if size else 0
    return tuple(reversed(coords))


@dataclass(frozen=True, slots=True)
class UnviewedBad:
    """Non-finite values no tensor holds, in a torch file: in storage bytes that no tensor views (``kind``
    ``storage``: ``storage`` is the storage's key), in a numpy array pickled in the file (``numpy``:
    ``storage`` is the array's name), or in a tensor of a ``torch.save`` stream pickled in the file as an
    ``io.BytesIO`` value (``stream``: ``storage`` is the value's name, then the tensor's; readers/torch/nested.py).
    torch.load loads them all the same; no repair by name restores them."""

    file: str
    storage: str
    nan: int
    posinf: int
    neginf: int
    kind: str = "storage"

    def label(self) -> str:
        """Where they are, in words: ``storage 3 of model.bin`` / ``numpy array 'stats.mean' in model.bin``."""
        if self.kind == "numpy":
            return f"numpy array {self.storage!r} in {self.file}"
        if self.kind == "stream":
            return f"tensor {self.storage!r} of a torch.save stream pickled in {self.file}"
        return f"storage {self.storage} of {self.file}"

    @property
    def pickled(self) -> bool:
        """A value pickled in the file (a numpy array, a torch.save stream): fixed where it is computed, not by
        re-saving the file's tensors."""
        return self.kind in ("numpy", "stream")

    def what(self) -> str:
        """What holds them, in a few words."""
        return {"numpy": "a numpy array", "stream": "a torch.save stream pickled in the file"}.get(
            self.kind, "bytes no tensor views")


# What stopped a checkpoint being judged (``ScanProblem.kind``, exit 3): defined here, beside the problem, so that
# readers name a problem's kind without reaching up to verdict.py, which words the verdict by it.
UNREADABLE_KIND, HASH_KIND, SELECTION_KIND, UNVERIFIED_KIND = "unreadable", "hash", "selection", "unverified"
EMPTY_KIND = "empty"
# weights under names the model does not load: a run's checkpoint whose tensor names differ from its neighbours'
# (checkpoint/runs.py), a weight config.json's model needs stored under another name (checkpoint/architecture.py)
NAMES_KIND = "names"
# the words that mark a note of torch's default load refusing a file (readers/torch/weights_only.py writes them,
# verdict.py finds them)
DEFAULT_LOAD_REFUSES = "torch.load's default (weights_only=True)"
UNLOADABLE_KIND = "unloadable"  # read, but the folder would not load as a checkpoint (checkpoint/loadability.py)
# it loads, but a config it is built from (config.json, generation_config.json, a GGUF's hyperparameters, a Lightning
# checkpoint's hyper_parameters) holds NaN/Infinity or a value that makes generate raise or the forward pass NaN
CONFIG_KIND = "config"
# the local base model a PEFT adapter alone is applied to could not be read, or fails to load as a whole
# (nandoctor/adapterbase.py): the adapted model cannot be called finite either
BASE_KIND = "base"
# A negative epsilon makes a norm NaN only where a hidden state's mean square is below |eps|: at 1e-3 and beyond
# that is most tokens' embeddings (trained embeddings' mean squares are ~1e-4 to 1e-3); -1e-6 changes nothing.
# One bound for config.json's epsilons (checkpoint/configvalues.py) and a GGUF's (readers/gguf_hparams.py).
EPS_HARMFUL = -1e-3
# float32's largest finite value (a larger config value is Inf once a model computes with it) and the magnitude at
# and below which a value rounds to 0 in float32 (half its smallest subnormal)
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_ZERO = 2.0**-150


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something that could not be read, was invalid or was refused (each one makes the exit code 3).

    ``kind`` says which: ``unreadable`` (could not be read, invalid or refused: the default),
    ``hash`` (read, but not the bytes recorded for it), ``names`` (a checkpoint of a run whose model tensor
    names differ from its neighbours': checkpoint/runs.py), ``selection`` (``--only``/``--exclude``
    left nothing to scan), ``unverified`` (``--verify-hashes`` found no recorded sha256 for any
    weight file), ``empty`` (no tensors to check), ``unloadable`` (the folder would not load as a checkpoint:
    checkpoint/loadability.py), ``config`` (it loads, but a config file it is built from holds NaN/Infinity or a
    value that makes generate raise or the forward pass NaN: checkpoint/loadconfig.py), ``base`` (the local base model a
    PEFT adapter alone is applied to could not be read, or its own scan found a problem: adapterbase.py). Reports head their problem lists by it; verdict.py words the
    verdict by it.
    """

    path: str
    message: str
    hint: str = ""
    kind: str = "unreadable"
    tensors: tuple[str, ...] = ()  # the tensors it leaves unread or not exactly counted, where it names some


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One file as a reader saw it: its tensors, plus what the report should say about the file.

    Readers that have more to say than a list of tensors (the torch reader: unknown
    globals turned into placeholders, a storage failing its CRC-32) offer a
    ``read(path) -> ReadResult`` method next to ``read_refs``.
    """

    refs: Sequence[TensorRef]  # a tuple, or a RefTable (safetensors: columns, not an object per tensor)
    notes: tuple[str, ...] = ()
    problems: tuple[ScanProblem, ...] = ()  # the file was read, but something in it is corrupt
    owed: tuple[OwedCrc, ...] = ()  # checks left to the caller, who asked for that (nandoctor.crc)
    unviewed: tuple[UnviewedBad, ...] = ()  # NaN/Inf outside every tensor found while reading (numpy arrays)
    # a pickled dict with no tensor at its top and a state dict under this key ({"model": state_dict, "epoch": 3}):
    # what a loader that takes the dict for the state dict finds none of the weights in (checkpoint/nestedstate.py)
    nested_under: str | None = None


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
    reported: tuple[str, ...] = ()  # findings present that do not fail (what --fail-on leaves out, trainer sentinels …)
    fail_on: frozenset[str] = frozenset()
    # a PEFT adapter alone's base model (adapterbase.py): its findings that fail under ``fail_on``, and those only
    # reported (``diverged`` where it is diverged by growth alone); ``failing`` is of the adapter's own tensors
    base_failing: tuple[str, ...] = ()
    base_reported: tuple[str, ...] = ()


@dataclass(frozen=True)  # no slots: the tie-deduplicated totals are cached on the instance
class ScanReport:
    """Everything one scan found. ``ok`` means every tensor was read and passes the default gate."""

    target: str
    files: tuple[str, ...]
    tensors: TensorResults  # (any sequence of TensorResult is taken, and made a TensorResults)
    layers: tuple[LayerSummary, ...]
    errors: tuple[ScanProblem, ...] = ()
    unviewed: tuple[UnviewedBad, ...] = ()
    notes: tuple[str, ...] = ()
    bytes_scanned: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    judgement: Verdict | None = None  # set by verdict.judged(); the properties below read it

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, TensorResults):
            object.__setattr__(self, "tensors", TensorResults.of(self.tensors))

    @property
    def bad_tensors(self) -> tuple[TensorResult, ...]:
        """Tensors whose NaN/Inf are a finding (a trainer-state sentinel such as ``kth_value = inf`` is not)."""
        return self.tensors.with_finding("nonfinite")

    @property
    def bad_layers(self) -> tuple[LayerSummary, ...]:
        return tuple(layer for layer in self.layers if layer.bad)

    @functools.cached_property
    def distinct_bad_tensors(self) -> tuple[TensorResult, ...]:
        """Bad tensors, a tied copy (same elements as one listed before it) left out: what the totals add up."""
        seen: set[tuple[Any, ...]] = set()
        out = []
        for t in self.bad_tensors:
            key = t.ref.element_set_key
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
        return self.tensors.unhealthy()

    @property
    def gbps(self) -> float:
        return self.bytes_scanned / self.seconds / 1e9 if self.seconds > 0 else 0.0
