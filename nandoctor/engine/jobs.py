"""What the scan reads and what it found: one job per byte region, tallies per view, results per tensor.

A region (a safetensors tensor, a torch storage) is read once, whatever number
of tensors view it. NaN/Inf are attributed to each view that sees them; the
health census of a region is attributed to views that read the whole region
in order (a tensor, or tied weights saved as one storage). Once every chunk is
in, the outlier pass reads again the few high segments that may hold values far
above the tensor's own bulk (kernels/census.py); any other view of a floating
region (a transpose, a slice, q/k/v split from one fused storage) then gets a
census of its own (viewcensus.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nandoctor.blockfields import elements_per_lane, weight_ceiling
from nandoctor.checkpoint.roles import is_variance
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.kernels import OverflowCounts
from nandoctor.kernels.census import (
    Census,
    HealthLimits,
    LaneInfo,
    lane_info,
    signed_value,
)
from nandoctor.kernels.targets import (
    TargetSpec,
    checks_overflow,
    decode_magnitude,
    threshold_bits,
)
from nandoctor.model import Outliers, Region, TensorRef, TensorResult, UnviewedBad
from nandoctor.views import covers_whole_region, unattributable


@dataclass(slots=True)  # slots: one per tensor, a million of them for a million small tensors
class Tally:
    """NaN/Inf of one view, merged from chunks (and overflow counts with a target dtype)."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first_bad: int | None = None
    overflow: int = 0
    max_bits: int = -1  # largest finite magnitude from the overflow pass; -1: none seen

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    def add_overflow(self, counts: OverflowCounts) -> None:
        self.overflow += counts.overflow
        self.max_bits = max(self.max_bits, counts.max_bits)

    def add(self, nan: int, posinf: int, neginf: int, first: int | None) -> None:
        self.nan += nan
        self.posinf += posinf
        self.neginf += neginf
        if first is not None and (self.first_bad is None or first < self.first_bad):
            self.first_bad = first

    def merge(self, other: Tally) -> None:
        """Add the tally of another share of the same view (engine/split.py)."""
        self.add(other.nan, other.posinf, other.neginf, other.first_bad)
        self.overflow += other.overflow
        self.max_bits = max(self.max_bits, other.max_bits)


@dataclass(slots=True)
class OutlierFind:
    count: int = 0
    first_lane: int = -1
    worst_raw: int = 0
    worst_mag: int = -1
    threshold: int = -1
    first_exploded_lane: int = -1  # the first value above the ceiling the pass read (no outlier: exploded)


@dataclass(slots=True)
class ViewCensus:
    """The census of one view that does not read its region whole and in order (viewcensus.py)."""

    census: Census
    outliers: OutlierFind | None = None
    first: int = -1  # the view's own (C-order) index of its first outlier


