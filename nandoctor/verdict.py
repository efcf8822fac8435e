"""The one place that decides: findings per tensor, which of them fail the gate, the exit code, the words.

A tensor's counts and census (NaN/±Inf, values above the ceiling, outliers
above its own bulk, all zeros, overflow for a target dtype) become *findings*
according to its role: ``exploded``, ``outlier`` and ``zeroed`` apply to model
weights only; NaN/Inf are findings in every role but ``trainer`` state (a
Lightning ``kth_value = inf`` is a sentinel, not damage). ``fail_on`` picks the
findings that fail (default: nonfinite, exploded, outlier and overflow;
``zeroed`` is reported). Something unreadable always fails (exit 3): a part
that was not read could hold anything. The rich report, JSON, ``--quiet``,
``assert_finite``, the callbacks and repair's verification all read what this
module decided (``ScanReport.judgement``); none of them decides again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from nandoctor.errors import EXIT_NONFINITE, EXIT_OK, EXIT_UNREADABLE
from nandoctor.layers import bad_ranges, layer_of, summarize
from nandoctor.model import Outliers, ScanReport, TensorResult, TensorResults, Verdict

NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW = "nonfinite", "exploded", "outlier", "zeroed", "overflow"
FAIL_ON_CHOICES = (NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW)
DEFAULT_FAIL_ON: frozenset[str] = frozenset({NONFINITE, EXPLODED, OUTLIER, OVERFLOW})
FAILING_BY_DEFAULT = (NONFINITE, EXPLODED, OUTLIER)  # what makes a tensor "unhealthy"
_HEALTH_ROLES = ("weight",)  # exploded / outlier / zeroed: a step counter of 1e5 is not an exploded weight
_CAST_ROLES = ("weight", "buffer")  # what a cast to the serving dtype touches
_WORDS = {
    NONFINITE: "NON-FINITE",
    EXPLODED: "EXPLODED",
    OUTLIER: "OUTLIERS",
    ZEROED: "ZEROED",
}
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
RUN_CONTEXT = "run"  # ScanReport.extra key: the run a checkpoint was judged within (checkpoint/runcontext.py)

# ---------------------------------------------------------------------------------------------
# Options


def parse_fail_on(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"nonfinite,outlier"`` (or an iterable of names) → a set; ValueError names the choices."""
    if value is None:
        return DEFAULT_FAIL_ON
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {p.strip().lower() for p in parts if p.strip()}
    unknown = names - set(FAIL_ON_CHOICES)
    if unknown or not names:
        raise ValueError(f"--fail-on takes a comma-separated list of {', '.join(FAIL_ON_CHOICES)}; got {value!r}")
    return frozenset(names)


def require_target_for_overflow(fail_on: frozenset[str], target_dtype: str | None) -> None:
    """ValueError when the gate checks overflow alone without a target dtype: it would pass anything."""
    if target_dtype is None and fail_on <= {OVERFLOW}:
        raise ValueError(
            "--fail-on overflow checks nothing without --target-dtype; add --target-dtype fp16 "
            "(or bf16, fp8_e4m3, fp8_e5m2), or keep nonfinite in --fail-on"
        )


# ---------------------------------------------------------------------------------------------
# Tensor findings


def tensor_findings(t: TensorResult) -> tuple[str, ...]:
    """The findings of one tensor from its counts, census and role (``zeroed`` needs siblings: see judged)."""
    return _findings(t.ref.role, t.nonfinite, t.exploded, t.outliers, t.overflow)


def _findings(role: str, nonfinite: int, exploded: int, outliers: Outliers | None, overflow: int) -> tuple[str, ...]:
    found = []
    if nonfinite and role != "trainer":
        found.append(NONFINITE)
    if role in _HEALTH_ROLES:
        if exploded:
            found.append(EXPLODED)
        if outliers is not None and outliers.count:
            found.append(OUTLIER)
    if overflow and role in _CAST_ROLES:
        found.append(OVERFLOW)
    return tuple(found)


