"""The one place that decides: findings per tensor, which of them fail the gate, the exit code, the words.

A tensor's counts and census (NaN/±Inf, values above the ceiling, outliers
above its own bulk, all zeros, overflow for a target dtype) become *findings*
according to its role: ``exploded``, ``outlier`` and ``zeroed`` apply to model
weights only; NaN/Inf are findings in every role but ``trainer`` state (a
Lightning ``kth_value = inf`` is a sentinel, not damage). ``fail_on`` picks the
findings that fail (default: all of them; what a shorter list leaves out is
reported). Something unreadable always fails (exit 3): a part
that was not read could hold anything. The rich report, JSON, ``--quiet``,
``assert_finite``, the callbacks and repair's verification all read what this
module decided (``ScanReport.judgement``); none of them decides again.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nandoctor.checkpoint.roles import holds_sentinels, is_variance, judged_as_weight, moment_segment
from nandoctor.errors import EXIT_NONFINITE, EXIT_OK, EXIT_UNREADABLE
from nandoctor.layers import bad_ranges, component_of, layer_of, normalise, summarize, zero_breaks
from nandoctor.model import (
    BASE_KIND,
    CONFIG_KIND,
    DEFAULT_LOAD_REFUSES,
    EMPTY_KIND,
    FLOAT32_MAX,
    HASH_KIND,
    NAMES_KIND,
    SELECTION_KIND,
    UNLOADABLE_KIND,
    UNREADABLE_KIND,
    UNVERIFIED_KIND,
    Outliers,
    ScanProblem,
    ScanReport,
    TensorResult,
    TensorResults,
    Verdict,
    is_pickled_float,
)
from nandoctor.wording import first_few, plural

NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW = "nonfinite", "exploded", "outlier", "zeroed", "overflow"
FAIL_ON_CHOICES = (NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW)
DEFAULT_FAIL_ON: frozenset[str] = frozenset({NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW})
FAILING_BY_DEFAULT = (NONFINITE, EXPLODED, OUTLIER)  # what makes a tensor "unhealthy"
CAST_ROLES = ("weight", "buffer")  # what a cast to the serving dtype touches
FINDING_WORDS = {
    NONFINITE: "NON-FINITE",
    EXPLODED: "EXPLODED",
    OUTLIER: "OUTLIERS",
    ZEROED: "ZEROED",
}
OVERFLOW_WORDS = "OVERFLOW RISK ({dtype})"  # with the --target-dtype
# What stopped a checkpoint being judged (``ScanProblem.kind``, exit 3, model.py), in the verdict's words and in the
# one-line facts (count → phrase). Every kind is named for what it is: a hash mismatch is not "unreadable".
PROBLEM_WORDS = {
    UNREADABLE_KIND: "UNREADABLE",
    HASH_KIND: "HASH MISMATCH",
    NAMES_KIND: "TENSOR NAMES CHANGED",
    SELECTION_KIND: "NOTHING SELECTED",
    UNVERIFIED_KIND: "NOTHING VERIFIED",
    EMPTY_KIND: "NO TENSORS",
    UNLOADABLE_KIND: "NOT LOADABLE",
    CONFIG_KIND: "BAD CONFIG",
    BASE_KIND: "BASE MODEL UNREADABLE",  # (with the base's own words where its scan gave some: _problem_words)
}
_PROBLEM_FACTS = {
    UNREADABLE_KIND: lambda n: f"{n} part(s) unreadable",
    HASH_KIND: lambda n: f"{plural(n, 'file')} {'fails its' if n == 1 else 'fail their'} sha256 check",
    NAMES_KIND: lambda n: "weights stored under names its model does not load",
    SELECTION_KIND: lambda n: "--only/--exclude left nothing to scan",
    EMPTY_KIND: lambda n: "no tensors to check" if n == 1 else f"{n} files hold no tensors",
    UNLOADABLE_KIND: lambda n: "it would not load as a checkpoint" if n == 1 else f"{n} reasons it would not load",
    CONFIG_KIND: lambda n: f"{plural(n, 'config file')} {'holds' if n == 1 else 'hold'} values the model cannot work with",
    BASE_KIND: lambda n: "the base model it is applied to could not be read, or its own scan found a problem",
    UNVERIFIED_KIND: lambda n: "--verify-hashes verified nothing: no weight file has a recorded sha256 (record them "
                               "from a good copy with `nandoctor manifest PATH > manifest.json` and scan with --manifest, "
                               "or scan the repo id from the Hugging Face cache)",
}
_QUOTE_FIRST = (UNREADABLE_KIND, HASH_KIND, NAMES_KIND, SELECTION_KIND, EMPTY_KIND, UNLOADABLE_KIND, CONFIG_KIND,
                BASE_KIND)  # the unverified fact says all there is
CLEAN_WORDS, ALSO_REPORTED, REPORTED_ONLY = "CLEAN", " (also reported: {})", " (reported only)"
DIVERGED_WORDS = "DIVERGED"  # a checkpoint of a run diverged by its growth alone (no finding of its own)
# a PEFT adapter alone's base model (adapterbase.py): its verdict words after these, NON-FINITE, UNREADABLE …
BASE_WORDS = "BASE MODEL {}"
# A checkpoint is "diverged" rather than "poisoned" when this share of its weight tensors is unhealthy
# (NaN/Inf or exploded, counted together): a repair would swap most of the model for the donor's, i.e.
# hand back the donor under the bad checkpoint's name, with an optimizer state that no longer matches it.
# A few bad tensors (one layer's NaN) stay "poisoned": restoring them from a donor is a real repair.
DIVERGED_SHARE = 0.25
# NaN/Inf alone needs a majority: fp16 overflow poisons whole layers at once (the motivating run lost three
# of 24 layers, ~12 % of its tensors), which a donor repairs; past half the model the NaN has spread, and
# the same repair would hand back the donor. Exploded weights need only DIVERGED_SHARE: nothing but
# divergence makes finite weights grow that far.
NONFINITE_DIVERGED_SHARE = 0.5
# A weight tensor counts towards those shares only when at least this share of its elements is bad (NaN/Inf or
# above the exploded ceiling, counted together): divergence breaks tensors throughout, damage is scattered. On
# real runs a diverged tensor is 1.8 % (the first exploded step of tests/realruns.py's Trainer run) to 100 % bad
# (every NaN run: 6 of 6 Lightning tensors, the Trainer run's trained ones), a blown-up fp16 model 16-25 %;
# scattered damage (bit flips, a few NaN per tensor: 1-4 in 33M) is well under 1e-5. One in a thousand, the
# share the census's bulk scale looks past (kernels/census.py), sits between with margin either way; a GGUF
# tensor's share is of its blocks' scale fields, which its counts are of.
BROKEN_TENSOR_SHARE = 1e-3
# A weight tensor whose bulk (its 99.9th-percentile magnitude: kernels/census.py) is at least this is far beyond what
# training makes: the largest real parameter measured is 9,151 (a lookup table; docs/health.md), the largest bulk
# lower. One such tensor is a real model's own (a SincNet filter in Hz); most of a model's weights there is a run
# that blew up from its first steps, which has no healthy checkpoint to measure growth against (a trial: a Lightning
# net at lr 1e4 saved every weight at 2e4-8e4, read CLEAN, then POISONED, and repaired from a donor in the same state)
HUGE_BULK = 2.0**12
HUGE_BULK_SHARE = 0.5
# and at least this many such tensors: a linear regression fitted in raw units (dollars) holds its two tensors, weight
# and bias, at 5e3-6e4 by design (a trial's), a network of layers does not
HUGE_BULK_FEWEST = 4
RUN_CONTEXT = "run"  # ScanReport.extra key: the run a checkpoint was judged within (checkpoint/runcontext.py)

# ---------------------------------------------------------------------------------------------
# Options


USAGE_WORDS = "USAGE ERROR"  # the JSON verdict of a command given --json that stopped at its options (exit 2)
ALWAYS_FAILS: frozenset[str] = frozenset({NONFINITE})  # NaN/Inf is never safe to load: no --fail-on passes it


def gate_set(fail_on: frozenset[str] | None) -> frozenset[str]:
    """The findings a gate fails on: ``fail_on`` (None: the default), NaN/Inf always among them. A list that
    leaves ``nonfinite`` out (``--fail-on zeroed``, meant as "zeroed too") must not pass a NaN checkpoint;
    a tensor whose NaN is known and harmless is left out by ``--exclude``, which the report counts."""
    return (DEFAULT_FAIL_ON if fail_on is None else frozenset(fail_on)) | ALWAYS_FAILS


def parse_fail_on(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"exploded,outlier"`` (or an iterable of names) → the set a gate fails on (:func:`gate_set`: ``nonfinite``
    always in it); names written ``+zeroed`` are added to the default set instead of replacing it. ValueError names
    the choices."""
    if value is None:
        return DEFAULT_FAIL_ON
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, Iterable) else None
    if parts is None or not all(isinstance(p, str) for p in parts):
        raise TypeError(f"fail_on (--fail-on) takes finding names ({', '.join(FAIL_ON_CHOICES)}) as one comma-separated "
                        f"string or a list of strings; got {value!r}")
    words = [p.strip().lower() for p in parts if p.strip()]
    names = {w.removeprefix("+").strip() for w in words}
    unknown = names - set(FAIL_ON_CHOICES)
    if unknown or not names:
        raise ValueError(f"fail_on (--fail-on) takes a comma-separated list of {', '.join(FAIL_ON_CHOICES)} (+name: "
                         f"added to the default {','.join(f for f in FAIL_ON_CHOICES if f in DEFAULT_FAIL_ON)}); "
                         f"got {value!r}")
    added = any(w.startswith("+") for w in words)
    return gate_set(frozenset(names) | (DEFAULT_FAIL_ON if added else frozenset()))


def checks_overflow_alone(fail_on: frozenset[str]) -> bool:
    """Whether the gate asks for overflow and nothing but the NaN/Inf every gate checks (``--fail-on overflow``)."""
    return OVERFLOW in fail_on and fail_on <= ALWAYS_FAILS | {OVERFLOW}


def require_target_for_overflow(fail_on: frozenset[str], target_dtype: str | None) -> None:
    """ValueError when the gate asks for overflow alone without a target dtype: the check asked for has nothing
    to measure against."""
    if target_dtype is None and checks_overflow_alone(fail_on):
        raise ValueError(
            "--fail-on overflow (fail_on=\"overflow\") has nothing to check: no target dtype is given and no config.json "
            "makes the weights load in a dtype they can overflow; add --target-dtype fp16 (target_dtype=\"fp16\"; or "
            "bf16, fp8_e4m3, fp8_e5m2), or gate on other findings (e.g. --fail-on nonfinite,exploded,outlier)"
        )


# ---------------------------------------------------------------------------------------------
# Tensor findings


def tensor_findings(t: TensorResult) -> tuple[str, ...]:
    """The findings of one tensor from its counts, census and role (``zeroed`` needs the other tensors: see
    _zeroed)."""
    return _findings(t.ref.role, t.ref.name, *_judged(t.ref.role, t.ref.name, t.nan, t.posinf, t.neginf, t.overflow),
                     t.exploded, t.outliers)


def _judged(role: str, name: str, nan: int, posinf: int, neginf: int, overflow: int) -> tuple[int, int]:
    """(the NaN/Inf that are a finding, the overflow that is): a mask, bound or observer buffer holds ±Inf
    (and mask values like -1e9 that a cast turns into -Inf) by design (roles.holds_sentinels)."""
    if role == "buffer" and (posinf or neginf or overflow) and holds_sentinels(name):
        return nan, 0
    return nan + posinf + neginf, overflow


def _findings(role: str, name: str, nonfinite: int, overflow: int, exploded: int,
              outliers: Outliers | None) -> tuple[str, ...]:
    found = []
    if nonfinite and role != "trainer":
        found.append(NONFINITE)
    if (exploded or outliers is not None) and judged_as_weight(name, role):
        if exploded:
            found.append(EXPLODED)
        if outliers is not None and outliers.count:
            found.append(OUTLIER)
    if overflow and role in CAST_ROLES:
        found.append(OVERFLOW)
    return tuple(found)


