"""Repair planning, pure: a scan report + ordered donors → which bytes to restore from where.

No file is read here. Donors are :class:`DonorCatalog` objects (their tensor
references and a way to count a donor tensor's non-finite values), so the plan
can be tested with in-memory fakes and the real catalogs stay lazy: a donor is
only opened when some tensor still lacks a good source.

For each tensor to restore, donors are tried in the order given; within one
donor the exact name is tried first, then the name with wrapper prefixes
(``module.``, ``_orig_mod.``, ``base_model.model.``, ``model.`` …) stripped.
A candidate must have the same dtype and shape and be finite itself; with
``allow_cast`` a float donor of another dtype is taken when every value stays
finite once cast (convert.py). A name the torch reader made unique with a
``#n`` suffix (``{"a.b": x, "a": {"b": y}}`` flattens twice to ``a.b``) is never
matched by name, in the target or a donor: which tensor got the plain name
depends on the pickle's order, not on the model. Within a run, a donor weight
whose bulk grew ``GROWTH_DIVERGED`` times past the run's first healthy
checkpoint is no good copy either (:class:`RunBaseline`): it is diverged, and the
repaired checkpoint would be too. A tied copy stored beside its partner
(``lm_head.weight`` with ``tie_word_embeddings``) is restored from that partner
as the repaired checkpoint holds it, so the two stay equal (``ties``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nandoctor.access import unreadable
from nandoctor.checkpoint.roles import OPTIMIZER, moment_segment
from nandoctor.checkpoint.selection import Selection
from nandoctor.errors import NandoctorError
from nandoctor.fileidentity import FileIdentity
from nandoctor.layers import layer_of, normalise
from nandoctor.model import ChunkOf, ScanReport, TensorRef, TensorResult, UnviewedBad, is_pickled_float
from nandoctor.restore.convert import can_cast
from nandoctor.restore.tensorbytes import nbytes
from nandoctor.verdict import FAILING_BY_DEFAULT, GROWTH_DIVERGED, OVERFLOW, ZEROED, Growth, tensor_growth

# what makes a repair restore a tensor (overflow: of the dtype config.json loads it in, the one target a repair's scan
# counts for, so the tensor loads as Inf: an fp8 scale flipped x2^24 under an fp16 config)
RESTORED_FINDINGS = (*FAILING_BY_DEFAULT, ZEROED, OVERFLOW)

SCOPES = ("tensor", "layer")


class DonorCatalog(Protocol):
    """What planning needs to know about one donor checkpoint."""

    label: str  # the path as the user gave it
    step: int | None  # training step when known (checkpoint-N)

    @property
    def fingerprints(self) -> Mapping[str, FileIdentity]:
        """file → its identity when its header was read: the writer checks nothing changed since."""

    def refs(self) -> Mapping[str, TensorRef]:
        """Every tensor of the donor by name; raises NandoctorError when it cannot be read."""

    def unhealthy(self, ref: TensorRef) -> str | None:
        """Why the donor tensor is no good copy (NaN/Inf, exploded, outliers), or None when it is healthy."""

    def scale(self, ref: TensorRef) -> float | None:
        """The donor tensor's bulk scale (verdict.tensor_scale); asked only with a :class:`RunBaseline`."""

    def cast_overflow(self, ref: TensorRef, dtype: str) -> int:
        """How many of the donor tensor's values would not be finite once cast to ``dtype``."""

    def all_zero(self, ref: TensorRef) -> bool:
        """Whether every value of the donor tensor is zero: no copy for a tensor restored because it is."""


@dataclass(frozen=True)
class DonorInfo:
    path: str
    step: int | None
    own: bool = False  # the target itself: tied copies restored from their partner in it (``ties``)


@dataclass(frozen=True)
class RunBaseline:
    """The target's run's first healthy checkpoint, against which a scan of the target judges growth
    (checkpoint/runcontext.py): ``scales`` are its verdict.tensor_scales. A donor weight whose bulk is
    ``GROWTH_DIVERGED`` times its scale there is diverged, and would make the repaired checkpoint so."""

    path: str
    scales: Mapping[str, float]

    def growth(self, name: str, scale: float | None) -> Growth | None:
        """How far tensor ``name`` at ``scale`` stands above its scale here, when that makes it diverged."""
        was = self.scales.get(name)
        if was is None or scale is None:
            return None
        grown = tensor_growth(name, scale, was)  # (verdict.growth's rule, tensor by tensor)
        return grown if grown.factor >= GROWTH_DIVERGED else None


