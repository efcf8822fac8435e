"""Whether a donor's copy of a tensor is an earlier state of the target's: the correlation of their values.

A repair matches donor tensors by name, shape and dtype. An earlier checkpoint of the same run agrees closely
with the target's intact values (fine-tuning moves weights little; even training from scratch keeps them well
correlated with where they were), while a tensor of another run or a fresh initialisation of the same model is
uncorrelated with them (|r| ~ 1/sqrt(n)). A trial's mistyped ``--from`` — another run of the same architecture —
replaced a tensor that held one NaN with unrelated weights, with no word. For each tensor restored because of a
few bad values (NaN/Inf, outliers: the rest of it is the real weights), the values at evenly spaced runs of the
two copies are compared; a correlation below :data:`UNRELATED` is said in a note (the repair stands: the copy
fits, and only the user knows where it came from). A tensor restored with too little of its own values left to
compare (all NaN, all zero, blown up whole: an adversarial round restored an all-NaN ``o_proj`` and ``model.norm``
from a fresh initialisation with no word) is judged by its donor instead: up to :data:`_SIBLINGS` other weight
tensors that both hold, healthy in the target and not taken by the repair, sampled the same way; their median
correlation below :data:`UNRELATED` is the same doubt.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nandoctor.checkpoint.roles import WEIGHT
from nandoctor.errors import NandoctorError
from nandoctor.kernels.census import DEFAULT_MAX_ABS
from nandoctor.model import ScanReport, TensorRef
from nandoctor.restore.convert import as_float32, can_cast, cast_bytes
from nandoctor.restore.plan import DonorCatalog, DonorInfo, RepairPlan, donor_matches
from nandoctor.restore.tensorbytes import byte_range, itemsize
from nandoctor.verdict import NONFINITE, OUTLIER
from nandoctor.wording import first_few

UNRELATED = 0.05  # below this, the two copies share nothing: unrelated weights give |r| ~ 0.004 at the sample size
_RUNS = 64  # runs of contiguous elements read from each copy
_RUN = 1024  # elements per run: a sample of up to 65,536 values in 64 reads
_FEWEST = 256  # fewer finite pairs than this: no judgement
_FLOATS = ("F16", "BF16", "F32", "F64")
_FEWEST_COMPARED = 16  # healthy elements compared, fewer: no evidence that a restored tensor was trained apart
_SIBLINGS = 8  # the donor's other tensors compared where a restored one has too little of its own left: 8 reads at most


def correlation(target_path: str, target: TensorRef, donor_path: str, donor: TensorRef) -> float | None:
    """The rank correlation (Spearman's) of the target's and the donor's values at the same elements (where both are
    finite), read at evenly spaced runs; None where it cannot be told (not both contiguous plain floats of one element count, too
    few finite values, a constant copy)."""
    pair = _paired(target_path, target, donor_path, donor)
    if pair is None:
        return None
    a, b = _ranks(pair[0]), _ranks(pair[1])
    if a.size < _FEWEST or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _paired(target_path: str, target: TensorRef, donor_path: str, donor: TensorRef,
            fewest: int = _FEWEST) -> tuple[np.ndarray, np.ndarray] | None:
    """The target's and the donor's values at the same evenly spaced runs of elements, where both are finite; None
    where they cannot be read so (not both contiguous plain floats of one element count, too few elements)."""
    spans = byte_range(target), byte_range(donor)
    if (target.dtype not in _FLOATS or donor.dtype not in _FLOATS or target.region.blocks is not None
            or donor.region.blocks is not None or target.region.byteorder != "little"
            or donor.region.byteorder != "little" or spans[0] is None or spans[1] is None):
        return None
    count = spans[0][1] // itemsize(target)
    if count != spans[1][1] // itemsize(donor) or count < fewest:
        return None
    run = min(_RUN, count)
    starts = np.unique(np.linspace(0, count - run, min(_RUNS, max(1, count // run))).astype(np.int64))
    a = _sample(target_path, target, spans[0][0], starts, run)
    b = _sample(donor_path, donor, spans[1][0], starts, run)
    if a is None or b is None:
        return None
    both = np.isfinite(a) & np.isfinite(b)
    return a[both], b[both]


def _otherwise_different(target: TensorRef, donor: TensorRef) -> bool | None:
    """Whether the target's copy differs from the donor's beyond its damage: in more than 1 % of the elements sampled
    where the target's own value is healthy (finite, not zero, not above the exploded ceiling): trained apart from
    it, not the same tensor damaged (a backup copy of the target: NaN in a few values, or scaled whole by 1e30, or
    zeroed, a review found, leaves no healthy element that differs). None: no evidence either way, too few finite
    elements sampled (NaN/Inf throughout: a merged adapter's changed tensors after it went NaN)."""
    pair = _paired(target.file, target, donor.file, donor, _FEWEST_COMPARED)
    if pair is None:
        return False
    ours, theirs = pair[0], _cast_like(pair[1], donor, target)
    healthy = (ours != 0) & (np.abs(ours) <= DEFAULT_MAX_ABS)
    if np.count_nonzero(healthy) < _FEWEST_COMPARED:
        # (scaled or zeroed whole is the same tensor damaged as far as anything tells: no doubt; NaN/Inf throughout
        # leaves nothing at all to tell by)
        return None if np.count_nonzero(np.isfinite(ours)) < _FEWEST_COMPARED else False
    return bool(np.count_nonzero(ours[healthy] != theirs[healthy]) > 0.01 * np.count_nonzero(healthy))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank: the correlation of ranks (Spearman's) is the one a few wild values cannot move (the very
    outliers a repair restores: one value of 500 among weights of 0.02 made Pearson's r of a good donor 0.00)."""
    ranks = np.empty(values.size, np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks


def _sample(path: str, ref: TensorRef, offset: int, starts: np.ndarray, run: int) -> np.ndarray | None:
    item = itemsize(ref)
    pieces = []
    try:
        with open(path, "rb", buffering=0) as fh:
            for start in starts.tolist():
                raw = os.pread(fh.fileno(), run * item, offset + start * item)
                if len(raw) != run * item:
                    return None  # (cut short: the scan and the writer say so)
                pieces.append(as_float32(np.frombuffer(raw, np.uint8), ref.dtype))
    except OSError:
        return None
    return np.concatenate(pieces)


def unlike_notes(plan: RepairPlan, report: ScanReport, catalogs: Sequence[DonorCatalog]) -> tuple[str, ...]:
    """Notes on the donor copies unlike the tensors they replace: among those restored for a few bad values (NaN/Inf,
    outliers: the rest of each is the real weights, which an earlier state agrees with), each copy against the
    target's own values; a donor of tensors with too little of their own values left (all NaN, zeroed, blown up) by
    its other tensors (:func:`_unlike_donor`). A tied copy restored through its partner, or from the target itself,
    is the same values."""
    notes = []
    blind: dict[int, list[str]] = {}  # donor index → restored tensors with too little of their own left to compare
    for r in plan.restorations:
        donor = plan.donors[r.donor]
        if r.reason != "bad" or r.via is not None or donor.own:
            continue
        few_bad = set(r.findings) <= {NONFINITE, OUTLIER}
        found = correlation(r.target_ref.file, r.target_ref, r.donor_ref.file, r.donor_ref) if few_bad else None
        if found is None:
            blind.setdefault(r.donor, []).append(r.name)
        elif found < UNRELATED:
            notes.append(f"{r.name}: the copy from {donor.path} is unlike the target's own values (correlation "
                         f"{found:.2f}, where an earlier checkpoint of the same run agrees closely): check that the "
                         "donor is this model's")
    for index, names in blind.items():
        donor = plan.donors[index]
        catalog = _catalog_of(donor, catalogs)
        judged = _unlike_donor(plan, report, catalog) if catalog is not None else None
        if judged is not None:
            notes.append(
                f"{first_few(names, 2)}: restored from {donor.path} with too little of the target's own values left to "
                f"compare the copy with, and {judged[1]} other weight tensor(s) both hold (healthy, not restored) are "
                f"unlike the target's (median correlation {judged[0]:.2f}, where an earlier checkpoint of the same run "
                f"agrees closely): {donor.path} looks like another model (another run, a fresh initialisation); "
                "restore from an earlier checkpoint of this model instead")
    return tuple(notes)


def _unlike_donor(plan: RepairPlan, report: ScanReport, catalog: DonorCatalog) -> tuple[float, int] | None:
    """(the median correlation, tensors compared) where the donor's copies of up to :data:`_SIBLINGS` weight tensors
    the repair does not take (healthy in the target: no finding; of one name and shape in both; at evenly spaced
    places in the target's order) are unlike the target's (median below :data:`UNRELATED`); None where they are
    alike or nothing could be compared. The median: one tensor of a real earlier checkpoint that moved far (a head
    trained from scratch) does not make the donor another model."""
    refs, flagged = report.tensors.refs, set(report.tensors.flagged)
    restored = {r.name for r in plan.restorations}
    healthy = [i for i in range(len(refs)) if i not in flagged and refs.roles[i] == WEIGHT
               and refs.names[i] not in restored and math.prod(refs.shapes[i]) >= _FEWEST]
    theirs = donor_matches(catalog, (refs.names[i] for i in healthy))  # (none where the donor cannot be read)
    both = [i for i in healthy if refs.names[i] in theirs and theirs[refs.names[i]].shape == refs.shapes[i]]
    picked = sorted({both[int(k)] for k in np.linspace(0, len(both) - 1, min(_SIBLINGS, len(both)))}) if both else []
    found = [r for r in (correlation(refs[i].file, refs[i], theirs[refs.names[i]].file, theirs[refs.names[i]])
                         for i in picked) if r is not None]
    if not found:
        return None
    median = float(np.median(found))
    return (median, len(found)) if median < UNRELATED else None


def _catalog_of(donor: DonorInfo, catalogs: Sequence[DonorCatalog]) -> DonorCatalog | None:
    """The catalog the plan's ``donor`` was read from (by its path, or its label as the user gave it)."""
    return next((c for c in catalogs if donor.path in (str(getattr(c, "path", "")), c.label)), None)


def whole_model_donor(plan: RepairPlan, report: ScanReport) -> tuple[str, int] | None:
    """(the donor, how many weight tensors) where the repair restores every weight tensor of the target (two or more)
    from one donor: the result is that donor's model under the target's name and its training state (step,
    optimizer, schedule), no repair of the target (a helper's trial: ``--allow-diverged`` on a checkpoint NaN
    throughout read ✓ REPAIRED, checkpoint-12's weights labelled step 30); None otherwise."""
    weights = {t.name for t in report.tensors if t.ref.role == WEIGHT}
    restored = {r.name for r in plan.restorations if r.name in weights}
    donors = {plan.donors[r.donor].path for r in plan.restorations if r.name in weights and not plan.donors[r.donor].own}
    return (donors.pop(), len(weights)) if len(weights) >= 2 and restored == weights and len(donors) == 1 else None




@dataclass(frozen=True)
class DonorAlready:
    """A repair whose kept weight tensors hold its one donor's values already (:func:`donor_already`)."""

    donor: str
    restored: int
    kept: int
    # True: the restored tensors differed from the donor's beyond their damage (a doubt: the target's own training is
    # gone); False: they were bad throughout, nothing tells whether they differed (a note: a backup copy of the donor,
    # or a fine-tune whose changed tensors all went NaN, such as a merged adapter's)
    differed: bool


def donor_already(plan: RepairPlan, report: ScanReport, catalogs: Sequence[DonorCatalog]) -> DonorAlready | None:
    """Where every weight tensor the repair restores comes from one donor and every one it keeps holds that donor's
    bytes already: the result is the donor's model, the restored tensors were all that told the target from it (a
    helper's trial: a merged LoRA model repaired from its base model, as the scan's hint offered, read ✓ REPAIRED and
    was the base model whole; another's merged model had every changed tensor NaN throughout); None otherwise, and
    for a backup copy of the target (its restored tensors the donor's but for their damage)."""
    weights = {t.name: t.ref for t in report.tensors if t.ref.role == WEIGHT}
    restored = [r for r in plan.restorations if r.name in weights]
    sources = {r.donor for r in restored}
    if not restored or len(sources) != 1 or plan.donors[next(iter(sources))].own:
        return None
    donor = plan.donors[next(iter(sources))]
    catalog = _catalog_of(donor, catalogs)
    kept = [ref for name, ref in weights.items() if name not in {r.name for r in restored}]
    if catalog is None or not kept:
        return None
    try:
        theirs = catalog.refs()
    except (NandoctorError, OSError):
        return None
    # (a backup copy of the target itself holds its restored tensors too, but for their damaged values: no doubt)
    differences = [_otherwise_different(r.target_ref, r.donor_ref) for r in restored]
    trained_apart = any(d is True for d in differences)
    if not trained_apart and any(d is False for d in differences):  # (the donor's values but for the damage)
        return None
    for ref in kept:
        other = theirs.get(ref.name)
        if other is None or other.shape != ref.shape or not _same_values(ref, other):
            return None
    return DonorAlready(donor.path, len(restored), len(kept), trained_apart)


def _same_values(ours: TensorRef, theirs: TensorRef) -> bool:
    """Whether the target's tensor holds the donor's values at the evenly spaced runs of elements :func:`_paired` reads
    (all of them for a small tensor): the same values, or for a donor of another float dtype, its values cast to the
    target's as ``--allow-cast`` casts them (a bf16 model merged from an fp32 base: an adversarial round's doubt never
    came)."""
    pair = _paired(ours.file, ours, theirs.file, theirs, 1)
    return pair is not None and bool(np.array_equal(pair[0], _cast_like(pair[1], theirs, ours)))


def _cast_like(values: np.ndarray, donor: TensorRef, target: TensorRef) -> np.ndarray:
    """The donor's float32 ``values`` as a cast to the target's dtype would write them (unchanged for one dtype: an fp32
    master copy of a bf16 checkpoint differs from it by rounding alone)."""
    if donor.dtype == target.dtype or not can_cast("F32", target.dtype):
        return values
    return as_float32(cast_bytes(np.ascontiguousarray(values, "<f4").view(np.uint8), "F32", target.dtype), target.dtype)


def donor_already_note(plan: RepairPlan, already: DonorAlready) -> str:
    """What a repair whose kept weight tensors are its donor's already says (:func:`donor_already`): a doubt where
    the restored ones differed from the donor's, else a note that the result is the donor whole."""
    donor, restored, kept = already.donor, already.restored, already.kept
    said = (f"the {kept} weight tensor(s) it kept hold {donor}'s bytes already (compared at evenly spaced windows), so "
            f"the result is {donor}'s model: the {restored} restored")
    if already.differed:
        return (f"{said} were all that told {plan.target} from it (a model merged from an adapter holds its "
                "fine-tune there); restore from an earlier checkpoint of this model instead, or merge a healthy "
                "adapter checkpoint again")
    return (f"{said} were NaN/Inf throughout in {plan.target}, so nothing tells whether they differed: if "
            f"{plan.target} was trained or merged from {donor} (a fine-tune, a model merged from an adapter), that "
            "training is gone from the result; restore from an earlier checkpoint of this model, or merge a healthy "
            "adapter checkpoint again, instead")


def whole_model_note(plan: RepairPlan, donor: str, weights: int) -> str:
    """The doubt of a repair whose every weight tensor (``weights`` of them) comes from ``donor``."""
    return (f"every weight tensor ({weights} of {weights}) was restored from {donor}: the result is {donor}'s model "
            f"under {plan.target}'s name and training state (its step, optimizer and schedule), not a repair of it; "
            f"resume from {donor}, or use it, instead")