def _all_findings(tensors: TensorResults) -> list[tuple[str, ...]]:
    """Every tensor's findings, from the columns: only a tensor with some count, outliers or overflow can
    have one (``zeroed`` needs the other tensors: see _zeroed)."""
    roles, names = tensors.refs.roles, tensors.refs.names
    nan, posinf, neginf, exploded = tensors.nan, tensors.posinf, tensors.neginf, tensors.exploded
    outliers, overflow = tensors.outliers, tensors.overflow
    maybe: set[int] = set()
    for column in (nan, posinf, neginf, exploded, overflow):
        if any(column):  # (one C pass; most columns are all zeros)
            maybe.update([i for i, value in enumerate(column) if value])
    if outliers.count(None) != len(outliers):
        maybe.update([i for i, found in enumerate(outliers) if found is not None])
    out: list[tuple[str, ...]] = [()] * len(roles)
    for i in maybe:
        out[i] = _findings(roles[i], names[i], *_judged(roles[i], names[i], nan[i], posinf[i], neginf[i], overflow[i]),
                           exploded[i], outliers[i])
    if "buffer" in roles:  # (one C scan: most checkpoints hold no buffer)
        for i in _exploded_running_stats(tensors):
            if EXPLODED not in out[i]:
                out[i] += (EXPLODED,)
    if "optimizer" in roles:
        for i in _exploded_moments(tensors):
            if EXPLODED not in out[i]:
                out[i] += (EXPLODED,)
    for i in maybe:  # a variance's exploded values are its negative ones (no magnitude is: kernels/census.py)
        if exploded[i] and roles[i] != "weight" and EXPLODED not in out[i] and is_variance(names[i], roles[i]):
            out[i] += (EXPLODED,)
    return out


# A BatchNorm's running mean or variance above this is a flipped top exponent bit, no statistic: the bit multiplies
# an fp32 value by 2^128, making 1e37 of a mean of 0.05 (a trial: eval logits went from 0.19 to 9.1e33, the scan
# said CLEAN). Real ones reach 1e18 (a review: BatchNorm1d with momentum None over raw features in cents and Unix
# times, 98 % accurate), so only what no statistic of fp32 inputs reaches is judged. Buffers are otherwise judged for
# NaN/Inf alone (their magnitudes grow with training by design: an RL normaliser's count).
RUNNING_STAT_CEILING = 1e30
_RUNNING_STATS = (".running_mean", ".running_var")


def _exploded_running_stats(tensors: TensorResults) -> list[int]:
    """Rows of BatchNorm running statistics (buffers) whose largest finite magnitude is above RUNNING_STAT_CEILING."""
    roles, names, tops = tensors.refs.roles, tensors.refs.names, tensors.max_abs
    return [i for i, (role, top) in enumerate(zip(roles, tops)) if role == "buffer" and names[i].endswith(_RUNNING_STATS)
            and top is not None and top > RUNNING_STAT_CEILING]


# An optimizer moment (Adam's exp_avg or exp_avg_sq, SGD's momentum) above this is a step from overflowing float32: a
# second moment of 1e30 is a gradient of 1e15, which no training that still learns produces (a helper's real run: a
# loss scaled by 1e25 once left exp_avg_sq of 2e38 beside others overflowed to Inf; a repair of the Inf ones alone,
# "verified CLEAN", put NaN in the weights two steps into the resume). Below it, a moment's size is no finding.
MOMENT_CEILING = 1e30


def _exploded_moments(tensors: TensorResults) -> list[int]:
    """Rows of optimizer moments whose largest finite magnitude is above MOMENT_CEILING."""
    roles, names, tops = tensors.refs.roles, tensors.refs.names, tensors.max_abs
    return [i for i, (role, top) in enumerate(zip(roles, tops)) if role == "optimizer" and top is not None
            and top > MOMENT_CEILING and moment_segment(names[i]) is not None]


_LAYER_NUMBER = re.compile(r"\.\d+\.")


def family_of(name: str) -> str:
    """A tensor's name with its layer numbers taken out (``model.layers.#.mlp.down_proj.weight``): the same
    tensor of every layer shares it."""
    return _LAYER_NUMBER.sub(".#.", name)


def sibling_keys(names: Sequence[str], dtypes: Sequence[str], shapes: Sequence[Sequence[int]],
                 rows: Iterable[int]) -> dict[int, tuple[Any, ...]]:
    """The siblings key of each of ``rows``: its family (:func:`family_of`), dtype and shape, and what its module
    holds (every tensor name directly under the module, with its dtype and shape, as a small id). Numbers also index
    an ``nn.Sequential``'s entries, which are different layers: ``proj.0.bias`` (a Linear's) and ``proj.1.bias`` (a
    LayerNorm's, zero from its start) share a family and a shape but not their modules' weights (a trial: a fresh
    LayerNorm bias was ZEROED on every checkpoint of healthy Lightning runs, a stochastic-weight-averaging copy before
    averaging). Only the modules of ``rows`` are gathered, each signature once (a million names: one pass)."""
    wanted = list(rows)
    modules = {names[i].rpartition(".")[0] for i in wanted}
    held: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {}
    for name, dtype, shape in zip(names, dtypes, shapes):
        module, _, leaf = name.rpartition(".")
        if module in modules:
            held.setdefault(module, []).append((leaf, dtype, tuple(shape)))
    signatures: dict[tuple[tuple[str, str, tuple[int, ...]], ...], int] = {}
    ids = {module: signatures.setdefault(tuple(sorted(entries)), len(signatures)) for module, entries in held.items()}
    return {i: (family_of(names[i]), dtypes[i], tuple(shapes[i]), ids[names[i].rpartition(".")[0]]) for i in wanted}


ZEROED_SINCE = "zeroed_since"  # run context key: {"names": [...], "checkpoint": name} (checkpoint/runs.py)
LOSS_BROKE_FROM = "loss_broke_from"  # run context key: the step from which the log's loss jump broke the weights


def loss_broke_from(report: ScanReport) -> int | None:
    """The step from which the trainer log's loss jump broke the saved weights, where ``report``'s checkpoint was
    saved from then on (checkpoint/runcontext.py); None otherwise."""
    value = (run_context(report) or {}).get(LOSS_BROKE_FROM)
    return value if isinstance(value, int) else None


def loss_jump_caution(report: ScanReport) -> str | None:
    """For a checkpoint saved after its trainer log's loss jumped and stayed up (checkpoint/runcontext.py), what a
    scan of it says beside its verdict, which the jump does not change; None otherwise."""
    context = run_context(report) or {}
    jump, broke = context.get("loss_jump"), context.get(LOSS_BROKE_FROM)
    if not isinstance(jump, dict) or not isinstance(broke, int) or jump.get("sustained") is False:
        return None  # (a jump at the log's last entry under 100x: with growth it is diverged, on its own not said)
    loss, early = jump.get("loss"), jump.get("early_loss")
    if not isinstance(loss, (int, float)) or not isinstance(early, (int, float)) or early <= 0:
        return None
    if jump.get("untrained") is True:  # (baseline.untrained_jump: a loss standing above an untrained model's)
        return (f"but the trainer log's {untrained_words(jump, ' is')}; its weights score worse than a model that "
                "guesses uniformly: no resume point, evaluate it (its loss on held-out data) before using it")
    return (f"but the trainer log's loss jumped to {loss:.4g} at step {jump.get('step')}, {loss / early:.3g}x its "
            f"early {early:.4g}: the weights saved from step {broke} on made that loss (unless the data changed "
            "there); check this checkpoint's loss before using it")


def cautioned(report: ScanReport, decided: Verdict) -> bool:
    """Whether a passing verdict comes with something to look at, so that no report marks it with a green check
    (a headline's ⚠ PASS): findings only reported (ZEROED; an adapter's base model's too), or a trainer log whose loss jumped before the checkpoint
    was saved (a new user's trial: "✓ CLEAN …; but the trainer log's loss jumped to 7.1e+04", the model's loss
    38,563)."""
    return bool(decided.reported or decided.base_reported) or loss_jump_caution(report) is not None


def loss_broke_words(name: str, step: int) -> str:
    """The caution for a checkpoint saved after its run's loss broke, whose bad tensors a repair would restore: its
    other tensors are from after the break (where only the restored ones moved, a head trained alone, the repair is
    the model as it was; where all moved, it is a stitched one). The run scan, a standalone scan and the repair's
    note say it alike."""
    return (f"{name} was saved after the trainer log's loss broke (the weights saved from step {step} on made the "
            "jump): a repair keeps its other tensors from after the break, so check the repaired model's loss before "
            "using it")


# A tensor is as good as zero where its largest magnitude is below this (no trained weight is: fp32's smallest normal
# is 1.2e-38) or where all but a handful of its elements are zero: an adversarial round's LM head filled with 1e-45,
# or zeroed but for one element, read ✓ healthy and last healthy, and the model repeated one token
_TINY = 2.0**-100
# (one element non-zero, or one in a thousand, in a tensor of 16 or more: a one-hot or identity pattern holds more)
_FEWEST_FOR_ALL_BUT = 16