@dataclass(slots=True)
class RegionJob:
    """One region to read, the views of it, and everything found in it."""

    region: Region
    spec: DTypeSpec
    views: list[TensorRef]
    direct: bool  # one view covering the whole region: counts need no attribution
    threshold: int | None = None  # overflow threshold in source magnitude bits (target dtype given)
    info: LaneInfo | None = None  # floating regions: what the census needs
    # The dtype's own exploded ceiling where a cast target lowered info's (fp16's 2^14 for weights that load as
    # fp16): a value above the lowered ceiling that the cast overflows is the overflow finding's, not exploded
    own_ceiling: float | None = None
    tallies: list[Tally] = field(default_factory=list)
    outliers: OutlierFind | None = None
    # (start, length) in bytes: the share of a region cut across parts (engine/split.py) that this scan
    # reads; None: all of it. A cut region's tallies and census are partial until its parts are merged.
    span: tuple[int, int] | None = None
    own: dict[int, ViewCensus] | None = None  # view slot → its own census (viewcensus.py); made when needed
    # view slots whose elements cannot be told apart (views.unattributable): not attributed, refused by a problem
    refused: frozenset[int] = frozenset()
    # Made when first asked for: a small region gets its census whole from its batch, and almost never
    # has unviewed bytes, so a million small tensors need not hold a spare Census and Tally each.
    _census: Census | None = None
    _unviewed: Tally | None = None

    @property
    def census(self) -> Census:
        if self._census is None:
            self._census = Census()
        return self._census

    @census.setter
    def census(self, value: Census) -> None:
        self._census = value

    @property
    def high(self) -> bool:
        """Some segment reached the high level (where outliers can be); asked without making a census."""
        return self._census is not None and bool(self._census.high_segments)

    @property
    def unviewed(self) -> Tally:
        if self._unviewed is None:
            self._unviewed = Tally()
        return self._unviewed

    @property
    def span_bytes(self) -> tuple[int, int]:
        """(start, length) in bytes of what this scan reads of the region."""
        return self.span if self.span is not None else (0, self.region.nbytes)

    @property
    def fast_checkable(self) -> bool:
        """Read whole by one view, with no overflow pass, no byte swap and no scale fields to gather:
        one fast check of its raw bytes answers it."""
        return (
            self.direct and self.threshold is None and self.region.byteorder == "little" and self.region.blocks is None
            and not (self.info is not None and self.info.nonnegative)  # (a variance's census counts its negatives)
        )

    def element_of(self, lane: int) -> int:
        """The flat element index that lane ``lane`` of the region speaks for: for a block-quantized
        tensor the first element of the lane's block, else the element holding the lane."""
        fields = self.region.blocks
        if fields is not None:
            return lane // fields.count * fields.block_elems
        return lane // self.spec.lanes_per_element


def plan_jobs(refs: list[TensorRef], limits: HealthLimits, cast_to: TargetSpec | None = None) -> list[RegionJob]:
    by_region: dict[tuple[str, str], RegionJob] = {}
    for ref in refs:
        region = ref.region
        key = (region.file, region.key)
        job = by_region.get(key)
        if job is None:
            job = by_region[key] = RegionJob(region, DTYPES[region.dtype], [], True)
        job.views.append(ref)
    # What depends only on the dtype, worked out once per dtype rather than once per region.
    per_dtype: dict[str, tuple[LaneInfo | None, int | None, float | None]] = {}
    loads_as = cast_to.loads_as if cast_to is not None else None
    for job in by_region.values():
        views, spec = job.views, job.spec
        blocks = job.region.blocks is not None  # its one tensor is the whole region; its lanes are the scale fields
        job.direct = len(views) == 1 and (blocks or covers_whole_region(views[0], spec.bits))
        if not job.direct:
            job.refused = frozenset(slot for slot, view in enumerate(views) if unattributable(view) is not None)
        job.tallies = [Tally() for _ in views]
        facts = per_dtype.get(spec.name)
        if facts is None:
            floating = checks_overflow(spec)
            own, lowered = limits.ceiling(spec.name), limits.ceiling(spec.name, loads_as)
            facts = per_dtype[spec.name] = (
                lane_info(spec, lowered) if floating else None,
                threshold_bits(spec, cast_to) if floating and cast_to is not None else None,
                own if lowered < own else None,
            )
        job.info = facts[0]
        # (a variance's negatives are counted: one tensor, or a flat buffer of them, ZeRO's exp_avg_sq partition,
        # each of whose views then gets its own census)
        if job.info is not None and not blocks and all(is_variance(view.name, view.role) for view in views):
            job.info = lane_info(spec, limits.ceiling(spec.name), nonnegative=True)
        if not blocks:  # a cast dequantizes: the scales themselves are never cast
            job.threshold, job.own_ceiling = facts[1], facts[2]
        elif job.info is not None:  # (the ceiling is the weights': a scale field's own is lower by the codes' range)
            job.info = lane_info(spec, weight_ceiling(limits.ceiling(spec.name), job.region.blocks))
    return list(by_region.values())