@dataclass(frozen=True)
class Restoration:
    """One target tensor whose elements are replaced by a donor tensor's."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nan: int  # counts in the target before the repair
    posinf: int
    neginf: int
    reason: str  # "bad" (a finding: NaN/Inf, exploded, outliers, all zero) or "layer" (healthy, restored with its layer)
    donor: int  # index into RepairPlan.donors
    donor_name: str  # the name in the donor (may differ by a wrapper prefix)
    target_ref: TensorRef
    donor_ref: TensorRef
    via: str | None = None  # same elements as this restored tensor (tied weights): written once through it
    findings: tuple[str, ...] = ()  # why it is restored (nonfinite, exploded, outlier, zeroed); () for "layer"
    # Set when only a box of the tensor is restored (a DCP chunk, pieces.py): where ``shape`` sits in the tensor
    box: ChunkOf | None = None

    @property
    def cast(self) -> bool:
        """The donor is another float dtype, rounded into the target's (``allow_cast``)."""
        return self.donor_ref.dtype != self.dtype

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def layer(self) -> str:
        return layer_of(self.name).group


@dataclass(frozen=True)
class Unrestorable:
    """A tensor that must be restored but has no good donor, and why each donor failed."""

    name: str
    nan: int
    posinf: int
    neginf: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RepairPlan:
    target: str
    donors: tuple[DonorInfo, ...]
    scope: str
    restorations: tuple[Restoration, ...]
    unrestorable: tuple[Unrestorable, ...] = ()
    unviewed: tuple[UnviewedBad, ...] = ()  # bad bytes no tensor views: cannot be restored by name
    notes: tuple[str, ...] = field(default=())
    allow_cast: bool = False
    selection: Selection | None = None  # --only / --exclude: the other tensors are neither judged nor restored
    excluded: int = 0  # how many tensors the selection left out (carried over byte-identical)
    excluded_names: tuple[str, ...] = ()  # their names: never judged, so the result may not call them clean
    cast_helps: bool = False  # some tensor without a donor is held by a donor in another float dtype
    exclude_globs: tuple[str, ...] = ()  # --exclude patterns naming the optimizer state that has no donor
    # (donor, why) for each named donor that could not be read, when none could: the repair's error is theirs
    donors_unreadable: tuple[tuple[str, NandoctorError], ...] = ()
    health_limits: dict[str, Any] | None = None  # --max-abs / --outlier-factor when given (the scan JSON's field)
    # notes (in ``notes`` too) that doubt a donor is this model's: its config.json names another model, or its copy of
    # a restored tensor is unlike the target's own values. The repair stands; the result says ⚠ and the proof keeps them
    doubts: tuple[str, ...] = ()
    # the donor every weight tensor is restored from, when one is (likeness.whole_model_note): the result is that
    # donor's model, its doubt first among ``doubts``
    whole_model_from: str | None = None

    def excluded_json(self) -> dict[str, Any]:
        """``{"excluded": {"tensors": N, "only": […], "exclude": […]}}`` for the plan and proof JSON (as in a
        scan's JSON); empty without a selection."""
        if self.selection is None:
            return {}
        return {"excluded": {"tensors": self.excluded, **self.selection.to_json()}}

    @property
    def refused(self) -> bool:
        return bool(self.unrestorable or self.unviewed)

    @property
    def tensors_restored(self) -> int:
        """How many tensors are restored, each once: the restored chunks of a sharded (DCP) tensor are one
        tensor, as a scan counts it."""
        return len({r.name for r in self.restorations})

    @property
    def writes(self) -> tuple[Restoration, ...]:
        """The restorations that write bytes (tied duplicates are written once, through ``via``)."""
        return tuple(r for r in self.restorations if r.via is None)

    @property
    def bytes_restored(self) -> int:
        return sum(nbytes(r.target_ref) for r in self.writes)

    def donor_label(self, index: int) -> str:
        info = self.donors[index]
        return f"{info.path} (step {info.step})" if info.step is not None else info.path



_SUFFIXED = re.compile(r"^(?P<base>.+)#(?P<n>[2-9]|[1-9]\d+)$")