def _all_zero_rows(tensors: TensorResults) -> list[int]:
    """Rows of float weight tensors whose elements are all zero, or as good as zero (:data:`_TINY`, or all but one
    in a thousand at most, one in a small tensor):
    no NaN/Inf, largest finite magnitude 0 (and, where that was sampled — below 2.0 in a large tensor — every element
    counted a zero)."""
    max_abs, zeros = tensors.max_abs, tensors.zeros
    refs = tensors.refs
    numels = refs.numels()
    # (C-level scans first: no tensor is all zero, tiny throughout, or non-zero in fewer elements than the most any
    # tensor may hold and still be as good as zero; a million tensors are then not looped over)
    if (0.0 not in max_abs and min(filter(None, max_abs), default=1.0) > _TINY
            and min(map(operator.sub, numels, zeros), default=1) > max(1, max(numels, default=0) // 1000)):
        return []
    roles, nan, posinf, neginf = refs.roles, tensors.nan, tensors.posinf, tensors.neginf
    names = refs.names
    return [i for i, top in enumerate(max_abs)
            if top is not None and roles[i] == "weight" and tensors.can_hold_nonfinite[i] and numels[i]
            and not (nan[i] + posinf[i] + neginf[i])
            and ((top == 0.0 and (tensors.max_abs_exact[i] or zeros[i] >= numels[i]))
                 # (as good as zero: not a bias, which starts at zero and may be left so but for a few elements; a
                 # largest magnitude of 0 that was sampled says nothing of the lanes between (the guard above, a
                 # review: a tensor zero at exactly the sampled lanes read zeroed), the zeros are counted exactly)
                 or (not names[i].endswith(".bias")
                     and (0.0 < top <= _TINY or (numels[i] >= _FEWEST_FOR_ALL_BUT
                                                 and zeros[i] >= numels[i] - max(1, numels[i] // 1000)))))]


def zero_weights(report: ScanReport) -> set[str]:
    """The names of ``report``'s float weight tensors that are all zero."""
    names = report.tensors.refs.names
    return {names[i] for i in _all_zero_rows(report.tensors)}


def newly_zero(report: ScanReport, earlier: ScanReport) -> list[str]:
    """The weight tensors all zero in ``report`` that were not all zero (finite or not) in ``earlier``, a
    checkpoint of the same run before it, sorted: training never zeroes a whole tensor, a broken copy or write
    does (checkpoint/runs.py, ``zeroed_since``)."""
    zero = zero_weights(report)
    if not zero:
        return []
    tensors = earlier.tensors
    names, roles, findings = tensors.refs.names, tensors.refs.roles, tensors.findings
    zero_then = zero_weights(earlier) & zero  # (as good as zero then too: not zeroed since)
    return sorted(name for i, (name, top) in enumerate(zip(names, tensors.max_abs)) if name in zero
                  and name not in zero_then and roles[i] == "weight"
                  and ((top is not None and top > 0.0) or NONFINITE in findings[i]))


def zeroed_in_run(report: ScanReport) -> tuple[tuple[str, ...], str | None]:
    """(the weights found ``zeroed`` because an earlier checkpoint of the run held them not all zero, that
    checkpoint's name): certain damage (training never zeroes a whole tensor), so such a checkpoint is no resume
    point though the default gate only reports it (an adversarial round: a run named the checkpoint whose
    ``model.norm.weight`` a broken copy had zeroed "last healthy", and it generated token 0 alone)."""
    since = _zeroed_since(report)
    named = set(since.get("names", ()))
    if not named:
        return (), None
    found = tuple(t.name for t in with_finding(report, ZEROED) if t.name in named)
    return found, since.get("checkpoint") if found else None


def unexplained_zeros(report: ScanReport) -> bool:
    """Whether ``report`` holds an all-zero weight tensor with no finding that is no bias or LoRA/adapter weight:
    only then can its run (:func:`newly_zero`) make it ``zeroed`` (checkpoint/runcontext.py scans the previous
    checkpoint for it)."""
    names, findings = report.tensors.refs.names, report.tensors.findings
    return any(ZEROED not in findings[i] and not names[i].endswith(".bias") and "lora_" not in names[i].lower()
               for i in _all_zero_rows(report.tensors))


def _zeroed(tensors: TensorResults, since: Iterable[str] = ()) -> set[int]:
    """Indices of the all-zero weight tensors that are damage (docs/health.md, "zeroed"):

    - siblings in the other layers are not all zero (they share a name once the layer number is taken out:
      ``model.layers.#.mlp.down_proj.weight``, a dtype, a shape and what their modules hold: :func:`sibling_keys`;
      the numbered entries of an ``nn.Sequential`` are different layers, a fresh model's zero-initialised last conv
      or box-head layer among them);
    - a normalization gain, token embedding or LM head (layers.zero_breaks), no sibling needed: a gain only
      while another gain of the checkpoint is not all zero (a model whose norms scale by ``1 + w``, Gemma's,
      starts with every gain at zero);
    - named in ``since``: not all zero in an earlier checkpoint of the run (:func:`newly_zero`).

    Other tensors with no sibling are not judged: some are legitimately zero (a fresh LoRA ``lora_B``, biases). Nor
    are biases and LoRA tensors among siblings (:data:`_STARTS_AT_ZERO`): they start at zero, and a layer no gradient
    reaches keeps them so while the other layers' train (a false-alarm hunt: LLaVA's unused last vision layer under an
    all-linear LoRA, Mllama's cross-attention layer in text-only training).
    """
    zero = set(_all_zero_rows(tensors))
    if not zero:
        return set()
    refs = tensors.refs
    names, roles, dtypes, shapes, files = refs.names, refs.roles, refs.dtypes, refs.shapes, refs.files
    # (a member is evidence of non-zero siblings by a finite value that is not zero: a NaN planted among zeros is
    # damage of its own, and left its zero siblings, GPT-2's fresh c_attn biases, no less legitimate. Siblings are
    # of one model: the files of one folder, its shards; a unet_ema/ beside unet/ is another model)
    folders = {file: os.path.dirname(file) for file in set(files)}
    judged = [i for i, top in enumerate(tensors.max_abs)
              if top is not None and roles[i] == "weight" and tensors.can_hold_nonfinite[i] and _LAYER_NUMBER.search(names[i])
              and not _STARTS_AT_ZERO.search(names[i])]
    keys = sibling_keys(names, dtypes, shapes, judged)
    families: dict[tuple[Any, ...], list[tuple[int, bool]]] = {}
    for i in judged:
        top = tensors.max_abs[i]
        families.setdefault((*keys[i], folders[files[i]]), []).append((i, top is not None and top > 0.0))
    out: set[int] = set()
    for members in families.values():
        if any(nonzero for _, nonzero in members):
            out.update(i for i, _ in members if i in zero)
    out -= _identity_blocks(tensors, out)
    kinds = {i: zero_breaks(names[i], len(shapes[i])) for i in zero}
    if "norm" in kinds.values():
        # A model whose norms scale by 1 + w (Gemma, Qwen3-Next) starts with gains at zero: a whole family of layer
        # gains all zero (every layer's input_layernorm) is such a start, and so is a lone gain (the final norm)
        # beside one. Other gains may start at one (Qwen3-Next's gated linear_attn.norm), so one gain that is not
        # zero proves nothing; a zero gain among non-zero siblings is still damage (the sibling rule above).
        gains: dict[str, list[bool]] = {}
        for i, name in enumerate(names):
            if roles[i] == "weight" and tensors.can_hold_nonfinite[i] and zero_breaks(name, len(shapes[i])) == "norm":
                gains.setdefault(family_of(name), []).append(i in zero)
        starts = {family for family, flags in gains.items() if all(flags) and ".#." in family}
        if starts or not any(not flag for flags in gains.values() for flag in flags):
            kinds = {i: kind for i, kind in kinds.items()
                     if kind != "norm" or (family_of(names[i]) not in starts and ".#." in family_of(names[i]))}
    out.update(i for i, kind in kinds.items() if kind is not None)
    named = set(since)
    out.update(i for i in zero if names[i] in named)
    return out


# tensors that start at zero (a Linear's or LayerNorm's bias, PEFT's lora_B and lora_embedding_A) and stay so in a
# layer no gradient reaches: never judged by their siblings
_STARTS_AT_ZERO = re.compile(r"(\.bias|\.lora_(?:embedding_)?[AB](?:\.[^.]+)?(?:\.weight)?)$")

# The output projections of a block's attention and MLP: both at zero make the block the identity (the residual
# stream passes through), as block expansion builds it on purpose (LLaMA Pro, depth up-scaling with zero-initialised
# layers) and its training starts from
_OUTPUT_PROJECTION = re.compile(r"\.(o_proj|out_proj|down_proj|c_proj|dense_4h_to_h|fc2|wo|w2)\.(weight|bias)$")


def _identity_blocks(tensors: TensorResults, zero_rows: set[int]) -> set[int]:
    """The rows of ``zero_rows`` in inserted identity blocks: a layer whose zero tensors are exactly its attention's and
    its MLP's output projections, and whose other weights are a copy of another layer's (each has a namesake there
    with the same largest value, bulk and zeros), as block expansion builds it (LLaMA Pro: a trial's expansion, the
    base model's logits exactly, read ZEROED with the advice to restore its new layers from the base model). A layer
    of its own wiped so is damage, and stays zeroed (a review: a trained model's layer with both projections zeroed
    generated garbage, and read CLEAN under a rule without the copy)."""
    names, roles = tensors.refs.names, tensors.refs.roles
    by_layer: dict[str, list[int]] = {}
    for i in zero_rows:
        by_layer.setdefault(layer_of(names[i]).group, []).append(i)
    candidates = {group: rows for group, rows in by_layer.items()
                  if all(_OUTPUT_PROJECTION.search(names[i]) for i in rows)
                  and {"attention", "mlp"} <= {component_of(names[i]) for i in rows}}
    if not candidates:
        return set()
    # (a tensor's census as its copy has it: where that family's tensor with these values lies, by layer)
    where: dict[tuple[Any, ...], set[str]] = {}
    own: dict[str, list[tuple[Any, ...]]] = {group: [] for group in candidates}
    for i, name in enumerate(names):
        if roles[i] != "weight" or tensors.max_abs[i] is None or i in zero_rows:
            continue
        group = layer_of(name).group
        census = (family_of(name), tensors.max_abs[i], tensors.zeros[i], tensors.bulk_scale[i])
        where.setdefault(census, set()).add(group)
        if group in own:
            own[group].append(census)
    found: set[int] = set()
    for group, rows in candidates.items():
        if not own[group]:
            continue
        sources = set.intersection(*(where[census] for census in own[group])) - {group}
        if sources:  # (every other weight of the layer matches one other layer's: a copy of it)
            found.update(rows)
    return found


WEIGHT_NORM_ZERO = "weight_norm_zero"  # extra key: weight-norm directions with a slice of zeros (checkpoint/weightnorm.py)


def _weight_norm_zero(report: ScanReport) -> list[dict[str, Any]]:
    """The weight-norm directions of ``report`` with a slice of zeros along their norm's dim (weightnorm.py)."""
    value = report.extra.get(WEIGHT_NORM_ZERO)
    return [d for d in value if isinstance(d, dict)] if isinstance(value, list) else []


def _zeroed_since(report: ScanReport) -> dict[str, Any]:
    """The run context's tensors all zero now that were not in an earlier checkpoint (checkpoint/runs.py)."""
    value = (run_context(report) or {}).get(ZEROED_SINCE)
    return value if isinstance(value, dict) and isinstance(value.get("names"), list) else {}


# ---------------------------------------------------------------------------------------------
# The report


def judged(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON) -> ScanReport:
    """``report`` with every tensor's findings, the layer summaries and the verdict filled in."""
    findings = _all_findings(report.tensors)
    for i in _zeroed(report.tensors, _zeroed_since(report).get("names", ())):
        findings[i] += (ZEROED,)
    sliced = {d.get("name") for d in _weight_norm_zero(report)}  # (a slice of zeros: 0/0 in every forward pass)
    for i, name in enumerate(report.tensors.refs.names if sliced else ()):
        if name in sliced and ZEROED not in findings[i]:
            findings[i] += (ZEROED,)
    all_fp16 = report.extra.get("target_dtype") == "fp16"
    outgrown = _outgrown_siblings(report.tensors, all_fp16)
    # (a tensor with a finding of its values already — NaN, exploded, values the fp16 cast overflows — has it said)
    outgrown = {i: found for i, found in outgrown.items() if not {NONFINITE, EXPLODED, OVERFLOW} & set(findings[i])}
    for i in outgrown:
        findings[i] += (EXPLODED,)
    dotted = {i: found for i, found in _fp16_dot_overflow(report.tensors, all_fp16).items()
              if not {NONFINITE, EXPLODED, OVERFLOW} & set(findings[i])}
    for i in dotted:
        findings[i] += (EXPLODED,)
    exponentiated = {i: found for i, found in _exp_overflow(report.tensors, all_fp16).items()
                     if not {NONFINITE, EXPLODED, OVERFLOW} & set(findings[i])}
    for i in exponentiated:
        findings[i] += (EXPLODED,)
    extra = {k: v for k, v in report.extra.items() if k not in (OUTGROWN, DOT_OVERFLOW, EXP_OVERFLOW)}
    names = report.tensors.refs.names
    if outgrown:
        extra[OUTGROWN] = [{"name": names[i], "scale": scale, "siblings": siblings}
                           for i, (scale, siblings) in outgrown.items()]
    if dotted:
        extra[DOT_OVERFLOW] = [{"name": names[i], "scale": scale, "row": row} for i, (scale, row) in dotted.items()]
    if exponentiated:
        extra[EXP_OVERFLOW] = [{"name": names[i], "value": top, "limit": limit}
                               for i, (top, limit) in exponentiated.items()]
    tensors = report.tensors.with_findings(findings)
    out = dataclasses.replace(report, tensors=tensors, layers=summarize(tensors), judgement=None, extra=extra)
    return dataclasses.replace(out, judgement=judge(out, fail_on))


def _outgrown_fact(report: ScanReport) -> str:
    """The first fp16 weight exploded by its bulk against its siblings', or by its dot products, in words
    (:func:`_outgrown_siblings`, :func:`_fp16_dot_overflow`)."""
    said = ""
    found = report.extra.get(OUTGROWN)
    if found:
        first = found[0]
        factor = first["scale"] / max(first["siblings"], GROWTH_FLOOR)
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        said += (f"; {first['name']}{more}: bulk {first['scale']:.3g}, {factor:,.0f}x its siblings' in the other "
                 "layers, too large for fp16 arithmetic")
    dotted = report.extra.get(DOT_OVERFLOW)
    if dotted:
        first = dotted[0]
        more = f" and {len(dotted) - 1} more" if len(dotted) > 1 else ""
        said += (f"; {first['name']}{more}: bulk {first['scale']:.3g} over rows of {first['row']:,}: its dot products "
                 "(the logits) pass fp16's 65,504")
    for found in report.extra.get(EXP_OVERFLOW) or ():
        said += (f"; {found['name']} holds {found['value']:.4g} in magnitude, and the model takes its exp(), which passes "
                 f"the largest value of its float type from {found['limit']:.4g} on: the logits Inf and their softmax "
                 "NaN (or, for a negative one, every logit 0)")
    return said


EXP_OVERFLOW = "exp_overflow"  # extra key (JSON): learned scalars the model exponentiates, too large for exp()
# a learned temperature the model multiplies its logits by as exp(x) (CLIP and its kin, SigLIP, CLAP, OWL-ViT,
# X-CLIP, Chinese-CLIP, AltCLIP): one element, by name
_EXPONENTIATED = re.compile(r"(?:^|\.)logit_scale(?:_[at])?$")  # (CLAP's logit_scale_a, logit_scale_t)


def _exp_limit(fp16: bool) -> float:
    """The largest x whose exp() the float type holds: ln of float32's (88.72), or of fp16's 65,504 (11.09)."""
    return math.log(65504.0) if fp16 else math.log(FLOAT32_MAX)


def _exp_overflow(tensors: TensorResults, all_fp16: bool) -> dict[int, tuple[float, float]]:
    """One-element weights the model exponentiates (:data:`_EXPONENTIATED`) whose value's exp() overflows the type
    they load in: row → (the value, the largest whose exp() that type holds). A trial flipped one exponent bit of
    CLIP's trained logit_scale (4.6 → 147): finite, no bulk to stand out from, far under every ceiling, read CLEAN,
    and logits_per_image all Inf."""
    largest = tensors.largest("weight")  # (one cached max: most checkpoints stop here)
    if largest is None or largest <= _exp_limit(True):
        return {}
    refs = tensors.refs
    out: dict[int, tuple[float, float]] = {}
    for i in (i for i, name in enumerate(refs.names) if "logit_scale" in name):
        top, limit = tensors.max_abs[i], _exp_limit(all_fp16 or refs.dtypes[i] == "F16")
        if (top is not None and top > limit and refs.roles[i] == "weight" and math.prod(refs.shapes[i]) == 1
                and _EXPONENTIATED.search(refs.names[i])):
            out[i] = (top, limit)
    return out


DOT_OVERFLOW = "fp16_dot_overflow"  # extra key (JSON): fp16 LM heads / embeddings whose dot products overflow fp16
# bulk × √row at which a dot product of unit-scale inputs reaches fp16's 65,504: a quarter of it, since the bulk
# scale is a power of two (up to 2x under the values) and real inputs are not all of unit scale
DOT_LIMIT = 2.0**14


def _fp16_dot_overflow(tensors: TensorResults, all_fp16: bool) -> dict[int, tuple[float, int]]:
    """LM heads and token embeddings (layers.zero_breaks' token matrices) that load as fp16 whose bulk scale times
    the square root of their row length reaches fp16's largest value: row → (bulk scale, row length).

    Every value may sit under the fp16 ceiling (2^14) with no sibling to compare with, and the logits still
    overflow: an LM head or tied embedding scaled whole to a largest value of 16,000 gave Inf logits in 30 of 46
    fp16 cases of an oracle sweep (the dot product sums a row of them). bulk × √row is the size of a dot
    product with inputs of unit scale and random signs (judged against DOT_LIMIT), so a real model passes it by
    far: an LM head of weights 0.02–0.05 and hidden size 4096 reaches 1–3, a ten-thousandth of the limit, which
    needs a bulk of 256 at that size."""
    top = tensors.largest("weight")
    if top is None or top < 2.0:  # (one cached max: below it no bulk is that large)
        return {}
    refs = tensors.refs
    names, roles, dtypes, shapes = refs.names, refs.roles, refs.dtypes, refs.shapes
    out: dict[int, tuple[float, int]] = {}
    for i, scale in enumerate(tensors.bulk_scale):
        if scale is None or roles[i] != "weight" or len(shapes[i]) != 2 or not (all_fp16 or dtypes[i] == "F16"):
            continue
        row = int(shapes[i][1])
        if scale * math.sqrt(row) >= DOT_LIMIT and zero_breaks(names[i], 2) == "token matrix":
            out[i] = (scale, row)
    return out


OUTGROWN = "outgrown_siblings"  # extra key (JSON): the fp16 weights exploded by their bulk against their siblings'
SIBLING_FACTOR = 2.0**8  # a weight loaded as fp16 whose bulk is this far above its siblings' median is exploded ...
SIBLING_FLOOR = 2.0**8  # ... when its bulk is at least this: a family near zero (Gemma's 1 + w gains) varies freely


def _outgrown_siblings(tensors: TensorResults, all_fp16: bool) -> dict[int, tuple[float, float]]:
    """Weights that load as fp16 (stored F16, or ``all_fp16``: the target dtype, given or config.json's) whose
    bulk scale is at least SIBLING_FLOOR and SIBLING_FACTOR times the median of their siblings' (the same tensor
    of the other layers: same family, dtype, shape): row → (its scale, the siblings' median).

    Every value may be below the fp16 ceiling and the tensor still break fp16 arithmetic: one layer's norm gain
    at 1000 where its siblings hold 1 gave Inf logits in 14 architectures loaded as fp16 (a trial), and a gain
    acts twice in attention scores. Only a bulk far above its own family's is judged: real models' norms differ
    across layers by far less, and a whole family large is no single broken tensor (its growth, in a run)."""
    top = tensors.largest("weight")
    if top is None or top < SIBLING_FLOOR:  # (one cached max: most checkpoints stop here)
        return {}
    refs = tensors.refs
    names, roles, dtypes, shapes = refs.names, refs.roles, refs.dtypes, refs.shapes
    scales = {i: scale for i, scale in enumerate(map(scale_of, tensors.bulk_scale, tensors.max_abs))
              if scale is not None and roles[i] == "weight" and (all_fp16 or dtypes[i] == "F16")
              and _LAYER_NUMBER.search(names[i])}
    keys = sibling_keys(names, dtypes, shapes, scales)
    families: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
    for i, scale in scales.items():
        families.setdefault(keys[i], []).append((i, scale))
    out: dict[int, tuple[float, float]] = {}
    for members in families.values():
        if len(members) < 2 or max(scale for _, scale in members) < SIBLING_FLOOR:
            continue
        for i, scale in members:
            others = sorted(s for j, s in members if j != i)
            median = max(others[len(others) // 2], GROWTH_FLOOR)
            if scale >= SIBLING_FLOOR and scale >= SIBLING_FACTOR * median:
                out[i] = (scale, others[len(others) // 2])
    return out


def with_run_context(report: ScanReport, facts: Mapping[str, Any]) -> ScanReport:
    """``report`` judged again (under its own gate) with ``facts`` added to the run context it carries
    (``extra["run"]``: checkpoint/runcontext.py, a run scan's rows)."""
    fail_on = report.judgement.fail_on if report.judgement is not None else DEFAULT_FAIL_ON
    context = {**(run_context(report) or {}), **facts}
    return judged(dataclasses.replace(report, extra={**report.extra, RUN_CONTEXT: context}), fail_on)


def present(report: ScanReport) -> tuple[str, ...]:
    """Every finding some tensor of ``report`` has, in a fixed order."""
    findings = report.tensors.findings
    seen = {f for i in report.tensors.flagged for f in findings[i]}
    if any(u.nan or u.posinf or u.neginf for u in report.unviewed):
        seen.add(NONFINITE)
    return tuple(f for f in FAIL_ON_CHOICES if f in seen)


_CEILING_UNDER_RANGE = ("fp16", "bf16")  # cast targets whose exploded ceiling lies below their largest value


def judge(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON) -> Verdict:
    """The verdict of ``report`` (whose tensors carry their findings) under ``fail_on`` (None: the default gate;
    NaN/Inf fails under any: gate_set)."""
    fail_on = gate_set(fail_on)
    found = present(report)
    # A value that overflows fp16 or bf16 is above that dtype's exploded ceiling (2^14, 1e5) too: a gate on exploded
    # weights fails on it (a new user's trial: under --fail-on nonfinite,exploded,outlier and a float16 config.json, a
    # weight of 30,000 failed EXPLODED while one of 70,000, Inf once loaded, passed as "overflow risk")
    implied = EXPLODED in fail_on and target_dtype(report) in _CEILING_UNDER_RANGE
    failing = tuple(f for f in found if f in fail_on or (f == OVERFLOW and implied))
    reported = tuple(f for f in found if f not in failing)
    case = health(report)
    # Diverged by its growth alone (no finding: its bulk grew far past its run's first healthy checkpoint
    # under every ceiling): it fails where exploded weights fail, the run-relative form of "exploded"
    grown = case == "diverged" and not set(found) & set(FAILING_BY_DEFAULT)
    grown_fails = grown and EXPLODED in fail_on
    # (a PEFT adapter alone: its base model's findings, judged under this same gate: adapterbase.py)
    base_failing, base_reported = base_verdict(report, fail_on)
    if report.errors:
        code = EXIT_UNREADABLE  # fail closed, whatever fail_on says
    elif failing or grown_fails or base_failing:
        code = EXIT_NONFINITE
    else:
        code = EXIT_OK
    words = _words(report, failing, reported, grown_fails, grown and not grown_fails, base_failing, base_reported)
    return Verdict(code, words, case, failing, reported, fail_on, base_failing, base_reported)


def _words(report: ScanReport, failing: tuple[str, ...], reported: tuple[str, ...], grown_fails: bool = False,
           grown_reported: bool = False, base_failing: tuple[str, ...] = (), base_reported: tuple[str, ...] = ()) -> str:
    """What fails (``DIVERGED`` for a checkpoint diverged by its growth alone, the findings in ``fail_on``, an
    adapter's base model's (``BASE MODEL NON-FINITE``), then each kind of problem), then what is only reported:
    ``OVERFLOW RISK (fp16) (also reported: OUTLIERS)``, ``ZEROED (reported only)``, ``DIVERGED``, ``CLEAN``."""
    def word(finding: str, dtype: str | None = target_dtype(report)) -> str:
        if finding == BASE_DIVERGED:  # (a base model diverged by growth alone: adapterbase.py)
            return DIVERGED_WORDS
        return OVERFLOW_WORDS.format(dtype=dtype) if finding == OVERFLOW else FINDING_WORDS[finding]

    base = adapter_base_scan(report) or {}
    base_dtype = base.get("target_dtype") if isinstance(base.get("target_dtype"), str) else None
    head = ([DIVERGED_WORDS] if grown_fails else []) + [word(f) for f in failing]
    head += [BASE_WORDS.format(word(f, base_dtype)) for f in base_failing]
    head += [_problem_words(report, kind) for kind in problem_kinds(report)]
    also = ([DIVERGED_WORDS] if grown_reported else []) + [word(f) for f in reported]
    also += [BASE_WORDS.format(word(f, base_dtype)) for f in base_reported]
    if not head:
        return " + ".join(also) + REPORTED_ONLY if also else CLEAN_WORDS
    return " + ".join(head) + (ALSO_REPORTED.format(", ".join(also)) if also else "")


def _problem_words(report: ScanReport, kind: str) -> str:
    """The verdict words of ``report``'s problems of ``kind``: a base model's are its own scan's words after ``BASE
    MODEL`` (``BASE MODEL NOT LOADABLE``; ``BASE MODEL UNREADABLE`` where it could not be scanned at all)."""
    if kind == BASE_KIND:
        said = (adapter_base_scan(report) or {}).get("problem_words")
        if isinstance(said, str) and said:
            return BASE_WORDS.format(said)
    return PROBLEM_WORDS.get(kind, kind.upper())


def problem_kinds(report: ScanReport) -> tuple[str, ...]:
    """The kinds of ``report``'s problems (``ScanProblem.kind``), each once, in the order of ``PROBLEM_WORDS``."""
    kinds = {p.kind for p in report.errors}
    return tuple(k for k in PROBLEM_WORDS if k in kinds) + tuple(sorted(kinds - set(PROBLEM_WORDS)))


def weight_errors(report: ScanReport) -> tuple[ScanProblem, ...]:
    """``report``'s problems that say something of its weights: all but a config file's values (BAD CONFIG: a
    generation setting generate refuses, a pad token outside the vocabulary) and a PEFT adapter's base model that
    could not be read (adapterbase.py: the adapter's own weights were), which neither a repair donor, a resume point
    nor a comparison of the weights depends on."""
    return tuple(p for p in report.errors if p.kind not in (CONFIG_KIND, BASE_KIND))


def weights_report(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON) -> ScanReport:
    """``report`` judged on its weights alone (its config files' problems and an adapter's unreadable base left out):
    what a training callback keeps and resumes from, while the scan of the folder still fails on them."""
    kept = weight_errors(report)
    if len(kept) == len(report.errors):
        return report
    return judged(dataclasses.replace(report, errors=kept), fail_on)


def health(report: ScanReport) -> str:
    """``healthy``, ``poisoned`` (a few bad tensors: repair them), ``diverged`` (most weights broken, or
    grown far past the run's first healthy checkpoint: resume from the last healthy checkpoint) or
    ``unreadable``: the weights' health (a config file's values are no weights' problem: ``weight_errors``). A
    report judged within its run (``extra["run"]``) uses the run's baseline too."""
    if weight_errors(report):
        return "unreadable"
    if diverged_why(report):
        return "diverged"
    if report.tensors.unhealthy_rows() or any(u.nan or u.posinf or u.neginf for u in report.unviewed):
        return "poisoned"
    return "healthy"


def run_context(report: ScanReport) -> dict[str, Any] | None:
    """The run ``report``'s checkpoint was judged within (checkpoint/runcontext.py), or None."""
    value = report.extra.get(RUN_CONTEXT)
    return value if isinstance(value, dict) else None


def diverged_why(
    report: ScanReport, baseline: Mapping[str, float] | None = None, log_nonfinite_step: int | None = None,
    loss_jump: Mapping[str, Any] | None = None,
) -> str:
    """Why ``report``'s checkpoint is diverged, or ``""``: the one rule the run scan, a standalone scan
    and repair's refusal all ask (docs/health.md, "Poisoned or diverged").

    Diverged: more than ``NONFINITE_DIVERGED_SHARE`` of its weight tensors are broken (NaN/Inf or exploded in at
    least ``BROKEN_TENSOR_SHARE`` of their elements: :func:`broken`), or at least ``DIVERGED_SHARE`` of them are
    broken and exploded (two or more either way); a few bad elements scattered over many tensors are poisoned;
    or the bulk of some weight tensor grew ``GROWTH_DIVERGED`` times since the run's first healthy
    checkpoint (:func:`growth`; finite, but not the same model any more), ``baseline`` being that
    checkpoint's :func:`tensor_scales`. ``log_nonfinite_step`` is the trainer log's first NaN/Inf loss or
    grad_norm at or before this save. Without ``baseline`` (a standalone scan, a repair) both come from
    the run context the report carries (checkpoint/runcontext.py), which measured the growth the same
    way. The log is quoted in the reason; it decides nothing on its own: a checkpoint whose log broke
    while most weights are NaN already meets the share rule. With ``loss_jump`` (runs.loss_jump_at: the log's loss
    jumped before the save and stayed up; from the run context without ``baseline``) a growth of
    ``GROWTH_WITH_LOSS_JUMP`` is enough.
    """
    context = run_context(report) or {}
    if loss_jump is None and baseline is None:
        loss_jump = _context_loss_jump(report)
    if log_nonfinite_step is None:
        value = context.get("log_nonfinite_step")
        log_nonfinite_step = value if isinstance(value, int) else None
    tensors = report.tensors
    roles, holds, findings = tensors.refs.roles, tensors.can_hold_nonfinite, tensors.findings
    bad = [findings[i] for i in tensors.flagged if roles[i] == "weight" and holds[i] and broken(tensors, i)]
    # (counted only when it can matter; weights --only/--exclude left out count too: a selection of the broken layers
    # read DIVERGED, "6 of 8 weight tensors", where the whole checkpoint is poisoned and repairs, a new user's trial)
    weights = _weights(tensors) + excluded_weights(report) if len(bad) > 1 else 0
    where = ""
    if weights and not _spread(bad, weights):
        # (files that are separate saves of one model, a loop's checkpoint.pt beside its best_model.pt: each is judged
        # by its own weights; a helper's diverged checkpoint.pt read POISONED, "26 of 46 tensors", beside a healthy one)
        bad, weights, where = _worst_save(report, bad, weights)
    if weights and len(bad) > 1 and _spread(bad, weights):
        nan = sum(1 for found in bad if NONFINITE in found)
        kinds = "NaN/Inf or exploded" if nan and nan < len(bad) else "NaN/Inf" if nan else "exploded"
        log = f"; the trainer log has NaN/Inf from step {log_nonfinite_step}" if log_nonfinite_step is not None else ""
        return f"{len(bad)} of {weights} weight tensors{where} are {kinds}{log}"
    huge = _huge_bulk_words(report)
    if huge:
        return huge
    grown = growth(report, baseline) if baseline is not None else _diverging_growth(report)
    limit = GROWTH_WITH_LOSS_JUMP if loss_jump is not None else GROWTH_DIVERGED
    return _growth_words(grown, loss_jump) if grown is not None and grown.factor >= limit else ""


def _spread(bad: Sequence[tuple[str, ...]], weights: int) -> bool:
    """The share rule: more than NONFINITE_DIVERGED_SHARE of the weights broken, or DIVERGED_SHARE broken and
    exploded (two or more either way)."""
    exploded = sum(1 for found in bad if EXPLODED in found)
    return len(bad) > 1 and (len(bad) > NONFINITE_DIVERGED_SHARE * weights or exploded >= DIVERGED_SHARE * weights)


def _worst_save(report: ScanReport, bad: list[tuple[str, ...]],
                weights: int) -> tuple[list[tuple[str, ...]], int, str]:
    """(the broken weights' findings, the weight count, `` of FILE``) of the file that meets the share rule by the
    largest share where the checkpoint's files are separate saves of one model (two files whose weight names,
    wrapper prefixes stripped, mostly agree); else the whole checkpoint's (``bad``, ``weights``, ""). Not with
    weights left out by --only/--exclude: whose file they lie in is not known, and they count in the share."""
    tensors = report.tensors
    refs = tensors.refs
    if excluded_weights(report):
        return bad, weights, ""
    holds, findings = tensors.can_hold_nonfinite, tensors.findings
    by_file: dict[str, list[int]] = {}
    for i, (role, can, numel) in enumerate(zip(refs.roles, holds, refs.numels())):
        if role == "weight" and can and numel:  # (as _weights counts them)
            by_file.setdefault(refs.files[i], []).append(i)
    if len(by_file) < 2 or len(by_file) > _MAX_SAVES:
        return bad, weights, ""
    names = {file: {normalise(refs.names[i]) for i in rows} for file, rows in by_file.items()}
    flagged = set(tensors.flagged)
    worst: tuple[float, list[tuple[str, ...]], int, str] | None = None
    for file, rows in by_file.items():
        if not any(len(names[file] & names[other]) * 2 > min(len(names[file]), len(names[other]))
                   for other in by_file if other != file):
            continue  # (a shard of a sharded model: its names are its own)
        broken_here = [findings[i] for i in rows if i in flagged and broken(tensors, i)]
        share = len(broken_here) / len(rows)
        if _spread(broken_here, len(rows)) and (worst is None or share > worst[0]):
            worst = share, broken_here, len(rows), _named_from(report.target, file)
    return (bad, weights, "") if worst is None else (worst[1], worst[2], f" of {worst[3]}")


def _named_from(target: str, file: str) -> str:
    """``file`` as named from the scanned folder (Megatron's ``mp_rank_01/model_optim_rng.pt``), else its name."""
    relative = os.path.relpath(file, target) if os.path.isdir(target) else os.path.basename(file)
    return os.path.basename(file) if relative.startswith("..") else relative


_MAX_SAVES = 64  # files of one checkpoint compared as separate saves (beyond: a sharded model's many shards)


def _huge_bulk_words(report: ScanReport) -> str:
    """Why a checkpoint most of whose weight tensors have a bulk of at least HUGE_BULK is diverged, or "" (fp8
    weights are stored scaled to fill their format, by design: not counted)."""
    tensors = report.tensors
    refs = tensors.refs
    # (a tensor too small for a bulk, a bias or a norm's few channels, by its largest value: under 16 elements there
    # is no bulk to stand out from; a large tensor without one never reached the census's high level)
    high = [i for i, (bulk, top) in enumerate(zip(tensors.bulk_scale, tensors.max_abs))
            if (bulk if bulk is not None else top or 0) >= HUGE_BULK]  # (few, if any)
    rows = [i for i in high if refs.roles[i] == "weight" and not refs.dtypes[i].startswith("F8")]
    if len(rows) < HUGE_BULK_FEWEST:
        return ""
    weights = _weights(tensors) + excluded_weights(report)
    if len(rows) < HUGE_BULK_SHARE * weights:
        return ""
    return (f"{len(rows)} of {weights} weight tensors hold their values at {HUGE_BULK:g} or more (largest "
            f"{max(tensors.max_abs[i] or 0 for i in rows):.3g}): weights far beyond what training makes, blown up "
            "since the run's first steps")


def _growth_words(grown: Growth, jump: Mapping[str, Any] | None) -> str:
    """Why a checkpoint is diverged by growth: the growth, and the log's loss jump where that growth alone would not be
    (below ``GROWTH_DIVERGED``): the one sentence of the reason, the verdict line and a repair's refusal."""
    return grown.reason() + (f", and {_jump_words(jump)}" if jump is not None and grown.factor < GROWTH_DIVERGED else "")


def growth_limit(report: ScanReport) -> float:
    """The growth that makes ``report``'s checkpoint diverged: ``GROWTH_DIVERGED``, or ``GROWTH_WITH_LOSS_JUMP`` where
    its run context carries the trainer log's loss jump (a repair's refusal measures what it leaves by the same)."""
    return GROWTH_WITH_LOSS_JUMP if _context_loss_jump(report) is not None else GROWTH_DIVERGED


def _context_loss_jump(report: ScanReport) -> dict[str, Any] | None:
    """The trainer log's loss jump the report's run context carries, where its checkpoint was saved after it
    (checkpoint/runcontext.py, a run scan's diverged row); None otherwise."""
    context = run_context(report) or {}
    value = context.get("loss_jump")
    return value if isinstance(value, dict) and isinstance(context.get(LOSS_BROKE_FROM), int) else None


def _jump_words(jump: Mapping[str, Any]) -> str:
    """The trainer log's loss jump (runs.loss_jump_at), in words."""
    loss, early = jump.get("loss"), jump.get("early_loss")
    if not isinstance(loss, (int, float)) or not isinstance(early, (int, float)) or early <= 0:
        return "the trainer log's loss jumped before it was saved"
    if jump.get("untrained") is True:  # (baseline.untrained_jump: no jump, a loss that stands above an untrained one)
        return f"the trainer log's {untrained_words(jump, ' is')}"
    return (f"the trainer log's loss jumped to {loss:.4g} at step {jump.get('step')}, {loss / early:.3g}x its early "
            f"{early:.4g}, before it was saved")


def untrained_words(jump: Mapping[str, Any], verb: str = "") -> str:
    """A loss that stands above an untrained model's (baseline.untrained_jump: ``loss``, ``step``, ``early_loss`` the
    untrained loss, ``why``), in words: ``loss 19.67 at step 20, 4.05x what an untrained model scores (4.85): it never
    trained``."""
    loss, untrained = float(jump["loss"]), float(jump["early_loss"])
    tail = ("after it had come below it: the run broke" if jump.get("why") == "risen" else "it never trained")
    return (f"loss{verb} {loss:.4g} at step {jump.get('step')}, {loss / untrained:.3g}x what an untrained model scores "
            f"({untrained:.3g}): {tail}")


def is_training_checkpoint(report: ScanReport) -> bool:
    """Whether ``report``'s checkpoint is one a training run saves (it was judged within its run, or it holds
    optimizer or trainer state beside the weights) rather than weights made for use: a GGUF or a weights-only
    export, which nobody resumes training from."""
    return run_context(report) is not None or not {"optimizer", "trainer"}.isdisjoint(report.tensors.refs.roles)


def optimizer_only(report: ScanReport, failing: Iterable[str]) -> list[str]:
    """The names of ``report``'s tensors with a ``failing`` finding when every one of them is optimizer state
    (the weights are healthy: the model loads and generates, only resuming training restores the damage); []
    otherwise."""
    rows, refs = failing_rows(report, failing), report.tensors.refs
    if not rows or any(refs.roles[i] != "optimizer" for i in rows):
        return []
    return [refs.names[i] for i in rows]


# (said wherever optimizer state alone fails and overflowed_moments holds: the scan's next steps, the run's warning
# line, assert_finite's error; a real run's finite weights scored an eval loss of 8,960 where untrained is 4.9)
OVERFLOWED_MOMENT = ("a second moment that overflowed to +Inf took a gradient whose square is beyond its dtype's range "
                     "(~1e19 in fp32): the weights read finite, and may still be broken")


def overflowed_moments(report: ScanReport, failing: Iterable[str]) -> bool:
    """Whether a failing optimizer state of ``report`` is a second moment (Adam's ``exp_avg_sq``) holding +Inf: a
    gradient square beyond its dtype's range (~1e19 in fp32 and bf16, ~256 in fp16), which a run takes when it blew up."""
    tensors = report.tensors
    refs = tensors.refs
    return any(tensors.posinf[i] and is_variance(refs.names[i], refs.roles[i]) for i in failing_rows(report, failing))


# What the non-finite pickled floats are, in words (readers/torch/names.py: RATE_KEYS, SCHEDULER_RATE_KEYS)
RATE_FLOATS = ("learning-rate or loss-scale settings (Python floats of the optimizer's param_groups, its scheduler or its "
               "gradient scaler, not tensors)")


def failing_rows(report: ScanReport, failing: Iterable[str]) -> list[int]:
    """The rows of ``report``'s tensors with one of the ``failing`` findings, in order."""
    tensors, wanted = report.tensors, set(failing)
    return [i for i in tensors.flagged if not wanted.isdisjoint(tensors.findings[i])]


def only_pickled_floats(report: ScanReport, failing: Iterable[str]) -> bool:
    """Whether every tensor of ``report`` with a ``failing`` finding is a pickled Python float (an optimizer's
    NaN learning rate or betas, readers/torch/quantized.py): a repair restores tensors, not those."""
    rows = failing_rows(report, failing)
    return bool(rows) and all(is_pickled_float(report.tensors.refs[i]) for i in rows)


# How each trainer names gradient clipping, for the advice to resume with it: by what the checkpoint's files say
# wrote it (a real run's accelerate and DCP saves were told of the Trainer's and Lightning's settings)
CLIPPING = "gradient clipping (max_grad_norm in the transformers Trainer, gradient_clip_val in Lightning)"
_CLIPPING_BY_FILE = (
    (re.compile(r"^(?:rng_state(?:_\d+)?\.pth|scheduler\.pt)$"),
     "gradient clipping (a lower max_grad_norm: the Trainer's is 1.0 by default)"),
    (re.compile(r"\.ckpt$"), "gradient clipping (Trainer(gradient_clip_val=1.0) in Lightning)"),
    (re.compile(r"^(?:random_states_\d+\.pkl|optimizer(?:_\d+)?\.bin)$"),
     "gradient clipping (accelerator.clip_grad_norm_(model.parameters(), 1.0) before each optimizer step)"),
    (re.compile(r"^\.metadata$|\.distcp$"),
     "gradient clipping (torch.nn.utils.clip_grad_norm_, or an FSDP model's own clip_grad_norm_, before each "
     "optimizer step)"),
)


def clipping(report: ScanReport) -> str:
    """Gradient clipping as the trainer that wrote ``report``'s checkpoint names it (:data:`CLIPPING` where its files
    do not say which); for a Trainer checkpoint, by the clipping its run used (training_args.bin)."""
    names = {os.path.basename(f) for f in report.files}
    words = next((words for pattern, words in _CLIPPING_BY_FILE if any(pattern.search(n) for n in names)), CLIPPING)
    if words == _CLIPPING_BY_FILE[0][1]:
        from nandoctor.checkpoint.trainerargs import max_grad_norm

        used = max_grad_norm(Path(report.target) if Path(report.target).is_dir() else Path(report.target).parent)
        if used is not None and not 0 < used <= _CLIPS:
            return (f"gradient clipping (max_grad_norm=1.0, the Trainer's default: this run's training_args.bin sets "
                    f"{used:g}, which clips nothing)")
        if used is not None:
            return f"gradient clipping (a max_grad_norm below this run's {used:g})"
    return words


_CLIPS = 100.0  # a max_grad_norm above this clips no real gradient: clipping was turned off


NAN_CAUSE = ("after finding what made the NaN (a batch whose loss is NaN or Inf, fp16 overflow: bf16 or a lower "
             "initial loss scale); gradient clipping does not stop a NaN gradient, it spreads it to every weight")


def what_to_change(report: ScanReport) -> str:
    """What to change before training on: where the weights are NaN with nothing exploded, the NaN's cause (clipping
    cannot help: a trial's run had max_grad_norm 1.0, and the advice was to clip); where they grew or exploded, a
    lower learning rate or clipping."""
    found = present(report)
    if NONFINITE in found and EXPLODED not in found and _diverging_growth(report) is None:
        return NAN_CAUSE
    return f"with a lower learning rate or {clipping(report)}"


def diverged_advice(report: ScanReport, where: str = "") -> str:
    """What to do about a diverged checkpoint instead of a repair, worded for what the file is: resume its
    training run (``where``: how to find the last healthy checkpoint), or make a file for use again from a
    healthy source."""
    if is_training_checkpoint(report):
        context = run_context(report)
        change = what_to_change(report)
        if context is not None and context.get("healthy_before") is False:
            # (its run holds no healthy checkpoint before it, rotation having deleted any there was: nothing to resume from)
            return f"no healthy checkpoint before it in its run: restart from the base model {change}"
        return f"resume training from the last healthy checkpoint{where} {change}"
    return ("these weights are broken throughout: make the file again from a healthy source (download it again, "
            "or convert/quantize again from a healthy checkpoint)")


def _diverging_growth(report: ScanReport) -> Growth | None:
    """The growth the report's run context measured (checkpoint/runcontext.py, or a run scan's diverged
    row), when it makes the checkpoint diverged (:func:`growth_limit`: lower with the log's loss jump)."""
    grown = Growth.from_json((run_context(report) or {}).get("growth"))
    return grown if grown is not None and grown.factor >= growth_limit(report) else None


def broken(tensors: TensorResults, row: int) -> bool:
    """Whether tensor ``row`` is broken throughout, as divergence leaves a tensor: at least
    ``BROKEN_TENSOR_SHARE`` of its elements NaN/Inf or exploded (a tensor under a thousand elements: one;
    a block-quantized one: of its scale fields, which its counts are of)."""
    refs = tensors.refs
    numel = math.prod(refs.shapes[row]) if refs.blocks[row] is None else refs[row].counted
    bad = tensors.nan[row] + tensors.posinf[row] + tensors.neginf[row] + tensors.exploded[row]
    return numel > 0 and bad > 0 and bad >= BROKEN_TENSOR_SHARE * numel


def _weights(tensors: TensorResults) -> int:
    """Weight tensors that hold floats (NaN/Inf can be in them) and at least one element."""
    refs = tensors.refs
    return sum(1 for role, can, numel in zip(refs.roles, tensors.can_hold_nonfinite, refs.numels())
               if can and numel and role == "weight")


# ---------------------------------------------------------------------------------------------
# Growth: what the bulk of the weights did since an earlier checkpoint

# The bulk of a weight tensor this many times what it was in the run's first healthy checkpoint:
# diverged. Every weight x1000 (finite, under the ceiling) must be caught, and a bulk scale is a power
# of two (x1000 can read as x512), so 2^8 leaves that a factor of two.
GROWTH_DIVERGED = 2.0**8
# A tensor's earlier scale counts as at least 2^-4: one that started near zero (a bias, LoRA's lora_B)
# grows by any factor in healthy training, but its bulk does not climb to 2^-4 x GROWTH_DIVERGED = 16.
# So nothing whose weights' bulk stays below 16 can be diverged by growth: such a checkpoint, with no
# finding either, is never judged against its run (no extra scan: checkpoint/runcontext.py).
GROWTH_FLOOR = 2.0**-4
# With the trainer log's loss jumped before the save and still up (runs.loss_jump_at), a bulk this many times the
# first healthy checkpoint's is diverged: the weights moved, and the loss says they moved away (a trial: one update at
# 3e4 times the loss grew a bulk x197 and left a loss 240x its early one, an eval loss of 1,223 against 4.0, and the
# run passed CLEAN; healthy fine-tunes stay far below x32, and a healthy run's loss does not jump and stay up).
GROWTH_WITH_LOSS_JUMP = 2.0**5


def tensor_scale(t: TensorResult) -> float | None:
    """What the bulk of one tensor's values reach, which no handful of elements can move: its bulk
    scale (a power of two at or below its k-th largest magnitude, k = max(9, n/1000): kernels/census.py)
    where the census measured one, i.e. where some value reaches 2.0; below 2.0 its largest magnitude.
    None when it has neither (under 16 values, one reaching 2.0; no census)."""
    return scale_of(t.bulk_scale, t.max_abs)


def scale_of(bulk_scale: float | None, max_abs: float | None) -> float | None:
    """:func:`tensor_scale` from a census's bulk scale and largest magnitude (a scanned tensor's, a donor's). Below the
    census's high level (2) the largest magnitude, whether or not a bulk was measured: a small tensor read whole has
    one and a larger one does not, and the same weights saved as .bin and as safetensors showed a growth of x1.63
    between them (a helper's trial)."""
    if max_abs is not None and max_abs < 2.0:
        return max_abs
    return bulk_scale


def tensor_scales(report: ScanReport) -> dict[str, float]:
    """:func:`tensor_scale` of every weight tensor that has one and holds no NaN/Inf (NaN is judged by
    the share rule, not by growth), by name: what :func:`growth` compares a later checkpoint with."""
    names = report.tensors.refs.names
    return {names[i]: scale for i, scale in _weight_scales(report.tensors)}


def _weight_scales(tensors: TensorResults) -> list[tuple[int, float]]:
    """(row, :func:`tensor_scale`) of the weight tensors that have one and hold no NaN/Inf, from the columns."""
    roles, findings = tensors.refs.roles, tensors.findings
    left_out = {i for i in tensors.flagged if NONFINITE in findings[i]}
    if roles.count("weight") != len(roles):
        left_out.update(i for i, role in enumerate(roles) if role != "weight")
    scales = map(scale_of, tensors.bulk_scale, tensors.max_abs)
    return [(i, scale) for i, scale in enumerate(scales) if scale is not None and i not in left_out]


def may_have_grown(report: ScanReport, loss_jumped: bool = False) -> bool:
    """Whether some weight tensor's bulk is large enough (``GROWTH_DIVERGED`` x ``GROWTH_FLOOR``; with the trainer
    log's loss jumped, ``GROWTH_WITH_LOSS_JUMP`` x) for :func:`growth` to call the checkpoint diverged, whatever its
    run's first healthy checkpoint holds."""
    top = weight_scale(report)
    return top is not None and top >= (GROWTH_WITH_LOSS_JUMP if loss_jumped else GROWTH_DIVERGED) * GROWTH_FLOOR


def weight_scale(report: ScanReport) -> float | None:
    """The largest :func:`tensor_scale` of the weights: where the bulk of the model stands (a bit flip
    leaves it where it was). None without float weights."""
    return max((scale for _, scale in _weight_scales(report.tensors)), default=None)


@dataclass(frozen=True)
class Growth:
    """How far the bulk of the weights moved since an earlier checkpoint: the tensor that grew the most,
    its scale now and what it is compared with (its scale then, at least the floor)."""

    factor: float
    tensor: str
    scale: float
    was: float
    from_start: bool = False  # measured against the weights the run started from (InitialScales), not a checkpoint

    def words(self) -> str:
        return f"the bulk of {self.tensor} grew {self.factor:.3g}x ({self.was:.3g} to {self.scale:.3g})"

    def reason(self) -> str:
        """:meth:`words` and what the growth is measured against."""
        return f"{self.words()} since {'the weights the run started from' if self.from_start else SINCE_FIRST_HEALTHY}"

    def to_json(self) -> dict[str, Any]:
        data = {"factor": self.factor, "tensor": self.tensor, "scale": self.scale, "was": self.was}
        return {**data, "from_start": True} if self.from_start else data

    @classmethod
    def from_json(cls, value: object) -> Growth | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(float(value["factor"]), str(value["tensor"]), float(value["scale"]), float(value["was"]),
                       value.get("from_start") is True)
        except (KeyError, TypeError, ValueError):
            return None


SINCE_FIRST_HEALTHY = "the run's first healthy checkpoint"


class InitialScales(dict[str, float]):
    """:func:`tensor_scales` of the weights a training run started from (the Trainer callback keeps them at step 0:
    checkpoint/baseline.py), not of a saved checkpoint: growth against them says so."""


def growth(report: ScanReport, before: Mapping[str, float]) -> Growth | None:
    """How much the bulk of ``report``'s weights grew since an earlier checkpoint whose
    :func:`tensor_scales` are ``before``: the largest, over the weight tensors present in both, of the
    tensor's scale now over its scale then, the latter taken as at least ``GROWTH_FLOOR``. Per tensor,
    because a run can diverge in a few tensors only (a head-only fine-tune: tests/realruns.py); robust,
    because each tensor's scale is its bulk. None when no tensor can be compared."""
    best: Growth | None = None
    now = tensor_scales(report)
    key: Callable[[str], str] = str
    if not any(name in before for name in now):  # (wrapped otherwise: a loop's {"model": sd} step files, its bare
        # final state_dict; DDP's module.: a trial's diverged final model read healthy, no name in common)
        before, key = _by_stripped(before), normalise
    for name, scale in now.items():
        was = before.get(key(name))
        if was is None:
            continue
        grown = tensor_growth(name, scale, was)
        if best is None or grown.factor > best.factor:
            best = grown
    return dataclasses.replace(best, from_start=True) if best is not None and isinstance(before, InitialScales) else best


def _by_stripped(scales: Mapping[str, float]) -> Mapping[str, float]:
    """``scales`` by their names with wrapper prefixes stripped (layers.normalise); an InitialScales stays one."""
    stripped = {normalise(name): scale for name, scale in scales.items()}
    return InitialScales(stripped) if isinstance(scales, InitialScales) else stripped


def tensor_growth(name: str, scale: float, was: float) -> Growth:
    """How far tensor ``name`` at ``scale`` grew since ``was``, that taken as at least ``GROWTH_FLOOR``: a tensor
    that started near zero (a bias, LoRA's ``lora_B``) may grow by any factor in healthy training."""
    was = max(was, GROWTH_FLOOR)
    return Growth(scale / was, name, scale, was)


def exit_code(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON) -> int:
    fail_on = gate_set(fail_on)
    if report.judgement is not None and report.judgement.fail_on == fail_on:
        return report.judgement.exit_code
    return judge(report, fail_on).exit_code


def passes(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON) -> bool:
    return exit_code(report, fail_on) == EXIT_OK


# ---------------------------------------------------------------------------------------------
# Facts the one-line verdict and the reports quote


def target_dtype(report: ScanReport) -> str | None:
    value = report.extra.get("target_dtype")
    return value if isinstance(value, str) else None


def excluded_weights(report: ScanReport) -> int:
    """How many model weight tensors ``--only`` / ``--exclude`` left out of the scan (unread: never judged broken)."""
    value = report.extra.get("excluded")
    count = value.get("weights") if isinstance(value, dict) else None
    return count if isinstance(count, int) else 0


def excluded(report: ScanReport) -> int:
    """How many tensors ``--only`` / ``--exclude`` left out of the scan."""
    value = report.extra.get("excluded")
    count = value.get("tensors") if isinstance(value, dict) else None
    return count if isinstance(count, int) else 0


def overflow_tensors(report: ScanReport) -> tuple[TensorResult, ...]:
    return report.tensors.with_finding(OVERFLOW)


def overflow_count(report: ScanReport) -> int:
    return sum(t.overflow for t in overflow_tensors(report))


def max_abs(report: ScanReport, role: str | None = None) -> float | None:
    return report.tensors.largest(role)


def _cast_max(report: ScanReport) -> float | None:
    """The largest magnitude a cast to the serving dtype reaches (CAST_ROLES: not optimizer moments or step counts)."""
    tops = [max_abs(report, role) for role in CAST_ROLES if role != "buffer"]
    if "buffer" in CAST_ROLES and "buffer" in report.tensors.refs.roles:  # a mask's -1e9 is meant as -Inf
        roles, names = report.tensors.refs.roles, report.tensors.refs.names
        tops += [report.tensors[i].max_abs for i, role in enumerate(roles) if role == "buffer" and not holds_sentinels(names[i])]
    return max((top for top in tops if top is not None), default=None)


def with_finding(report: ScanReport, finding: str) -> tuple[TensorResult, ...]:
    return report.tensors.with_finding(finding)


METRIC_PREFIX = "nandoctor/"


def metrics(report: ScanReport) -> dict[str, float]:
    """The health figures a training callback logs per save (TensorBoard, W&B, MLflow, ``log_history``).

    ``nonfinite``: NaN/±Inf values (the totals of the one-line verdict); ``max_abs``: the largest weight
    magnitude (left out when no weight is a float); ``outliers``: outlier values in tensors with that
    finding; ``bad_tensors``: tensors with a finding that fails by default. Plain floats: every logger
    takes them. The Trainer and Lightning callbacks both log this dict, so the two never disagree.
    """
    outliers = sum(t.outliers.count for t in with_finding(report, OUTLIER) if t.outliers is not None)
    figures = {
        "nonfinite": float(report.nonfinite),
        "outliers": float(outliers),
        "bad_tensors": float(len(report.unhealthy_tensors)),
    }
    top = max_abs(report, "weight")
    if top is not None:
        figures["max_abs"] = float(top)
    return {METRIC_PREFIX + name: value for name, value in figures.items()}


def worst_range(report: ScanReport) -> str | None:
    """Label of the worst bad layer range, model weights first (optimizer moments never hide a layer)."""
    ranges = bad_ranges(report.layers)
    if not ranges:
        return None
    weight_groups = {layer_of(t.name).group for t in report.unhealthy_tensors if t.ref.role == "weight"}
    preferred = [r for r in ranges if any(_in_range(g, r.label) for g in weight_groups)] or list(ranges)
    return max(preferred, key=lambda r: (r.nonfinite, r.bad_tensors)).label


def _in_range(group: str, label: str) -> bool:
    if group == label:
        return True
    head, _, span = label.rpartition(".")
    stack, _, index = group.rpartition(".")
    if stack != head or not index.isdigit():
        return False
    first, _, last = span.partition("–")
    return first.isdigit() and int(first) <= int(index) <= int(last or first)


def worst_overflow_layer(report: ScanReport) -> str | None:
    by_layer: dict[str, int] = {}
    for t in overflow_tensors(report):
        group = layer_of(t.name).group
        by_layer[group] = by_layer.get(group, 0) + t.overflow
    return max(by_layer, key=lambda k: by_layer[k]) if by_layer else None


def sentinel_infinities(report: ScanReport) -> tuple[TensorResult, ...]:
    """Buffers that hold ±Inf by design (masks, bounds, observers' extremes: roles.holds_sentinels) and no NaN:
    no finding, but never called finite: :func:`facts` says where they are."""
    roles, posinf, neginf = report.tensors.refs.roles, report.tensors.posinf, report.tensors.neginf
    if "buffer" not in roles:
        return ()
    names, nan = report.tensors.refs.names, report.tensors.nan
    return tuple(report.tensors[i] for i, role in enumerate(roles)
                 if role == "buffer" and (posinf[i] or neginf[i]) and not nan[i] and holds_sentinels(names[i]))


def health_unchecked(report: ScanReport) -> tuple[TensorResult, ...]:
    """Floating weights read and finite that got no health census (a torch view too irregular to measure,
    engine/viewcensus.py; the reader's note names them): never called healthy."""
    tensors = report.tensors
    if None not in tensors.max_abs:
        return ()
    roles, hold = tensors.refs.roles, tensors.can_hold_nonfinite
    # (a tensor a problem names as not exactly counted, an overlapping view too wide to map: never called finite)
    refused = {name for p in report.errors for name in p.tensors}
    return tuple(tensors[i] for i, top in enumerate(tensors.max_abs)
                 if top is None and roles[i] == "weight" and hold[i] and tensors[i].ref.numel and not tensors[i].nonfinite
                 and tensors[i].name not in refused)


def trainer_nonfinite(report: ScanReport) -> tuple[TensorResult, ...]:
    """Tensors of trainer state that hold NaN/Inf: no finding (a Lightning ``kth_value = inf`` sentinel), but
    never called finite: :func:`facts` says where they are (docs/health.md, "Roles")."""
    roles, nan, posinf, neginf = report.tensors.refs.roles, report.tensors.nan, report.tensors.posinf, report.tensors.neginf
    if "trainer" not in roles:
        return ()
    return tuple(report.tensors[i] for i, role in enumerate(roles)
                 if role == "trainer" and (nan[i] or posinf[i] or neginf[i]))


_MAX_NAMED = 3  # trainer-state tensors named in the fact; the rest counted


def held_facts(report: ScanReport) -> list[str]:
    """NaN/Inf the report holds that are no finding (trainer state, mask/bound buffers by design), in words: never
    "all finite", said wherever the facts are (console, --quiet, Markdown, HTML, the run report's deciding line)."""
    in_trainer, sentinels = trainer_nonfinite(report), sentinel_infinities(report)
    return ([_held_fact(in_trainer, "trainer state", [short_key(t.name) for t in in_trainer])] * bool(in_trainer)
            + [_held_fact(sentinels, "mask/bound buffers by design", [t.name for t in sentinels])] * bool(sentinels))


def _held_fact(held: tuple[TensorResult, ...], where: str, names: list[str]) -> str:
    """NaN/Inf counted where they are no finding (trainer state, mask and bound buffers), said with the first names."""
    values = ", ".join(f"{n:,} {word}" for n, word in ((sum(t.nan for t in held), "NaN"), (sum(t.posinf for t in held), "+Inf"),
                                                       (sum(t.neginf for t in held), "-Inf")) if n)
    return f"{values} in {where} ({first_few(names, _MAX_NAMED)}), not a finding"


def short_key(name: str) -> str:
    """A trainer-state name as a line gives it: what a ``{…}`` holds is left out. A Lightning callback's state key
    carries its arguments (``callbacks.ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', …,
    'train_time_interval': None}.kth_value``), a line's worth on its own; ``callbacks.ModelCheckpoint{…}.kth_value``
    still says which callback. JSON keeps the whole name (``summary.trainer_nonfinite``)."""
    if "{" not in name:
        return name
    out: list[str] = []
    depth, held = 0, False  # how deep inside braces; whether the outermost pair holds anything
    for char in name:
        if char == "{":
            held |= depth > 0
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                out.append("{…}" if held else "{}")
                held = False
        elif depth:
            held = True
        else:
            out.append(char)
    return name if depth else "".join(out)  # (a brace left open: nothing to shorten safely)


def one_line(report: ScanReport, fail_on: frozenset[str] | None = DEFAULT_FAIL_ON, *, label: str | None = None) -> str:
    """The ``--quiet`` verdict: status word, the verdict words, the health case when a health finding fails
    the line and the checkpoint is not healthy (``(POISONED)``: repair it; ``(DIVERGED)``: resume from the last healthy
    checkpoint), target, counts and the worst layer range, on one line.

    Names come from files: the caller escapes the line before printing.
    """
    decided = judge(report, fail_on)
    status = "PASS" if decided.exit_code == EXIT_OK else "FAIL"
    return f"{status} {words_with_case(decided)} {label or report.target}: " + "; ".join(facts(report))


def words_with_case(decided: Verdict) -> str:
    """The verdict words, with the health case when a health finding fails the gate and the checkpoint is not
    healthy (``NON-FINITE (POISONED)``): what every headline says (--quiet, the console, Markdown, HTML).
    A line failing on overflow risk alone (an outlier only reported) is not a call to repair; a checkpoint
    diverged by growth alone says DIVERGED once."""
    words, case = decided.words, decided.health
    health_fails = any(f in (NONFINITE, EXPLODED, OUTLIER) for f in decided.failing)
    if decided.exit_code != EXIT_OK and case in ("poisoned", "diverged") and health_fails \
            and not words.startswith(DIVERGED_WORDS):
        words += f" ({case.upper()})"
    return words


def facts(report: ScanReport, *, first_problem: bool = True) -> list[str]:
    """The counts the one-line verdict quotes after its head (the console verdict line quotes them too;
    it lists the problems above itself, so it asks without ``first_problem``)."""
    pieces: list[str] = []
    tensors = len(report.tensors)
    grown = _diverging_growth(report)
    huge = "" if grown is not None or report.unhealthy_tensors else _huge_bulk_words(report)
    if grown is not None:
        pieces.append(_growth_words(grown, _context_loss_jump(report)))
    elif huge:
        pieces.append(huge)  # (diverged with no finding: its reason is the fact, not "N tensors healthy")
    unviewed = [u for u in report.unviewed if u.nan or u.posinf or u.neginf]
    if report.bad_tensors:
        # Tensors by name, as the tables and JSON list them; values once (a tied copy adds none: docs/json.md);
        # the values of bytes no tensor views are their own fact (below)
        tied = len(report.bad_tensors) - len(report.distinct_bad_tensors)
        nan, posinf, neginf = (getattr(report, k) - sum(getattr(u, k) for u in unviewed) for k in ("nan", "posinf", "neginf"))
        pieces.append(
            f"{len(report.bad_tensors)} of {tensors} tensors hold NaN/Inf "
            f"({nan:,} NaN, {posinf:,} +Inf, {neginf:,} -Inf"
            + (f"; {tied} of them {'a tied copy' if tied == 1 else 'tied copies'} of another, counted once)" if tied else ")")
        )
    if unviewed:
        values = ", ".join(f"{n:,} {word}" for word, n in (("NaN", sum(u.nan for u in unviewed)),
                           ("+Inf", sum(u.posinf for u in unviewed)), ("-Inf", sum(u.neginf for u in unviewed))) if n)
        first = unviewed[0]
        more = f" and {plural(len(unviewed) - 1, 'other')}" if len(unviewed) > 1 else ""
        held_by = {u.kind for u in unviewed}
        where = ("numpy arrays pickled in the file" if held_by == {"numpy"} else "torch.save streams pickled in the file"
                 if held_by == {"stream"} else "values pickled in the file" if all(u.pickled for u in unviewed)
                 else "storage bytes no tensor views")
        pieces.append(f"{values} in {where} ({first.label()}{more})")
    exploded = with_finding(report, EXPLODED)
    # (a variance's exploded values are its negative ones; one above MOMENT_CEILING and none negative is a moment)
    variances = [t for t in exploded if is_variance(t.name, t.ref.role) and t.exploded]
    if variances:
        count = sum(t.exploded for t in variances)
        roles = {t.ref.role for t in variances}
        what = ("an optimizer's second moment, never negative: the next step from it puts NaN in the weights"
                if roles == {"optimizer"} else "a running variance, never negative: the BatchNorm's output is NaN"
                if roles == {"buffer"} else "variances, never negative: NaN follows at the next step or forward pass")
        pieces.append(f"{plural(count, 'negative value')} in {first_few([t.name for t in variances], _MAX_NAMED)}, "
                      f"{what}")
        exploded = tuple(t for t in exploded if t.exploded == 0 or not is_variance(t.name, t.ref.role))
    if exploded:
        # (a BatchNorm's running statistics are buffers: said as such, and their magnitude is the one shown)
        buffers = sum(1 for t in exploded if t.ref.role == "buffer")
        moments = sum(1 for t in exploded if t.ref.role == "optimizer")
        weights = len(exploded) - buffers - moments
        kinds = " and ".join([plural(weights, "weight tensor")] * bool(weights)
                             + [plural(buffers, "running statistic")] * bool(buffers)
                             + [plural(moments, "optimizer moment")] * bool(moments))
        top = max((t.max_abs for t in exploded if t.max_abs is not None), default=None)
        pieces.append(f"{kinds} exploded" + (f" (max |x| {top:.3g})" if top is not None else "")
                      + _outgrown_fact(report))
    outliers = with_finding(report, OUTLIER)
    if outliers:
        count = sum(t.outliers.count for t in outliers if t.outliers is not None)
        pieces.append(f"{plural(count, 'outlier value')} in {plural(len(outliers), 'tensor')}")
    zeroed = with_finding(report, ZEROED)
    if zeroed:
        since = _zeroed_since(report)
        more = f" and {len(zeroed) - 1} more" if len(zeroed) > 1 else ""
        was = f", not all zero in {since['checkpoint']}" if zeroed[0].name in since.get("names", ()) else ""
        sliced = {d.get("name"): d for d in _weight_norm_zero(report)}
        if zeroed[0].name in sliced:
            d = sliced[zeroed[0].name]
            count, shown = d.get("count", 0), [str(s) for s in d.get("slices", ())][:3]
            rest = f" and {count - len(shown)} more" if count > len(shown) else ""
            what = ("is all zero" if d.get("dim") is None or count == d.get("of") else
                    f"has {plural(count, 'slice')} of zeros along dim {d.get('dim')} (of {d.get('of')}: "
                    f"{', '.join(shown)}{rest})")
            pieces.append(f"the weight-norm direction {zeroed[0].name}{more} {what}: g·v/‖v‖ divides 0 by 0 there, "
                          "NaN in every forward pass")
        else:
            pieces.append(f"{plural(len(zeroed), 'tensor')} all zero ({zeroed[0].name}{more}{was})")
    if report.nonfinite or exploded or variances or outliers:
        worst = worst_range(report)
        if worst:
            pieces.append(f"worst {worst}")
    in_trainer, sentinels = trainer_nonfinite(report), sentinel_infinities(report)
    unchecked = health_unchecked(report)
    if not (report.nonfinite or exploded or variances or outliers or zeroed or grown or huge):
        # (a tensor whose values overflow the dtype it loads in is not healthy there: "27 of 28 tensors healthy")
        cast = len(overflow_tensors(report))
        healthy = f"{tensors - cast:,} of {plural(tensors, 'tensor')} healthy" if cast else f"{plural(tensors, 'tensor')} healthy"
        pieces.append(f"{plural(tensors, 'tensor')} read" if report.errors else f"no finding in {plural(tensors, 'tensor')}"
                      if in_trainer or sentinels or unchecked else healthy)
    shard = report.extra.get("shard_of")
    if isinstance(shard, dict):  # (layout.ShardOf: the rest of the checkpoint was not read)
        listed = (f"shards {shard['index']} lists ({shard['tensors']:,} tensors in all)" if shard.get("index")
                  else "numbered shards its name counts")
        pieces.append(f"one of the {shard['shards']} {listed}: scan the folder for the whole checkpoint")
    if unchecked:
        pieces.append(f"{plural(len(unchecked), 'tensor')} finite but not checked for health "
                      f"({first_few([t.name for t in unchecked], _MAX_NAMED)}: see the note)")
    pieces += held_facts(report)
    caution = loss_jump_caution(report) if not (report.errors or report.unhealthy_tensors or grown) else None
    if caution is not None:  # (a failing one's next step says what the jump means for its repair: summary.py)
        pieces.append(caution)
    overflow = overflow_count(report)
    if overflow:
        top = _cast_max(report)
        worst_layer = worst_overflow_layer(report)
        pieces.append(
            f"{plural(overflow, 'value')} in {plural(len(overflow_tensors(report)), 'tensor')} overflow {target_dtype(report)}"
            + (f" (max |x| {top:.4g})" if top is not None else "")
            + (f", worst {worst_layer}" if worst_layer else "")
        )
    elif target_dtype(report) and len(report.tensors):  # (nothing read fits nothing)
        top = _cast_max(report)
        pieces.append(f"fits {target_dtype(report)}" + (f" (max |x| {top:.4g})" if top is not None else ""))
    hashes = _hashes_fact(report)
    if hashes:
        pieces.append(hashes)
    base = base_fact(report)
    if base is not None:
        pieces.append(base)
    refused = [note.split(":", 1)[0] for note in report.notes if DEFAULT_LOAD_REFUSES in note]
    if refused:  # (a trial: `scan --quiet && python train.py` passed a file the script's plain torch.load refuses)
        pieces.append(f"{DEFAULT_LOAD_REFUSES} refuses {first_few(refused, _MAX_NAMED)}: load with weights_only=False "
                      "only if you trust the source")
    left_out = excluded(report)
    if left_out:  # a gate that skipped tensors says so on its one line
        pieces.append(f"{plural(left_out, 'tensor')} excluded (--only/--exclude)")
    pieces += problem_facts(report, first_problem=first_problem)
    return pieces


# the words a note of a torch file that torch.load's default refuses begins its reason with (readers/torch/
# weights_only.py writes them, "FILE: <these words> …"); a file a Hugging Face loader reads is a problem instead
# extra key (and --json top level): the base model a scanned PEFT adapter alone is applied to (loadability.adapter_base)
ADAPTER_BASE = "adapter_base"
# extra key (and --json top level): that base model's own scan where it is local (adapterbase.py): what it found,
# judged under each gate by base_verdict
ADAPTER_BASE_SCAN = "adapter_base_scan"
BASE_DIVERGED = "diverged"  # (among a base's failing or reported findings: diverged by growth alone, no finding)
_MAX_BASE_CHARS = 200
_MAX_BASE_TENSORS = 3  # the base's unhealthy tensors named on the line


def adapter_base_scan(report: ScanReport) -> dict[str, Any] | None:
    """What the scan of the local base model of the PEFT adapter alone ``report`` is of found (adapterbase.py), or
    None (no adapter, or a base that is not local)."""
    base = report.extra.get(ADAPTER_BASE_SCAN)
    return base if isinstance(base, dict) else None


def base_verdict(report: ScanReport, fail_on: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(failing, reported): the findings of the adapter ``report``'s base model under the gate ``fail_on`` (already a
    gate_set), as :func:`judge` decides a checkpoint's own, so that the adapter fails where ``nandoctor scan <base>``
    with the same options fails; ``diverged`` first where the base is diverged by its growth alone."""
    base = adapter_base_scan(report)
    return ((), ()) if base is None else base_judged(base, fail_on)


def base_judged(base: Mapping[str, Any], fail_on: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`base_verdict` of a base model's scan as ``adapter_base_scan`` holds it (a repair asks before any
    adapter report exists)."""
    fail_on = gate_set(fail_on)
    held = base.get("findings") or ()
    found = [f for f in FAIL_ON_CHOICES if f in held]
    implied = EXPLODED in fail_on and base.get("target_dtype") in _CEILING_UNDER_RANGE
    failing = [f for f in found if f in fail_on or (f == OVERFLOW and implied)]
    reported = [f for f in found if f not in failing]
    if base.get("grown"):
        (failing if EXPLODED in fail_on else reported).insert(0, BASE_DIVERGED)
    return tuple(failing), tuple(reported)


def base_tensor_words(entry: Mapping[str, Any]) -> str:
    """One unhealthy tensor of a base model's scan (adapterbase.py's ``tensors``) in words:
    ``model.layers.1.mlp.down_proj.weight (1 NaN, first at [3, 5])``."""
    counts = [f"{entry.get(key, 0):,} {word}" for key, word in (("nan", "NaN"), ("posinf", "+Inf"), ("neginf", "-Inf"))
              if entry.get(key)]
    first = entry.get("first_bad")
    said = ", ".join(counts) + (f", first at {list(first)}" if counts and isinstance(first, list) else "")
    others = [f for f in entry.get("findings", ()) if f != NONFINITE]
    if others:
        top = entry.get("max_abs")
        said += ("; " if said else "") + ", ".join(others) + (f", max |x| {top:.4g}" if isinstance(top, float) else "")
    return f"{entry.get('name')} ({said})"


def base_fact(report: ScanReport) -> str | None:
    """The adapter ``report``'s base model in a few words, for its one line: what its own scan found (gate-free: the
    verdict words say what fails), or that it is not scanned (a repo id not in the local cache); None for any other
    checkpoint, and where a problem of kind base says it (problem_facts)."""
    named = report.extra.get(ADAPTER_BASE)
    if not isinstance(named, str):
        return None
    shown = named if len(named) <= _MAX_BASE_CHARS else f"{named[:_MAX_BASE_CHARS]}…"  # (a crafted 2 MB name)
    base = adapter_base_scan(report)
    if base is None:  # (a trial: `scan --quiet && serve` passed a clean adapter on a NaN base model)
        return f"an adapter alone: its base model {shown!r} is not scanned here"
    if base.get("problem_words"):
        return None
    return f"its base model {shown!r} scanned too: {base_found_words(base)}"


def base_found_words(base: Mapping[str, Any]) -> str:
    """What a base model's scan found (``adapter_base_scan``, adapterbase.py), in words: ``30 tensors healthy``, ``1
    of 30 tensors with findings (model.layers.0.mlp.down_proj.weight (1 NaN, first at [1, 2]))``."""
    tensors = base.get("tensors") or []
    total = base.get("tensor_count", 0)
    grown = f"; {base['grown']}" if isinstance(base.get("grown"), str) else ""
    if not base.get("findings"):
        return f"{plural(total, 'tensor')} healthy{grown}"
    named = "; ".join(base_tensor_words(t) for t in tensors[:_MAX_BASE_TENSORS])
    more = f"; and {base.get('flagged_tensors', 0) - _MAX_BASE_TENSORS} more" if len(tensors) > _MAX_BASE_TENSORS else ""
    loose = sum(base.get(key, 0) for key in ("nan", "posinf", "neginf"))
    outside = "" if tensors else f", {loose:,} NaN/Inf outside its tensors"
    return (f"{base.get('flagged_tensors', 0):,} of {plural(total, 'tensor')} with findings ({', '.join(base['findings'])}"
            f"{outside})" + (f": {named}{more}" if named else "") + grown)


def problem_facts(report: ScanReport, *, first_problem: bool = True) -> list[str]:
    """Each kind of problem in its own words (a hash mismatch is no "unreadable" part), the first quoted."""
    pieces: list[str] = []
    quote = first_problem
    for kind in problem_kinds(report):
        of_kind = [p for p in report.errors if p.kind == kind]
        said = _PROBLEM_FACTS.get(kind)
        phrase = said(len(of_kind)) if said is not None else f"{len(of_kind)} problem(s) ({kind})"
        if quote and kind in _QUOTE_FIRST:
            phrase += f" (first: {of_kind[0].path}: {of_kind[0].message})"
            quote = False
        pieces.append(phrase)
    return pieces


def _hashes_fact(report: ScanReport) -> str | None:
    """``--verify-hashes``: how many weight files match their recorded sha256 (None when none do: the
    problem that says why — a mismatch, nothing recorded — is the fact then)."""
    hashes = report.extra.get("hashes")
    if not isinstance(hashes, dict) or not hashes.get("verified"):
        return None
    loading = hashes.get("load_files")
    loading = loading if isinstance(loading, dict) else {}
    load_ok, load_failed = len(loading.get("verified") or ()), len(loading.get("failed") or ())
    matched = len(hashes["verified"])
    unrecorded = len(hashes.get("unverified") or ())
    # (a config or tokenizer file that fails is a hash problem too, but no weight file)
    total = matched + unrecorded + sum(1 for p in report.errors if p.kind == HASH_KIND) - load_failed
    if total == matched:
        fact = ("hashes: the weight file matches its recorded sha256" if matched == 1
                else f"hashes: all {matched:,} weight files match their recorded sha256")
    else:
        fact = f"hashes: {matched:,} of {total:,} weight files match their recorded sha256" + (
            f" ({unrecorded:,} not verified: no sha256 recorded)" if unrecorded else "")
    if load_failed:
        return fact + f"; {load_ok:,} of {load_ok + load_failed:,} config/index/tokenizer files match the manifest"
    if load_ok:
        return fact + f", and the {load_ok:,} config/index/tokenizer file(s) the manifest records"
    return fact


# ---------------------------------------------------------------------------------------------
# Checkpoints of a run

def checkpoint_status(
    report: ScanReport | None, incomplete: bool, baseline: Mapping[str, float] | None,
    log_nonfinite_step: int | None = None, loss_jump: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """(status, why) of one checkpoint of a run: ``incomplete``, ``unreadable``, ``diverged``,
    ``poisoned``, ``overflow`` or ``clean``.

    Diverged (:func:`diverged_why`): a large share of its weights NaN/Inf or exploded, or the bulk of a
    weight tensor ``GROWTH_DIVERGED`` times what it was in the run's first healthy checkpoint, whose
    :func:`tensor_scales` are ``baseline`` (None: there is none yet).
    Resume from the last healthy checkpoint then: a repair would only stitch a broken model together.
    """
    if incomplete or report is None:
        return "incomplete", ""
    if weight_errors(report):
        return "unreadable", ""
    why = diverged_why(report, baseline or {}, log_nonfinite_step, loss_jump)
    if why:
        return "diverged", why
    if report.health in ("poisoned", "diverged"):  # diverged by a context the run scan does not use
        return "poisoned", ""
    if overflow_count(report):
        return "overflow", ""
    return "clean", ""