def results(jobs: list[RegionJob], order: list[TensorRef]) -> tuple[list[TensorResult], list[UnviewedBad]]:
    """The result of every ref, in ``order``; and the bad bytes no view sees.

    Empties ``jobs``: each job is dropped once its results exist, so the census and tallies of a
    million small tensors are not held beside their results.
    """
    by_ref: dict[int, TensorResult] = {}
    unviewed = []
    # What depends only on the dtype, looked up once per dtype, not once per tensor.
    per_spec: dict[str, tuple[bool, int]] = {}
    jobs.reverse()  # popped from the end: in the original order
    while jobs:
        job = jobs.pop()
        spec = job.spec
        facts = per_spec.get(spec.name)
        if facts is None:
            facts = per_spec[spec.name] = (spec.can_hold_nonfinite, spec.lanes_per_element)
        can_hold, per = facts
        health = _health(job, per)
        blocks = job.region.blocks is not None
        own = job.own or {}
        for slot, (view, tally) in enumerate(zip(job.views, job.tallies)):
            if job.direct or covers_whole_region(view, spec.bits):
                extra = health
            else:  # (a view that got no census of its own: viewcensus.census_refused, and says so in a note)
                extra = _health(job, per, own[slot]) if slot in own else {}
            searched = job.outliers if job.direct or covers_whole_region(view, spec.bits) else (
                own[slot].outliers if slot in own else None)
            if (extra and job.own_ceiling is not None and tally.overflow and (extra["max_abs"] or 0) <= job.own_ceiling
                    and not (searched is not None and searched.threshold >= 0)):
                # (see own_ceiling) unless its top stands out of its bulk by the outlier factor (the outlier pass ran):
                # then the values the cast overflows are a corruption's, exploded as well, and the tensor is poisoned,
                # not only too wide for fp16 (a new user's trial: one 70,000 among weights of 0.02 read "healthy,
                # serve it wider" under --target-dtype fp16, and OUTLIERS, repair it, without)
                extra = {**extra, "exploded": max(0, extra["exploded"] - tally.overflow)}
            if tally.max_bits >= 0 and job.threshold is not None:  # the overflow pass read every value
                extra = {**extra, "max_abs": decode_magnitude(spec, tally.max_bits), "max_abs_exact": True}
            first_bad = tally.first_bad
            found = job.outliers
            if first_bad is None and found is not None and found.first_exploded_lane >= 0 and extra.get("exploded") and (
                    job.direct or covers_whole_region(view, spec.bits)):
                # (no NaN/Inf: the first bad element is the first exploded value, where the outlier pass read one;
                # a value above the ceiling is no outlier to locate it by)
                first_bad = job.element_of(found.first_exploded_lane)
            elif first_bad is not None and blocks:
                first_bad = job.element_of(first_bad)  # the counts are of scale fields; point at the block
            by_ref[id(view)] = TensorResult(
                view,
                tally.nan,
                tally.posinf,
                tally.neginf,
                first_bad,
                can_hold,
                overflow=tally.overflow,
                **extra,
            )
        u = job._unviewed
        if u is not None and (u.nan or u.posinf or u.neginf):
            unviewed.append(UnviewedBad(job.region.file, job.region.key, u.nan, u.posinf, u.neginf))
    return [by_ref[id(ref)] for ref in order], unviewed


def _health(job: RegionJob, per: int, own: ViewCensus | None = None) -> dict:
    """The census of a whole region, or ``own``: one view's, as TensorResult fields (element indices, not
    lanes); ``per``: the dtype's lanes per element."""
    info = job.info
    if info is None or job.region.nbytes == 0:
        return {}
    census, found = (job.census, job.outliers) if own is None else (own.census, own.outliers)
    bits, exact = census.max_bits()
    out: dict = {
        "max_abs": decode_magnitude(job.spec, bits) if bits >= 0 else None,
        "max_abs_exact": exact,
        "zeros": census.zeros // per,
        "exploded": census.exploded + census.negatives,  # (a variance's negative values: verdict._variance_rows)
        "bulk_scale": census.bulk_scale(job.spec, info, elements_per_lane(job.region.blocks)),
    }
    if found is not None and found.count:
        out["outliers"] = Outliers(
            found.count,
            signed_value(job.spec, info, found.worst_raw),
            job.element_of(found.first_lane) if own is None else own.first,
            decode_magnitude(job.spec, found.threshold),
        )
    return out