def names_in_several_files(refs: Iterable[TensorRef]) -> set[str]:
    """Names that tensors of more than one file carry (not DCP chunks): the files are separate models of one folder
    (a diffusers ``unet/`` and ``unet_ema/``, a pipeline's fp32 and ``.fp16`` variants side by side), whose tensors
    are matched by file as well as by name (:func:`file_key`). Shards of one model that share a name are a problem
    of the scan itself, refused before."""
    first: dict[str, str] = {}
    out: set[str] = set()
    for ref in refs:
        if ref.chunk is not None:
            continue
        seen = first.setdefault(ref.name, ref.file)
        if seen != ref.file:
            out.add(ref.name)
    return out


def file_key(ref: TensorRef, root: Path) -> str:
    """``unet_ema/diffusion_pytorch_model.safetensors:conv_in.weight``: a tensor named by its file in the checkpoint
    folder ``root`` too (:func:`names_in_several_files`)."""
    return f"{Path(os.path.relpath(ref.file, root)).as_posix()}:{ref.name}"


def checkpoint_root(target: str | os.PathLike[str]) -> Path:
    """The folder a checkpoint's files are named from: the checkpoint folder itself, or a single file's folder."""
    path = Path(target)
    return path if path.is_dir() else path.parent


def made_unique(refs: Iterable[TensorRef]) -> set[str]:
    """Names that flattening gave two tensors of one file: the plain one and its ``#n`` twins."""
    by_file: dict[str, set[str]] = {}
    for ref in refs:
        by_file.setdefault(ref.file, set()).add(ref.name)
    out: set[str] = set()
    for names in by_file.values():
        for name in names:
            match = _SUFFIXED.match(name)
            if match and match["base"] in names:
                out.update((name, match["base"]))
    return out


def _view_key(ref: TensorRef) -> tuple:
    """Two refs with this key read and write exactly the same elements (tied weights)."""
    return ref.elements_key


class _DonorView:
    """One donor's names, loaded on first use, with the normalised-name index built once."""

    def __init__(self, catalog: DonorCatalog) -> None:
        self.catalog = catalog
        self._refs: Mapping[str, TensorRef] | None = None
        self._by_norm: dict[str, list[str]] = {}
        self.error: str | None = None
        self.failure: NandoctorError | None = None  # the error behind ``error``
        self._health: dict[int, str | None] = {}
        self._made_unique: set[str] = set()

    def load(self) -> bool:
        if self._refs is not None or self.error is not None:
            return self.error is None
        try:
            self._refs = self.catalog.refs()
        except (NandoctorError, OSError) as exc:
            known = exc if isinstance(exc, NandoctorError) else unreadable(exc.filename or self.catalog.label, exc)
            self.error, self.failure = str(known), known  # the message and what to do about it
            return False
        self._made_unique = made_unique(self._refs.values())
        for name in self._refs:
            if name not in self._made_unique:
                self._by_norm.setdefault(normalise(name), []).append(name)
        return True

    def candidates(self, name: str) -> tuple[list[str], str | None]:
        """Donor names to try for ``name`` (exact, else one normalised match), or why none."""
        assert self._refs is not None
        if name in self._made_unique:
            return [], f"{name!r} names two tensors there (made unique by a #n suffix); not matched by name"
        if name in self._refs:
            return [name], None
        matches = self._by_norm.get(normalise(name), [])
        if len(matches) > 1:
            return [], f"ambiguous: {', '.join(repr(m) for m in sorted(matches)[:3])} all match"
        if not matches:
            return [], _NOT_FOUND
        return matches, None

    def ref(self, name: str) -> TensorRef:
        assert self._refs is not None
        return self._refs[name]

    def unhealthy(self, ref: TensorRef) -> str | None:
        key = id(ref)
        if key not in self._health:
            self._health[key] = self.catalog.unhealthy(ref)
        return self._health[key]

    def scale(self, ref: TensorRef) -> float | None:
        return self.catalog.scale(ref)


def donor_matches(catalog: DonorCatalog, names: Iterable[str]) -> dict[str, TensorRef]:
    """The donor tensor each of ``names`` matches as a repair matches it (the exact name, else the one name equal
    with wrapper prefixes stripped); a name without one match is left out, and all of them where the donor cannot
    be read (the plan says why)."""
    view = _DonorView(catalog)
    if not view.load():
        return {}
    found = {}
    for name in names:
        matches, _ = view.candidates(name)
        if len(matches) == 1:
            found[name] = view.ref(matches[0])
    return found