def _all_findings(tensors: TensorResults) -> list[tuple[str, ...]]:
    """Every tensor's findings, from the columns: only a tensor with some count, outliers or overflow can
    have one (``zeroed`` needs siblings: see _zeroed)."""
    roles = tensors.refs.roles
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
        out[i] = _findings(roles[i], nan[i] + posinf[i] + neginf[i], exploded[i], outliers[i], overflow[i])
    return out


_LAYER_NUMBER = re.compile(r"\.\d+\.")


def _zeroed(tensors: TensorResults) -> set[int]:
    """Indices of all-zero weight tensors whose siblings in the other layers are not all zero.

    Siblings share a name once the layer number is taken out (``model.layers.#.mlp.down_proj.weight``).
    A tensor with no sibling is not judged: some tensors are legitimately zero (a fresh LoRA ``lora_B``).
    """
    if 0.0 not in tensors.max_abs:  # (one C scan: no tensor is all zero, none is zeroed)
        return set()
    refs = tensors.refs
    names, roles, dtypes, numels = refs.names, refs.roles, refs.dtypes, refs.numels()
    nan, posinf, neginf = tensors.nan, tensors.posinf, tensors.neginf
    families: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for i, (top, holds) in enumerate(zip(tensors.max_abs, tensors.can_hold_nonfinite)):
        if top is None or roles[i] != "weight" or not holds or numels[i] == 0:
            continue
        name = names[i]
        family = _LAYER_NUMBER.sub(".#.", name)
        if family == name:
            continue
        families.setdefault((family, dtypes[i]), []).append((i, top == 0.0 and not (nan[i] + posinf[i] + neginf[i])))
    out: set[int] = set()
    for members in families.values():
        if any(not zero for _, zero in members):
            out.update(i for i, zero in members if zero)
    return out


# ---------------------------------------------------------------------------------------------
# The report


