"""Donor checkpoints: their tensor references (headers only) and a health check per tensor.

A donor is opened like any checkpoint (checkpoint/opener.py) but never scanned
whole: only the tensors a repair would take from it are read, through the same
CPU kernel and census the scan uses, and must be healthy (finite; for weights,
not exploded and without outliers). ``--from auto`` becomes the run's healthy
checkpoints before the target, at or before its last healthy one, newest first:
``checkpoint-N`` folders beside a ``checkpoint-N`` target, or the Lightning
``…step=N….ckpt`` files beside a step file. A selection (``--only`` /
``--exclude``) applies to donors as to the target: left-out tensors are never taken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nandoctor import verdict
from nandoctor.blockfields import gather
from nandoctor.checkpoint.opener import Checkpoint, open_checkpoint
from nandoctor.checkpoint.roles import is_variance, judged_as_weight
from nandoctor.checkpoint.runs import RunCheckpoint, RunReport, checkpoint_step, duplicate_steps, place_in_run
from nandoctor.checkpoint.selection import Selection
from nandoctor.dtypes import DTYPES, DTypeSpec
from nandoctor.engine.chunks import whole
from nandoctor.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    RepairRefusedError,
)
from nandoctor.fileidentity import FileIdentity
from nandoctor.kernels.census import HealthLimits
from nandoctor.model import TensorRef
from nandoctor.restore.plan import checkpoint_root, file_key, names_in_several_files
from nandoctor.verdict import CONFIG_KIND
from nandoctor.wording import LATER_DONOR, path_word

AUTO = "auto"


class CheckpointDonor:
    """A donor checkpoint on disk, opened once (headers only); implements plan.DonorCatalog."""

    def __init__(
        self, path: str | os.PathLike[str], limits: HealthLimits | None = None, selection: Selection | None = None,
        loads_as: str | None = None,
    ) -> None:
        """``loads_as``: the dtype the target's config.json loads its weights in (``F16``), whose ceiling a donor
        tensor is held to as well: it is loaded as the target's."""
        self.path = Path(path)
        self.loads_as = loads_as
        self.label = str(path)
        self.step = checkpoint_step(self.path)
        self.limits = limits or HealthLimits()
        self.selection = selection
        self.checkpoint: Checkpoint | None = None
        self._refs: dict[str, TensorRef] | None = None
        self._chunks: dict[str, list[TensorRef]] = {}  # tensors stored as chunks (DCP), by name
        self._checks: dict[int, TensorCheck] = {}  # id(ref) → what reading it found (each tensor read once)

    @property
    def fingerprints(self) -> dict[str, FileIdentity]:
        """file → its identity when its header was read (empty before ``refs()``)."""
        if self.checkpoint is None:
            return {}
        return {str(f): print_ for f, print_ in self.checkpoint.fingerprints.items()}

    def refs(self) -> Mapping[str, TensorRef]:
        if self._refs is None:
            checkpoint = open_checkpoint(self.path, selection=self.selection)
            # a donor must be read whole: a corrupt storage is no source of truth (its config files' values are
            # nothing a repair copies: a donor whose generation_config.json is BAD CONFIG gives good tensors)
            broken = [p for p in checkpoint.problems if p.kind != CONFIG_KIND]
            if broken:
                first = broken[0]
                raise CorruptCheckpointError(first.path, first.message, first.hint or None)
            refs: dict[str, TensorRef] = {}
            chunks: dict[str, list[TensorRef]] = {}
            # (separate models of one folder, unet/ and unet_ema/, share names: each named by its file too)
            several, root = names_in_several_files(checkpoint.refs), checkpoint_root(self.path)
            for ref in checkpoint.refs:
                if ref.chunk is not None and ref.name not in refs:
                    chunks.setdefault(ref.name, []).append(ref)  # a DCP chunk: the tensor is all of them
                    continue
                key = file_key(ref, root) if ref.name in several else ref.name
                if key in refs or key in chunks:
                    other = refs[key] if key in refs else chunks[key][0]
                    raise CorruptCheckpointError(
                        ref.file, f"tensor {ref.name!r} is also in {Path(other.file).name}; ambiguous"
                    )
                refs[key] = ref
            for name, parts in chunks.items():
                # Planning sees the whole tensor (global shape, as the scan reports it); pieces.py writes the chunks.
                refs[name] = whole(parts[0])
            self.checkpoint, self._refs, self._chunks = checkpoint, refs, chunks
        return self._refs

    @property
    def chunked(self) -> bool:
        """Whether some tensor of the donor, as read so far, is stored as chunks."""
        return bool(self._chunks)

    def stored(self, name: str) -> list[TensorRef]:
        """The donor tensor ``name`` as stored: its chunks (DCP), or the one whole tensor."""
        return self._chunks.get(name) or [self.refs()[name]]

    def _parts(self, ref: TensorRef) -> list[TensorRef]:
        """What to read to judge ``ref``: its chunks when it stands for a chunked tensor, else itself."""
        chunks = self._chunks.get(ref.name)
        return chunks if chunks is not None and self.refs().get(ref.name) is ref else [ref]

    def unhealthy(self, ref: TensorRef) -> str | None:
        """Why this donor tensor is no good copy, or None: it must be finite and, for a weight, neither
        exploded nor holding outliers (the same census the scan runs, on this tensor alone)."""
        return self._check(ref).why

    def scale(self, ref: TensorRef) -> float | None:
        """The donor tensor's bulk scale (verdict.tensor_scale), measured by the same read as its health;
        of a chunked tensor, its loudest chunk's (as the scan merges chunks)."""
        return self._check(ref).scale

    def _check(self, ref: TensorRef) -> TensorCheck:
        key = id(ref)
        if key not in self._checks:
            try:
                checks = [tensor_check(part, self.limits, self.loads_as) for part in self._parts(ref)]
            except OSError as exc:
                raise CorruptCheckpointError(ref.file, f"cannot read tensor {ref.name!r}: {exc.strerror or exc}") from None
            scales = [c.scale for c in checks if c.scale is not None]
            why = next((c.why for c in checks if c.why), None)
            self._checks[key] = TensorCheck(why, max(scales) if scales else None, all(c.zero for c in checks))
        return self._checks[key]

    def all_zero(self, ref: TensorRef) -> bool:
        """Whether every value of the donor tensor is zero (no copy for a target tensor found zeroed)."""
        return self._check(ref).zero

    def cast_overflow(self, ref: TensorRef, dtype: str) -> int:
        """How many of the donor tensor's values would not be finite once cast to ``dtype`` (as torch rounds)."""
        from nandoctor.restore.convert import Conversion, nonfinite
        from nandoctor.restore.tensorbytes import iter_elements

        try:
            return sum(
                nonfinite(Conversion(part.dtype, dtype, part.region.byteorder == "big", False).apply(block), dtype)
                for part in self._parts(ref) for block in iter_elements(part.file, part)
            )
        except OSError as exc:
            raise CorruptCheckpointError(ref.file, f"cannot read tensor {ref.name!r}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class TensorCheck:
    """What reading one donor tensor found: why it is no good copy (None: healthy), and its bulk scale."""

    why: str | None
    scale: float | None  # as verdict.tensor_scale measures a scanned tensor; None when it has no bulk
    zero: bool = False  # every value ±0 (exact: no lane holds a magnitude bit)


def tensor_health(ref: TensorRef, limits: HealthLimits, loads_as: str | None = None) -> str | None:
    """NaN/Inf, exploded values or outliers in one tensor's own elements, as a reason; None when healthy."""
    return tensor_check(ref, limits, loads_as).why


def tensor_check(ref: TensorRef, limits: HealthLimits, loads_as: str | None = None) -> TensorCheck:
    """:func:`tensor_health`'s reason and the tensor's bulk scale, from one read of its elements.

    The scan's kernel and census on this tensor alone (a tensor under 64 KiB measured on every value, a
    larger one on the lanes the scan samples, as the scan measures them); a second read, only when some
    value may be an outlier, counts them against the tensor's own bulk scale (which the first read
    measures). The scale is what verdict.growth compares with the run's first healthy checkpoint."""
    from nandoctor.engine.work import SMALL_REGION_BYTES
    from nandoctor.kernels import select_kernel
    from nandoctor.kernels.census import Census, count_above, lane_info, lanes_of, observe_chunk, observe_whole
    from nandoctor.kernels.targets import decode_magnitude
    from nandoctor.restore.tensorbytes import nbytes

    spec = _spec(ref)
    if not spec.can_hold_nonfinite:
        return TensorCheck(None, None)
    kernel = select_kernel("cpu")
    from nandoctor.blockfields import elements_per_lane, weight_ceiling

    ceiling = weight_ceiling(limits.ceiling(spec.name, loads_as), ref.region.blocks)
    variance = ref.region.blocks is None and is_variance(ref.name, ref.role)
    info = lane_info(spec, ceiling, nonnegative=variance)
    census = Census()
    bad = lanes = 0
    small = nbytes(ref) < SMALL_REGION_BYTES  # (then one block: the scan reads such a tensor whole)
    for block in _lanes(ref, kernel.chunk_bytes):
        bad += kernel.count(block, spec).nonfinite
        lanes += block.size
        census.merge(observe_whole(block, info) if small else observe_chunk(block, info, 0, histogram=True))
    bits, exact = census.max_bits()
    per_lane = elements_per_lane(ref.region.blocks)
    scale = verdict.scale_of(census.bulk_scale(spec, info, per_lane), decode_magnitude(spec, bits) if bits >= 0 else None)
    if bad:
        return TensorCheck(f"holds {bad:,} NaN/Inf values", scale)
    if lanes and bits == 0 and (exact or census.zeros >= lanes):  # (the scan's all-zero rule, verdict._all_zero_rows)
        return TensorCheck(None, scale, zero=True)
    if census.negatives:  # (a variance: a donor restoring it must not bring a sign-flipped value)
        return TensorCheck(f"holds {census.negatives:,} negative values (a variance, never negative)", scale)
    if not judged_as_weight(ref.name, ref.role):  # (a ZeRO master weight is held to a weight's limits too)
        return TensorCheck(None, scale)
    if census.exploded:
        loaded = (f": the target's config.json loads it as {loads_as}"
                  if limits.ceiling(spec.name, loads_as) < limits.ceiling(spec.name) else "")
        return TensorCheck(f"holds {census.exploded:,} exploded values (|x| > {limits.ceiling(spec.name, loads_as):g}{loaded}"
                           f"{'' if ref.region.blocks is None else ': scale fields above ' + format(ceiling, 'g')})", scale)
    threshold = census.outlier_threshold(info, limits, per_lane)
    if threshold is None or not any(top >= threshold for _, _, top in census.high_segments):
        return TensorCheck(None, scale)
    outliers = sum(count_above(lanes_of(block, spec), info, threshold)[0] for block in _lanes(ref, kernel.chunk_bytes))
    return TensorCheck(f"holds {outliers:,} outliers (values 2^10 times above its bulk)" if outliers else None, scale)


def _spec(ref: TensorRef) -> DTypeSpec:
    """What is counted of ``ref``: its dtype, or a block-quantized tensor's scale fields."""
    return DTYPES[ref.region.dtype if ref.region.blocks is not None else ref.dtype]


def _lanes(ref: TensorRef, limit: int) -> Iterator[np.ndarray]:
    """The tensor's counted values in blocks, little-endian, as the scan's kernel reads them."""
    from nandoctor.kernels.census import to_little
    from nandoctor.restore.tensorbytes import iter_elements

    spec = _spec(ref)
    swap = ref.region.byteorder == "big" and spec.lane_bits > 8
    for block in iter_elements(ref.file, ref, limit=limit):
        lanes = gather(block, ref.region) if ref.region.blocks is not None else block
        yield to_little(lanes, spec) if swap else lanes


def nonfinite_counts(ref: TensorRef) -> tuple[int, int, int]:
    """(NaN, +Inf, -Inf) in one tensor's (or view's) own elements."""
    from nandoctor.kernels import select_kernel

    spec = _spec(ref)
    if not spec.can_hold_nonfinite:
        return 0, 0, 0
    kernel = select_kernel("cpu")
    nan = posinf = neginf = 0
    for block in _lanes(ref, kernel.chunk_bytes):
        counts = kernel.count(block, spec)
        nan, posinf, neginf = nan + counts.nan, posinf + counts.posinf, neginf + counts.neginf
    return nan, posinf, neginf


def auto_donors(
    target: Path, limits: HealthLimits | None = None, selection: Selection | None = None
) -> tuple[list[Path], RunReport]:
    """The run's healthy checkpoints before ``target``, newest first, and the timeline they come from.

    The run is the folder of ``checkpoint-N`` folders holding a ``checkpoint-N`` target, or the folder of
    Lightning ``…step=N….ckpt`` files holding a step-file target. Only checkpoints at or before the
    run's last healthy one qualify: never the first bad checkpoint or a later one, even where some of
    its tensors look fine (a diverged run's NaN-free tensors have exploded already). Health is judged
    on the tensors ``selection`` keeps, as the target's is.
    """
    from functools import partial

    from nandoctor.checkpoint.runs import scan_run
    from nandoctor.engine import scan_as_loaded

    target = Path(target)
    place = place_in_run(target)
    if place is None:
        raise RepairRefusedError(
            f"{target}: --from auto needs a checkpoint-N folder inside a run folder, or a step file beside others "
            "(Lightning's …step=N….ckpt, a training loop's step_N.pt)",
            "name the donors with --from <earlier checkpoint>",
        )
    step, run_folder = place.step, place.run
    siblings = place.siblings()
    # Lightning keeps two files of one step by name (-v1), each a checkpoint judged on its own; which of two
    # checkpoint-N folders of one step is "the" step N is undefined: no donor is picked by step then
    clashes = [] if place.step_files else duplicate_steps(siblings)
    if clashes:
        raise RepairRefusedError(
            f"{target}: --from auto cannot order the run in {run_folder}: {clashes[0]}",
            "rename or remove the stray folder, or name the donors with --from <path>",
        )
    if not [path for s, path in siblings if s < step]:
        raise RepairRefusedError(
            f"{target}: --from auto found no {place.kind} before step {step} in {run_folder.resolve()}",
            "name the donors with --from <path>; the run may have deleted older checkpoints "
            + (("(ModelCheckpoint's save_top_k)" if place.kind.endswith(".ckpt file") else "(a loop that keeps its "
                "newest saves)") if place.step_files else "(save_total_limit)"),
        )
    scan_one = partial(scan_as_loaded, limits=limits, selection=selection)  # (each as `nandoctor scan` scans it)
    run = scan_run(run_folder, device="cpu", scan_one=scan_one, below_step=step)
    first_bad = run.first_bad
    # (resume_points: healthy, and saved before a loss jump in the trainer log; the target makes the run broken)
    healthy = [Path(c.path) for c in run.resume_points(broken=True) if first_bad is None or c.step < first_bad.step]
    if not healthy:
        bad = f" (the first bad one is {first_bad.name})" if first_bad else ""
        before = first_bad.step if first_bad is not None else step  # (after the first bad one: never donors)
        candidates = [c for c in run.checkpoints if c.step < before and not c.final]
        said = [_why_not_a_donor(c) for c in candidates][:3]
        raise RepairRefusedError(
            f"{target}: --from auto found no healthy checkpoint before step {step} in {run_folder}{bad}"
            + (f": {'; '.join(said)}" if said else ""),
            "name a healthy donor with --from <path> (an earlier run, or the base model)"
            + ("; or make the unreadable checkpoint readable" if any(c.status == "unreadable" for c in candidates)
               else ""),
        )
    return list(reversed(healthy)), run


def _why_not_a_donor(checkpoint: RunCheckpoint) -> str:
    """An earlier checkpoint's status, and for one that could not be read, its first problem."""
    problem = next(iter(checkpoint.report.errors), None) if checkpoint.report is not None else None
    why = (f" ({problem.path}: {problem.message.split('; ')[0]})" if checkpoint.status == "unreadable" and problem is not None
           else "")
    return f"{Path(checkpoint.path).name} is {checkpoint.status}{why}"


def resolve_donors(
    target: Path,
    donors: list[str | os.PathLike[str]],
    limits: HealthLimits | None = None,
    selection: Selection | None = None,
    auto_available: bool = False,
    needed: bool = True,
    loads_as: str | None = None,
) -> list[CheckpointDonor]:
    """Donor catalogs in the order given, ``auto`` expanded in place; each honours ``selection`` and holds its
    tensors to the ceiling of ``loads_as``, the dtype the target loads them in (CheckpointDonor).

    ``auto`` that finds no earlier checkpoint is an error only when no other donor is named and some tensor
    needs one (``needed``: a clean target's repair is an unchanged copy, whatever auto finds).
    A donor may be a path or a model name in the Hugging Face / ModelScope cache. ``auto_available``:
    whether ``--from auto`` would find a donor (the target's run context): only then is it suggested.
    """
    from nandoctor.checkpoint import hubcache

    out: list[CheckpointDonor] = []
    auto_error: RepairRefusedError | None = None
    for donor in donors:
        if str(donor) == AUTO:
            try:
                paths, _ = auto_donors(target, limits, selection)
                out.extend(CheckpointDonor(p, limits, selection, loads_as) for p in paths)
            except RepairRefusedError as exc:
                auto_error = exc
            continue
        try:
            path, _ = hubcache.resolve(donor)
        except CheckpointNotFoundError as exc:
            # (the JSON's errors[].path: the donor, not the target)
            raise CheckpointNotFoundError(f"donor checkpoint {exc.message}", exc.hint, path=str(donor)) from None
        if needed and _same_place(path, target):  # (a clean target: an unchanged copy, whatever the donor)
            raise RepairRefusedError(
                f"donor {donor} is (part of) the checkpoint being repaired ({target}): it holds the same bad tensors",
                "name an earlier, healthy checkpoint with --from <path>" + (" (or --from auto)" if auto_available else ""),
            )
        _refuse_run_folder(donor, path, target, auto_available)
        out.append(CheckpointDonor(path, limits, selection, loads_as))
    if not out and not needed:
        return out
    if not out and auto_error is not None:
        raise auto_error
    if not out:
        also = " (or --from auto)" if auto_available else ""
        raise RepairRefusedError(f"{target}: no donor checkpoint given", f"add --from <earlier checkpoint>{also}")
    return out


def _refuse_run_folder(donor: str | os.PathLike[str], path: Path, target: Path, auto_available: bool) -> None:
    """A run folder without a final model at its top is no checkpoint: say which to name (a trial's hint read
    "scan one of them, e.g. …/checkpoint-100", the run's oldest, where a donor or --from auto was meant)."""
    from nandoctor.checkpoint.finalmodel import has_final_model
    from nandoctor.checkpoint.runs import RunPlace, is_run_folder
    from nandoctor.checkpoint.stepfiles import step_folder

    if not path.is_dir() or not is_run_folder(path) or has_final_model(path):
        return
    place = place_in_run(target)
    before = place.step if place is not None and _same_place(place.run, path) else None
    steps = RunPlace(path, 0, step_folder(path) is not None).siblings()  # (checkpoint-N folders or step files)
    found = [p for step, p in steps if (before is None or step < before) and not _same_place(p, target)]
    auto = "; --from auto takes the healthy ones before the target, newest first" if auto_available else ""
    scan = f"`nandoctor scan {path_word(donor)}` shows which are healthy"
    if found:
        which = "its newest before the target" if before is not None else "its newest"
        hint = f"name one of its healthy checkpoints (--from {path_word(found[-1])} is {which}; {scan}){auto}"
    else:
        hint = (f"it holds no checkpoint before the target: name an earlier clean checkpoint or the base model "
                f"({scan})" if before is not None else f"name one of its healthy checkpoints ({scan})")
    raise RepairRefusedError(f"donor {donor} is a run folder, not one checkpoint", hint)


def other_model_notes(target_root: Path, donors: Sequence[CheckpointDonor], used: set[str]) -> tuple[str, ...]:
    """A note for each donor that gave tensors (``used``: their labels) whose ``config.json`` names another model
    than the target's (``model_type``, ``architectures``): tensors are taken by name, shape and dtype, and a trial's
    mistyped ``--from`` (a Mistral for a Llama, names and shapes alike) restored unrelated weights with no word."""
    mine = _model_identity(target_root)
    if mine is None:
        return ()
    notes = []
    for donor in donors:
        theirs = _model_identity(checkpoint_root(donor.path)) if donor.label in used else None
        if theirs is not None and any(a is not None and b is not None and a != b for a, b in zip(theirs, mine)):
            notes.append(f"donor {donor.label}: its config.json names another model ({_identity_words(theirs)}) than "
                         f"the target's ({_identity_words(mine)}); its tensors were taken by name and shape: check it "
                         "is an earlier checkpoint of the same model")
    return tuple(notes)


def later_donor_notes(target: Path, donors: Sequence[CheckpointDonor], used: set[str]) -> tuple[str, ...]:
    """A note for each donor that gave tensors (``used``: their labels) saved after the target in the target's own
    run: ``--from auto`` never takes one (it may carry what damaged the target, and it is a later state of the weights
    than the target's optimizer and schedule), but an explicit ``--from`` of one was taken with no word (a tester's
    ``--from run/checkpoint-40`` for checkpoint-30). A donor of another run has steps of its own: never compared."""
    place = place_in_run(target)
    if place is None or place.final:  # (a final model comes after every checkpoint of its run)
        return ()
    notes = []
    for donor in donors:
        theirs = place_in_run(donor.path) if donor.label in used and donor.step is not None else None
        if theirs is not None and theirs.step > place.step and _same_place(theirs.run, place.run):
            notes.append(f"donor {donor.label} was saved at step {theirs.step}, {LATER_DONOR} {place.step}): "
                         "its tensors are a later state of the run than the rest of the repaired checkpoint (its "
                         "optimizer state, its schedule) and may carry what damaged the target (--from auto takes only "
                         "checkpoints saved before the target)")
    return tuple(notes)


def _model_identity(folder: Path) -> tuple[str | None, tuple[str, ...] | None] | None:
    """``model_type`` and ``architectures`` of the folder's config.json; None without a readable one naming either."""
    from nandoctor.checkpoint.jsonfiles import read_json

    try:
        config = read_json(folder / "config.json", limit=16 << 20)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    kind = config.get("model_type")
    archs = config.get("architectures")
    found = (kind if isinstance(kind, str) else None,
             tuple(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else None)
    return found if found != (None, None) else None


def _identity_words(identity: tuple[str | None, tuple[str, ...] | None]) -> str:
    kind, archs = identity
    words = [] if kind is None else [f"model_type {kind!r}"]
    return ", ".join(words if archs is None else [*words, f"architectures {list(archs)}"])


def _same_place(donor: Path, target: Path) -> bool:
    """Whether ``donor`` is the target checkpoint, or a file or folder inside the target folder."""
    try:
        if os.path.samefile(donor, target):
            return True
        return target.is_dir() and Path(os.path.realpath(donor)).is_relative_to(os.path.realpath(target))
    except (OSError, ValueError):  # (one of them gone, or a name the OS refuses: the readers say so)
        return False