def _shape_words(ref: TensorRef) -> str:
    """A shape as its format writes it, GGUF's marked (``ne [8, 4]``), so that two orders are never confused."""
    return f"ne {list(ref.shape)}" if ref.order != "C" else str(list(ref.shape))


def _describe(catalog: DonorCatalog) -> str:
    return f"{catalog.label} (step {catalog.step})" if catalog.step is not None else catalog.label


_NOT_FOUND = "not found"
PICKLED_FLOAT_WHY = "a learning-rate setting (a Python float of the optimizer or its scheduler, not a tensor): a repair restores tensors only"


def _candidate(
    result: TensorResult, donor: _DonorView, allow_cast: bool, baseline: RunBaseline | None = None,
    key: str | None = None,
) -> tuple[str, TensorRef] | str:
    """(donor name, donor ref) when ``donor`` holds a good copy of the tensor, else why not: with a
    ``baseline``, a weight whose bulk grew past it (by the target's name: the run's) is none. ``key``: the
    tensor's name with its file (:func:`file_key`) where the target's name alone is several tensors'."""
    target = result.ref
    if is_pickled_float(target):  # (a donor's finite value is a float no scan reads, and data.pkl is not patched)
        return PICKLED_FLOAT_WHY
    # (one of the target's several models is matched in the donor's file of the same place: a donor of one model is
    # no copy of a UNet's EMA twin, nor its fp32 variant of the fp16 one)
    lookup = key or target.name
    names, why = donor.candidates(lookup)
    if why == _NOT_FOUND and key is not None:
        # (a donor of one of the models, or of the same files without their twins: its file at the same place — its
        # path ends with the target's unet_ema/diffusion_pytorch_model.safetensors — holds the copy)
        place = "/" + key[: -len(target.name) - 1]
        found, _ = donor.candidates(target.name)
        names = [n for n in found if ("/" + Path(donor.ref(n).file).as_posix()).endswith(place)]
        why = None if names else f"not found in a file at {place[1:]}"
    if why:
        return why
    reasons = []
    for name in names:
        ref = donor.ref(name)
        shown = "" if name in (lookup, target.name) else f" (as {name!r})"
        cast = ref.dtype != target.dtype
        # The shape first: a donor of another shape is no copy in any dtype, and --allow-cast must not be offered
        # (in C order: a GGUF donor's ne lists the fastest dimension first; compared as written, a safetensors donor of
        # the transposed matrix was copied byte for byte into a GGUF target and read "verified CLEAN", a review's)
        if ref.c_shape != target.c_shape:
            reasons.append(f"shape {_shape_words(ref)}{shown}, the target's is {_shape_words(target)}")
        elif cast and not (allow_cast and can_cast(ref.dtype, target.dtype)):
            reasons.append(f"dtype {ref.dtype}{shown}, the target's is {target.dtype}")
        elif ref.region.blocks is not None and ref.region.byteorder != target.region.byteorder:
            # (its blocks mix fields of several widths: a review's big-endian Q8_0 donor was an internal error)
            reasons.append(f"a block-quantized {ref.dtype} donor{shown} stored {ref.region.byteorder}-endian, the "
                           f"target {target.region.byteorder}-endian: its blocks are not converted")
        else:
            try:
                why = donor.unhealthy(ref)
                why = None if why is None else f"{why}{'' if cast else ' itself'}"
                if why is None and baseline is not None and target.role == "weight":
                    grown = baseline.growth(target.name, donor.scale(ref))
                    why = None if grown is None else (
                        f"diverged itself: {grown.words()} since the run's first healthy checkpoint {baseline.path}"
                    )
                if why is None and _zero_copy_refused(result) and donor.catalog.all_zero(ref):
                    why = "all zero itself"
                if why is None and cast:
                    overflow = donor.catalog.cast_overflow(ref, target.dtype)
                    why = f"{overflow:,} of its {ref.dtype} values are not finite as {target.dtype}" if overflow else None
            except (NandoctorError, OSError) as exc:
                reasons.append(f"cannot be read{shown}: {getattr(exc, 'message', None) or exc}")
                continue
            if why is None:
                return name, ref
            reasons.append(f"{why}{shown}")
    return "; ".join(reasons)