def judged(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> ScanReport:
    """``report`` with every tensor's findings, the layer summaries and the verdict filled in."""
    findings = _all_findings(report.tensors)
    for i in _zeroed(report.tensors):
        findings[i] += (ZEROED,)
    tensors = report.tensors.with_findings(findings)
    out = dataclasses.replace(report, tensors=tensors, layers=summarize(tensors), judgement=None)
    return dataclasses.replace(out, judgement=judge(out, fail_on))


def present(report: ScanReport) -> tuple[str, ...]:
    """Every finding some tensor of ``report`` has, in a fixed order."""
    findings = report.tensors.findings
    seen = {f for i in report.tensors.flagged for f in findings[i]}
    if any(u.nan or u.posinf or u.neginf for u in report.unviewed):
        seen.add(NONFINITE)
    return tuple(f for f in FAIL_ON_CHOICES if f in seen)


def judge(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> Verdict:
    """The verdict of ``report`` (whose tensors carry their findings) under ``fail_on``."""
    found = present(report)
    failing = tuple(f for f in found if f in fail_on)
    reported = tuple(f for f in found if f not in fail_on)
    if report.errors:
        code = EXIT_UNREADABLE  # fail closed, whatever fail_on says
    elif failing:
        code = EXIT_NONFINITE
    else:
        code = EXIT_OK
    return Verdict(code, _words(report, found), health(report), failing, reported, fail_on)


def _words(report: ScanReport, found: tuple[str, ...]) -> str:
    parts = [_WORDS[f] for f in found if f in _WORDS]
    if OVERFLOW in found:
        parts.append(f"OVERFLOW RISK ({target_dtype(report)})")
    if report.errors:
        parts.append("UNREADABLE")
    return " + ".join(parts) or "CLEAN"


def health(report: ScanReport) -> str:
    """``healthy``, ``poisoned`` (a few bad tensors: repair them), ``diverged`` (most weights broken, or
    grown far past the run's first healthy checkpoint: resume from the last healthy checkpoint) or
    ``unreadable``. A report judged within its run (``extra["run"]``) uses the run's baseline too."""
    if report.errors:
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


def diverged_why(report: ScanReport, healthy_max: float | None = None, log_nonfinite_step: int | None = None) -> str:
    """Why ``report``'s checkpoint is diverged, or ``""``: the one rule the run scan, a standalone scan
    and repair's refusal all ask (docs/health.md, "Poisoned or diverged").

    Diverged: more than ``NONFINITE_DIVERGED_SHARE`` of its weight tensors are NaN/Inf or exploded, or at
    least ``DIVERGED_SHARE`` of them exploded (two or more either way);
    or its largest weight is ``GROWTH_DIVERGED`` times ``healthy_max``, the run's first healthy
    checkpoint's (finite, but not the same model any more). ``healthy_max`` and ``log_nonfinite_step``
    (the trainer log's first NaN/Inf loss or grad_norm, at or before this save) default to the run
    context the report carries. The log is quoted in the reason; it decides nothing on its own: a
    checkpoint whose log broke while most weights are NaN already meets the share rule.
    """
    context = run_context(report) or {}
    if healthy_max is None:
        value = context.get("baseline_max")
        healthy_max = float(value) if isinstance(value, (int, float)) else None
    if log_nonfinite_step is None:
        value = context.get("log_nonfinite_step")
        log_nonfinite_step = value if isinstance(value, int) else None
    tensors = report.tensors
    roles, holds, findings = tensors.refs.roles, tensors.can_hold_nonfinite, tensors.findings
    shapes = tensors.refs.shapes
    bad = [findings[i] for i in tensors.flagged if roles[i] == "weight" and holds[i] and 0 not in shapes[i]
           and (NONFINITE in findings[i] or EXPLODED in findings[i])]
    weights = _weights(tensors) if len(bad) > 1 else 0  # (counted only when it can matter)
    exploded = sum(1 for found in bad if EXPLODED in found)
    spread = len(bad) > NONFINITE_DIVERGED_SHARE * weights or exploded >= DIVERGED_SHARE * weights
    if weights and len(bad) > 1 and spread:
        nan = sum(1 for found in bad if NONFINITE in found)
        kinds = "NaN/Inf or exploded" if nan and nan < len(bad) else "NaN/Inf" if nan else "exploded"
        log = f"; the trainer log has NaN/Inf from step {log_nonfinite_step}" if log_nonfinite_step is not None else ""
        return f"{len(bad)} of {weights} weight tensors are {kinds}{log}"
    top = max_abs(report, "weight")
    if top is not None and healthy_max and top / healthy_max >= GROWTH_DIVERGED:
        return f"its largest weight is {top / healthy_max:.3g}x that of the run's first healthy checkpoint"
    return ""


def _weights(tensors: TensorResults) -> int:
    """Weight tensors that hold floats (NaN/Inf can be in them) and at least one element."""
    refs = tensors.refs
    return sum(1 for role, can, numel in zip(refs.roles, tensors.can_hold_nonfinite, refs.numels())
               if can and numel and role == "weight")


def exit_code(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> int:
    if report.judgement is not None and report.judgement.fail_on == fail_on:
        return report.judgement.exit_code
    return judge(report, fail_on).exit_code


def passes(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> bool:
    return exit_code(report, fail_on) == EXIT_OK


# ---------------------------------------------------------------------------------------------
# Facts the one-line verdict and the reports quote


def target_dtype(report: ScanReport) -> str | None:
    value = report.extra.get("target_dtype")
    return value if isinstance(value, str) else None


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


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 tensor``, ``2 tensors`` (``words`` when the plural is not ``word + "s"``)."""
    return f"{count:,} {word if count == 1 else (words or word + 's')}"


def one_line(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON, *, label: str | None = None) -> str:
    """The ``--quiet`` verdict: status word, target, counts and the worst layer range, on one line.

    Names come from files: the caller escapes the line before printing.
    """
    decided = judge(report, fail_on)
    status = "PASS" if decided.exit_code == EXIT_OK else "FAIL"
    return f"{status} {decided.words} {label or report.target}: " + "; ".join(facts(report))


def facts(report: ScanReport, *, first_problem: bool = True) -> list[str]:
    """The counts the one-line verdict quotes after its head (the console verdict line quotes them too;
    it lists the problems above itself, so it asks without ``first_problem``)."""
    pieces: list[str] = []
    tensors = len(report.tensors)
    if report.nonfinite:
        pieces.append(
            f"{len(report.distinct_bad_tensors)} of {tensors} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf)"
        )
    exploded = with_finding(report, EXPLODED)
    if exploded:
        top = max_abs(report, "weight")
        pieces.append(f"{plural(len(exploded), 'weight tensor')} exploded" + (f" (max |x| {top:.3g})" if top is not None else ""))
    outliers = with_finding(report, OUTLIER)
    if outliers:
        count = sum(t.outliers.count for t in outliers if t.outliers is not None)
        pieces.append(f"{plural(count, 'outlier value')} in {plural(len(outliers), 'tensor')}")
    zeroed = with_finding(report, ZEROED)
    if zeroed:
        pieces.append(f"{plural(len(zeroed), 'tensor')} all zero")
    if report.nonfinite or exploded or outliers:
        worst = worst_range(report)
        if worst:
            pieces.append(f"worst {worst}")
    if not (report.nonfinite or exploded or outliers or zeroed):
        pieces.append(f"{plural(tensors, 'tensor')} healthy" if not report.errors else f"{plural(tensors, 'tensor')} read")
    overflow = overflow_count(report)
    if overflow:
        top = max_abs(report)
        worst_layer = worst_overflow_layer(report)
        pieces.append(
            f"{plural(overflow, 'value')} in {plural(len(overflow_tensors(report)), 'tensor')} overflow {target_dtype(report)}"
            + (f" (max |x| {top:.4g})" if top is not None else "")
            + (f", worst {worst_layer}" if worst_layer else "")
        )
    elif target_dtype(report):
        top = max_abs(report)
        pieces.append(f"fits {target_dtype(report)}" + (f" (max |x| {top:.4g})" if top is not None else ""))
    left_out = excluded(report)
    if left_out:  # a gate that skipped tensors says so on its one line
        pieces.append(f"{left_out:,} tensors excluded (--only/--exclude)")
    if report.errors:
        first = report.errors[0]
        reason = f" (first: {first.path}: {first.message})" if first_problem else ""
        pieces.append(f"{len(report.errors)} part(s) unreadable{reason}")
    return pieces


# ---------------------------------------------------------------------------------------------
# Checkpoints of a run

GROWTH_DIVERGED = 2.0**10  # weights this many times larger than in the run's first healthy checkpoint: diverged


def checkpoint_status(
    report: ScanReport | None, incomplete: bool, healthy_max: float | None, log_nonfinite_step: int | None = None
) -> tuple[str, str]:
    """(status, why) of one checkpoint of a run: ``incomplete``, ``unreadable``, ``diverged``,
    ``poisoned``, ``overflow`` or ``clean``.

    Diverged (:func:`diverged_why`): a large share of its weights NaN/Inf or exploded, or its largest
    weight ``GROWTH_DIVERGED`` times past ``healthy_max``, the run's first healthy checkpoint's.
    Resume from the last healthy checkpoint then: a repair would only stitch a broken model together.
    """
    if incomplete or report is None:
        return "incomplete", ""
    if report.errors:
        return "unreadable", ""
    why = diverged_why(report, healthy_max, log_nonfinite_step)
    if why:
        return "diverged", why
    if report.health in ("poisoned", "diverged"):  # diverged by a context the run scan does not use
        return "poisoned", ""
    if overflow_count(report):
        return "overflow", ""
    return "clean", ""
