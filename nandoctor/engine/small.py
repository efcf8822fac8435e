"""A safetensors file's small tensors scanned as columns: no job, part, census or result object each.

The tensors of a RefTable file (checkpoint/ → readers/safetensors.py) below ``SMALL_REGION_BYTES`` are
what a checkpoint of a million one-element tensors is made of (and a real model's norms and biases).
They are cut into the batches the job path cuts (``work.batch_bounds``, in file order), and a worker
reads each run of adjacent tensors of one dtype in a batch at once (``work.run_census``, the job path's
own): the largest magnitude and the zero lanes of every tensor in two vectorised reductions. A tensor
that needs more (alone in its run, holding NaN/Inf, or reaching the high level where exploded values and
outliers are) is read whole as the job path reads it, and becomes a RegionJob once the file is scanned:
the outlier pass and ``jobs.results`` finish it like any other. The rest stays in arrays until
:meth:`SmallTensors.results` makes the report's columns, tensor for tensor what the job path gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from nandoctor.checkpoint.roles import is_variance
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.engine.jobs import RegionJob, plan_jobs
from nandoctor.engine.work import SMALL_REGION_BYTES, ChunkResult, batch_bounds, direct_findings, read_whole, run_census
from nandoctor.kernels import Kernel
from nandoctor.kernels.census import HealthLimits, LaneInfo, decode_magnitudes, lane_info
from nandoctor.model import RESULT_COLUMNS, RefTable, TensorResult, TensorResults
from nandoctor.sources import BufferFor, ChunkSource


@dataclass(eq=False)
class SmallTensors:
    """The small floating tensors of one file (``rows`` of its RefTable, in file order) and what was found:
    per position in ``rows``, the largest finite magnitude (-1: not read) and the zero lanes, or the
    result of reading it whole (``whole``)."""

    table: RefTable
    kinds: np.ndarray  # each row's dtype: an index into specs and infos
    specs: list[DTypeSpec]  # the table's distinct dtypes
    infos: list[LaneInfo | None]  # (None for a dtype that cannot hold NaN/Inf: no position has one)
    rows: np.ndarray
    offsets: np.ndarray  # absolute, per position
    nbytes: np.ndarray
    codes: np.ndarray  # dtype of each position (kinds[rows])
    tops: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    whole: dict[int, ChunkResult] = field(default_factory=dict)
    # per position: a variance (roles.is_variance), whose negative values are counted; None when the file holds none
    variance: np.ndarray | None = None
    variance_infos: list[LaneInfo | None] = field(default_factory=list)  # (each dtype's, LaneInfo.nonnegative)

    def __post_init__(self) -> None:
        self.tops = np.full(self.rows.size, -1, np.int64)
        self.zeros = np.zeros(self.rows.size, np.int64)

    @property
    def total_bytes(self) -> int:
        return int(self.nbytes.sum())

    def batches(self, chunk_bytes: int) -> list[SmallBatch]:
        return [SmallBatch(self, first, last) for first, last in batch_bounds(self.nbytes, chunk_bytes)]

    def merge(self, found: SmallFound) -> None:
        """What a worker found in one batch (on the pipeline's thread)."""
        self.tops[found.first : found.first + found.tops.size] = found.tops
        self.zeros[found.first : found.first + found.zeros.size] = found.zeros
        self.whole.update(found.whole)

    def jobs(self, limits: HealthLimits) -> list[RegionJob]:
        """The tensors read whole, as the jobs the job path would have made of them, with what they hold."""
        positions = sorted(self.whole)
        jobs = plan_jobs([self.table[int(self.rows[p])] for p in positions], limits)
        for position, job in zip(positions, jobs):
            self.whole[position].apply_to(job, job.region.nbytes)
        return jobs

    def results(self, objects: dict[int, TensorResult]) -> TensorResults:
        """Every row's result, as columns: ``objects`` (row → result) for the tensors scanned as jobs (the large
        ones, and those read whole); the small floating ones from the arrays; the rest hold no NaN/Inf."""
        table, codes, specs = self.table, self.kinds, self.specs
        n = len(table)
        floating = _floating(specs)[codes]
        read = np.zeros(n, dtype=bool)
        tops = np.full(n, -1, np.int64)
        zeros = np.zeros(n, np.int64)
        tops[self.rows], zeros[self.rows] = self.tops, self.zeros
        read[self.rows] = self.tops >= 0
        nonempty = np.frombuffer(table.nbytes, np.int64) > 0
        # A region read: its exact largest magnitude; one not read (its file failed): none, and not exact.
        magnitudes = np.full(n, np.nan)
        for code, spec in enumerate(specs):
            at = np.flatnonzero((codes == code) & read & nonempty)
            if at.size:
                magnitudes[at] = decode_magnitudes(spec, tops[at])
                zeros[at] //= spec.lanes_per_element
        exact = ~(floating & nonempty & ~read)
        max_abs = [None if m != m else m for m in magnitudes.tolist()]
        columns: dict[str, list] = {
            "nan": [0] * n, "posinf": [0] * n, "neginf": [0] * n, "first_bad": [None] * n,
            "can_hold_nonfinite": floating.tolist(), "overflow": [0] * n, "max_abs": max_abs,
            "max_abs_exact": exact.tolist(), "zeros": zeros.tolist(), "outliers": [None] * n, "bulk_scale": [None] * n,
            "exploded": [0] * n, "experts": [()] * n, "findings": [()] * n,
        }
        rows: list[TensorResult | None] = [None] * n
        for row, result in objects.items():
            rows[row] = result
            for name in RESULT_COLUMNS:
                columns[name][row] = getattr(result, name)
        return TensorResults(table, [columns[name] for name in RESULT_COLUMNS], rows)


def plan_small(table: RefTable, limits: HealthLimits) -> tuple[SmallTensors, list[int]]:
    """The small floating tensors of ``table``, and the rows of the large floating ones (for jobs). Tensors
    that cannot hold NaN/Inf are neither: there is nothing to read in them."""
    code_of = {name: code for code, name in enumerate(dict.fromkeys(table.dtypes))}
    kinds = np.fromiter(map(code_of.__getitem__, table.dtypes), np.intp, len(table))
    specs = [DTYPES[name] for name in code_of]
    floating = _floating(specs)[kinds]
    offsets = np.frombuffer(table.offsets, np.int64)
    nbytes = np.frombuffer(table.nbytes, np.int64)
    small = floating & (nbytes < SMALL_REGION_BYTES)
    rows = np.flatnonzero(small)
    rows = rows[np.argsort(offsets[rows], kind="stable")]  # file order; equal offsets (empty ones) as listed
    infos = [lane_info(spec, limits.ceiling(spec.name)) if spec.can_hold_nonfinite else None for spec in specs]
    found = SmallTensors(table, kinds, specs, infos, rows, offsets[rows], nbytes[rows], kinds[rows])
    roles = table.roles
    if "buffer" in roles or "optimizer" in roles:  # (a C scan: most files hold no variance, roles.is_variance)
        names = table.names
        variance = np.zeros(len(table), dtype=bool)
        variance[[i for i, role in enumerate(roles) if role != "weight" and is_variance(names[i], role)]] = True
        found.variance = variance[rows]
        found.variance_infos = [lane_info(spec, limits.ceiling(spec.name), nonnegative=True)
                                if spec.can_hold_nonfinite else None for spec in specs]
    return found, np.flatnonzero(floating & ~small).tolist()


def negative_runs(data: np.ndarray, spec: DTypeSpec, starts: np.ndarray, sizes: np.ndarray,
                  variance: np.ndarray) -> list[int]:
    """Of adjacent small tensors read as one (``starts``/``sizes`` in bytes), the variances whose lanes include one
    with its sign bit set: to be read whole, their negative values counted (a -0.0 or -NaN costs that read only)."""
    lane_bytes = spec.lane_bits // 8
    signed = data.view(np.dtype(f"i{lane_bytes}"))
    nonempty = sizes > 0
    at = np.flatnonzero(variance & nonempty)
    if at.size == 0:
        return []
    lows = np.minimum.reduceat(signed, starts[nonempty] // lane_bytes)  # (one per non-empty tensor, in order)
    low_of = np.zeros(starts.size, dtype=lows.dtype)
    low_of[nonempty] = lows
    return np.flatnonzero(variance & nonempty & (low_of < 0)).tolist()


def _floating(specs: list[DTypeSpec]) -> np.ndarray:
    """Per dtype: can it hold NaN/Inf (a floating dtype: the only ones read)."""
    return np.array([spec.can_hold_nonfinite for spec in specs], dtype=bool)


@dataclass(frozen=True, slots=True)
class SmallBatch:
    """A worker's task: positions [first, last) of a file's small tensors."""

    small: SmallTensors
    first: int
    last: int

    @property
    def absolute(self) -> int:
        return int(self.small.offsets[self.first])

    @property
    def length(self) -> int:
        last = self.last - 1
        return int(self.small.offsets[last] + self.small.nbytes[last]) - self.absolute

    @property
    def nbytes(self) -> int:
        return int(self.small.nbytes[self.first : self.last].sum())


@dataclass(frozen=True, slots=True)
class SmallFound:
    first: int
    tops: np.ndarray
    zeros: np.ndarray
    whole: dict[int, ChunkResult]


def scan_small(source: ChunkSource, batch: SmallBatch, kernel: Kernel, buffers: BufferFor) -> SmallFound:
    """One worker task: each run of adjacent tensors of one dtype in ``batch`` read at once (work.run_census);
    a tensor alone in its run, or one that run_census says needs it, read whole (work.read_whole)."""
    small, first, last = batch.small, batch.first, batch.last
    offsets, nbytes, codes = small.offsets[first:last], small.nbytes[first:last], small.codes[first:last]
    tops = np.full(last - first, -1, np.int64)
    zeros = np.zeros(last - first, np.int64)
    whole: dict[int, ChunkResult] = {}
    # Runs break where the dtype changes or bytes lie between (a large tensor, or one with no NaN to hold).
    breaks = np.flatnonzero((codes[1:] != codes[:-1]) | (offsets[1:] != offsets[:-1] + nbytes[:-1])) + 1
    bounds = [0, *breaks.tolist(), last - first]
    for a, b in pairwise(bounds):
        spec, info = small.specs[codes[a]], small.infos[codes[a]]
        assert info is not None  # (only floating tensors are scanned as columns)
        begin = int(offsets[a])
        data = source.read(begin, int(offsets[b - 1] + nbytes[b - 1]) - begin, buffers)
        try:
            if b - a == 1:
                alone = [0]
                tops[a], zeros[a] = 0, 0
            else:
                starts = offsets[a:b] - begin
                tops[a:b], zeros[a:b], alone = run_census(data, spec, info, starts, kernel)
            variance = small.variance[first + a : first + b] if small.variance is not None else None
            if variance is not None and variance.any() and b - a > 1:  # (one signed minimum per tensor of the run)
                alone = sorted({*alone, *negative_runs(data, spec, offsets[a:b] - begin, nbytes[a:b], variance)})
            for k in alone:
                at = int(offsets[a + k]) - begin
                nonnegative = variance is not None and bool(variance[k])
                counts, census = read_whole(data[at : at + int(nbytes[a + k])], spec,
                                            small.variance_infos[codes[a]] if nonnegative else info, kernel)
                whole[first + a + k] = ChunkResult(direct_findings(counts, 0), census=census)
        finally:
            del data  # an exported buffer would stop the mmap from closing
    return SmallFound(first, tops, zeros, whole)