def needed_tensors(report: ScanReport, scope: str) -> list[TensorResult]:
    """The tensors a repair restores: the unhealthy ones (NaN/Inf, exploded, outliers) and those found
    zeroed (all zero where they should not be), or every tensor of
    each layer holding one. A trainer-state sentinel (Lightning's ``kth_value = inf``) is not restored."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    bad = [t for t in report.tensors if _restored(t)]
    # a norm's running statistics are restored together, from one donor: a running_var restored beside the target's
    # own running_mean of 5.5e29 (a BatchNorm after an exploded convolution) left eval-mode losses of 1e29 behind a
    # verified repair (a helper's real run)
    norms = {t.name[: -len(stat)] for t in bad for stat in _NORM_STATS if t.name.endswith(stat)}
    norms |= _norms_after(report, bad)
    # an optimizer's moments of one parameter are restored together too: an exp_avg_sq overflowed to Inf restored
    # beside the same step's exp_avg of 1e22, finite and kept, put NaN in the weights two steps into the resume (a
    # helper's real run, "verified CLEAN")
    moments = {key for t in bad if t.ref.role == OPTIMIZER and (key := moment_of(t.name)) is not None}
    if not norms and not moments:
        return bad if scope == "tensor" else _whole_layers(report, bad)

    def with_siblings(t: TensorResult) -> bool:
        return _norm_stat_of(t.name, norms) or (bool(moments) and t.ref.role == OPTIMIZER and moment_of(t.name) in moments)

    if scope == "tensor":
        return [t for t in report.tensors if _restored(t) or with_siblings(t)]
    groups = {layer_of(t.name).group for t in bad}
    return [t for t in report.tensors if layer_of(t.name).group in groups or with_siblings(t)]


def _whole_layers(report: ScanReport, bad: list[TensorResult]) -> list[TensorResult]:
    groups = {layer_of(t.name).group for t in bad}
    return [t for t in report.tensors if layer_of(t.name).group in groups]


_PARAMETER_STATE = re.compile(r"^(.*\.state\.\d+)\.[^.]+$")  # (a torch optimizer's state of parameter N: every entry)
# (a parameter's step count and Rprop's per-element step lengths: kept from the target, as no gradient a bad step
# blew up is in them; the donor's moments then resume under the target's count, docs/repair.md says what that does)
_COUNTERS = (".step", ".step_size")


def moment_of(name: str) -> str | None:
    """The parameter whose optimizer state ``name`` is part of (``optimizer.state.3`` for every entry of it: Adam's
    moments, centered RMSprop's grad_avg beside its square_avg, a step count), or None for another tensor."""
    match = _PARAMETER_STATE.match(name)
    if match and not name.endswith(_COUNTERS):  # (the whole state of one parameter, whatever the optimizer keeps: an
        # adversarial round's RMSprop centered had its square_avg restored beside its own grad_avg, and the first
        # resumed step was NaN; its step count stays the target's, as a healthy counter is never restored)
        return match.group(1)
    at = moment_segment(name)  # (ZeRO names a moment before its parameter: …mp_rank_01.exp_avg.model.layers.3.weight)
    if at is None:
        return None
    parts = name.split(".")
    return ".".join([*parts[:at], "#", *parts[at + 1:]])


_NORM_STATS = (".running_mean", ".running_var", ".num_batches_tracked")  # (torch's _NormBase buffers)


def _norms_after(report: ScanReport, bad: list[TensorResult]) -> set[str]:
    """The norm modules (by name prefix) whose running statistics follow, in the state dict's order, a weight
    restored here: a BatchNorm after a convolution whose weight blew up averaged its blown-up outputs (an
    adversarial round: a conv weight flipped to 3e4 and restored left its BatchNorm's running_var at 5.7e8, finite
    and under every ceiling, and a dead channel behind a verified repair)."""
    restored = {t.name[: -len(".weight")] for t in bad if t.name.endswith(".weight")}
    if not restored:
        return set()
    modules: list[str] = []  # module prefixes in the order the state dict holds them
    stats: set[str] = set()
    for name in report.tensors.refs.names:
        module = name.rpartition(".")[0]
        if not modules or modules[-1] != module:
            modules.append(module)
        if name.endswith(_NORM_STATS):
            stats.add(module)
    # (the norm right after, or one module further: a depthwise-separable block's dw conv, pw conv, then its BatchNorm;
    # and, whatever the order the file keeps, the norms of the restored weight's own block: safetensors sorts its
    # names, bn1 before conv1, a review found)
    following = [(modules[i], later) for i in range(len(modules)) for later in modules[i + 1:i + 3]]
    return ({after for module, after in following if module in restored and after in stats}
            | {norm for norm in stats if any(_in_block_after(module, norm) for module in restored)})


def _in_block_after(module: str, norm: str) -> bool:
    """Whether the norm module ``norm`` belongs to the block of the restored ``module`` (one parent) and may come after
    it: any sibling by name (bn1 beside conv1), but an nn.Sequential's numbered child only after the module's number
    (a new user's run: net.1, a BatchNorm before the restored net.3, had its statistics rolled back beside its own
    weights, the docs saying "the norm that follows")."""
    parent, _, own = module.rpartition(".")
    norm_parent, _, index = norm.rpartition(".")
    return parent == norm_parent and (not (own.isdigit() and index.isdigit()) or int(index) > int(own))


def _norm_stat_of(name: str, norms: set[str]) -> bool:
    """Whether ``name`` is a running statistic of one of the norm modules ``norms`` (by their name prefixes)."""
    return any(name.endswith(stat) and name[: -len(stat)] in norms for stat in _NORM_STATS)


def _restored(result: TensorResult) -> bool:
    """Whether a tensor is restored for its own findings (not only as a member of its layer): RESTORED_FINDINGS."""
    return result.unhealthy or ZEROED in result.findings or OVERFLOW in result.findings


def _name_overlap_notes(report: ScanReport, views: list[_DonorView]) -> tuple[str, ...]:
    """For donors that lack many of the target's names: say so once, instead of "not found" per tensor."""
    names = {t.name for t in report.tensors if t.ref.role == "weight"}  # (a weights-only donor of a training save)
    notes = []
    for view in views:
        if view.error is not None or view._refs is None:
            continue
        found = sum(1 for name in names if view.candidates(name)[0])
        if found * 2 < len(names):
            notes.append(
                f"donor {_describe(view.catalog)} has {found:,} of the target's {len(names):,} weight names"
                + (": a different model, or another naming?" if found == 0 else ": a different model?")
            )
    return tuple(notes)


def _cast_note(report: ScanReport, unrestorable: list[Unrestorable], views: list[_DonorView]) -> tuple[str, ...]:
    """Offer --allow-cast when some donor holds a tensor that has no donor in another float dtype (and the
    same shape: a cast cannot make a donor of another shape fit)."""
    refs = {t.name: t.ref for t in report.tensors}
    for u in unrestorable:
        target = refs[u.name]
        for view in views:
            if view.error is not None or view._refs is None:
                continue
            for name in view.candidates(u.name)[0]:
                other = view.ref(name).dtype
                if (other != target.dtype and can_cast(other, target.dtype)
                        and tuple(view.ref(name).shape) == tuple(target.shape)):
                    return (f"{_describe(view.catalog)} holds {u.name!r} as {other}, the target's is "
                            f"{target.dtype}: --allow-cast takes it, rounded as torch's tensor.to(dtype) rounds",)
    return ()


def _zero_copy_refused(result: TensorResult) -> bool:
    """Whether an all-zero donor copy is no copy of the target tensor: one found zeroed, and any weight of which the
    target holds a finite value that is not zero (training never zeroes a whole tensor, a broken copy does: a
    trial's NaN tensor was restored from a zeroed copy in the checkpoint before it, while an earlier one held a
    good copy), or of which it holds no finite value at all (a weight NaN throughout: the usual NaN step). Biases
    and LoRA weights start at zero (an early donor's copy is their real earlier value) unless the target's copy is
    zeroed itself; a target whose finite values are all zero agrees with the copy."""
    if ZEROED in result.findings:
        return True
    name = result.name.lower()
    if result.role != "weight" or name.endswith(".bias") or "lora_" in name:
        return False
    return result.max_abs is None or result.max_abs > 0.0


def plan_repair(
    report: ScanReport, donors: Sequence[DonorCatalog], scope: str = "tensor", *, allow_cast: bool = False,
    baseline: RunBaseline | None = None, ties: Mapping[str, str] | None = None,
) -> RepairPlan:
    """Decide, for every tensor to restore, its donor; or list what cannot be restored.

    The unit that takes one donor is the tensor (``scope="tensor"``) or the whole layer
    (``scope="layer"``: every tensor of the layer from the same donor, so the layer stays
    consistent). Tensors that are the very same elements of one storage (tied weights in a
    torch file) are written once; one that a donor lacks (safetensors drops tied copies) is
    restored through its partner. With ``allow_cast`` a float donor of another dtype qualifies when
    every value stays finite once cast. ``baseline``: the target's run's first healthy checkpoint, past
    which no donor weight may have grown. ``ties`` (restore/tied.py): tied copy → its partner in the
    target; a bad copy is restored as its partner ends up, from the same bytes (the partner's own when it
    is healthy: the target itself is then a donor, ``DonorInfo.own``), never from a donor of its own; a bad
    partner whose copy is healthy, from that copy.
    """
    views = [_DonorView(d) for d in donors]
    ambiguous = made_unique(t.ref for t in report.tensors)
    needed = needed_tensors(report, scope)
    tied = {t.name: ties[t.name] for t in needed if ties and t.name in ties and t.name not in ambiguous}
    # A bad partner whose tied copy is healthy in the target is restored from that copy: the same values, of this
    # step (a trial's NaN embedding restored from an older donor beside the target's newer lm_head copy left the
    # two different, and transformers then loaded them untied)
    bad = {t.name for t in needed}
    copy_of = {partner: copy for copy, partner in (ties or {}).items() if copy not in bad}
    tied.update({t.name: copy_of[t.name] for t in needed if t.name in copy_of and t.name not in ambiguous})
    keys = {id(t): _view_key(t.ref) for t in needed}
    tie_count: dict[tuple, int] = {}
    for t in needed:
        tie_count[keys[id(t)]] = tie_count.get(keys[id(t)], 0) + 1

    several = names_in_several_files(t.ref for t in report.tensors)
    root = checkpoint_root(report.target)
    key_of = {id(t): file_key(t.ref, root) for t in needed if t.name in several}
    units: dict[str, list[TensorResult]] = {}
    for t in needed:
        if t.name in tied:
            continue  # follows its partner, below
        key = key_of.get(id(t), t.name)
        unit = key if scope == "tensor" else key.removesuffix(t.name) + layer_of(t.name).group
        units.setdefault(unit, []).append(t)

    chosen: dict[int, tuple[int, str, TensorRef]] = {}  # id(result) → (donor, donor name, donor ref)
    reasons: dict[int, list[str]] = {}
    for members in units.values():
        for index, donor in enumerate(views):
            where = _describe(donor.catalog)
            if not donor.load():
                for m in members:
                    reasons.setdefault(id(m), []).append(f"{where}: unreadable (see the note above)")
                continue
            picks: dict[int, tuple[int, str, TensorRef]] = {}
            failed = False
            for m in members:
                answer = (
                    f"{m.name!r} names two tensors of the target (made unique by a #n suffix); not matched by name"
                    if m.name in ambiguous else _candidate(m, donor, allow_cast, baseline, key_of.get(id(m)))
                )
                if isinstance(answer, tuple):
                    picks[id(m)] = (index, *answer)
                    continue
                reasons.setdefault(id(m), []).append(f"{where}: {answer}")
                # A tied copy the donor lacks does not block it: the partner's restore covers it.
                if not (answer == _NOT_FOUND and tie_count[keys[id(m)]] > 1):
                    failed = True
            if not failed and picks:
                chosen.update(picks)
                break
            if failed and len(members) > 1:
                # Say why the whole unit moved on, for the members that were fine in this donor.
                for m in members:
                    if id(m) in picks:
                        reasons.setdefault(id(m), []).append(f"{where}: another tensor of its layer has no good copy here")

    own = _follow_partners(report, needed, tied, keys, chosen, reasons, len(views))
    restorations: list[Restoration] = []
    unrestorable: list[Unrestorable] = []
    writer_of: dict[tuple, TensorResult] = {}
    for t in needed:  # report order: the first of a tie with a donor writes it
        if id(t) in chosen and keys[id(t)] not in writer_of:
            writer_of[keys[id(t)]] = t
    for t in needed:
        writer = writer_of.get(keys[id(t)])
        # (a zeroed tensor without a donor copy is no less unrestorable than a NaN one: the copy left with it would fail
        # the gate, and a repair never writes an output that does)
        if writer is None:
            unrestorable.append(
                Unrestorable(t.name, t.nan, t.posinf, t.neginf, tuple(reasons.get(id(t)) or ["no donor given"]))
            )
            continue
        index, donor_name, donor_ref = chosen[id(writer)]
        restorations.append(
            Restoration(
                name=t.name,
                dtype=t.ref.dtype,
                shape=tuple(t.ref.shape),
                nan=t.nan,
                posinf=t.posinf,
                neginf=t.neginf,
                reason="bad" if _restored(t) else "layer",
                donor=index,
                donor_name=donor_name,
                target_ref=t.ref,
                donor_ref=donor_ref,
                via=None if t is writer else writer.name,
                findings=tuple(f for f in t.findings if f in RESTORED_FINDINGS),
            )
        )

    notes = tuple(f"donor {_describe(v.catalog)} could not be read: {v.error}" for v in views if v.error)
    notes += tuple(
        f"{name} is tied to {partner} (config.json: tie_word_embeddings): restored from the values {partner} has "
        "in the repaired checkpoint, so that the two stay equal and the loader ties them again"
        for name, partner in tied.items() if any(r.name == name for r in restorations)
    )
    cast: tuple[str, ...] = ()
    notes += _name_overlap_notes(report, views)
    if unrestorable and not allow_cast:
        cast = _cast_note(report, unrestorable, views)
        notes += cast
    return RepairPlan(
        target=report.target,
        donors=tuple(DonorInfo(d.label, d.step) for d in donors) + ((DonorInfo(report.target, None, own=True),) if own else ()),
        scope=scope,
        restorations=tuple(restorations),
        unrestorable=tuple(unrestorable),
        unviewed=tuple(report.unviewed),
        notes=notes,
        allow_cast=allow_cast,
        cast_helps=bool(cast),
        exclude_globs=_optimizer_globs(report, unrestorable),
        health_limits=report.extra.get("health_limits"),
        donors_unreadable=tuple((v.catalog.label, v.failure) for v in views if v.failure)
        if unrestorable and views and all(v.failure for v in views) else (),
    )


def _follow_partners(
    report: ScanReport, needed: Sequence[TensorResult], tied: Mapping[str, str], keys: Mapping[int, tuple],
    chosen: dict[int, tuple[int, str, TensorRef]], reasons: dict[int, list[str]], own_index: int,
) -> bool:
    """Give each bad tied copy in ``tied`` its partner's source in ``chosen``: the partner's donor tensor
    when the partner is restored too, else the partner itself in the target (donor ``own_index``, the
    target). Whether the target itself became a donor."""
    by_name = {t.name: t for t in needed}
    donor_of = {keys[id(t)]: chosen[id(t)] for t in needed if id(t) in chosen}  # (a storage viewed twice: either)
    own = False
    for t in needed:
        partner = tied.get(t.name)
        if partner is None:
            continue
        seen = {t.name}
        while partner in tied and partner not in seen:  # a partner that is a bad tied copy itself: its partner
            seen.add(partner)
            partner = tied[partner]
        restored = by_name.get(partner)
        if restored is None:  # healthy in the target: the very values the loader ties the copy to
            row = report.tensors.refs.names.index(partner)
            chosen[id(t)] = (own_index, partner, report.tensors.refs[row])
            own = True
        elif keys[id(restored)] in donor_of:
            chosen[id(t)] = donor_of[keys[id(restored)]]
        else:
            reasons[id(t)] = [f"tied to {partner!r} (config.json: tie_word_embeddings), which has no good donor"]
    return own


def _optimizer_globs(report: ScanReport, unrestorable: Sequence[Unrestorable]) -> tuple[str, ...]:
    """``--exclude`` patterns for the optimizer state among the tensors without a donor (a weights-only donor
    has none): the top-level name each lies under in this format (``optimizer_states.*`` for Lightning)."""
    left = {u.name for u in unrestorable}
    names = [t.name for t in report.tensors if t.name in left and t.ref.role == "optimizer"]
    return tuple(sorted({n.split(".", 1)[0] + ".*" if "." in n else n for n in names}))
