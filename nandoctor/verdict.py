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
from nandoctor.model import ScanReport, TensorResult, Verdict

NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW = "nonfinite", "exploded", "outlier", "zeroed", "overflow"
FAIL_ON_CHOICES = (NONFINITE, EXPLODED, OUTLIER, ZEROED, OVERFLOW)
DEFAULT_FAIL_ON: frozenset[str] = frozenset({NONFINITE, EXPLODED, OUTLIER, OVERFLOW})
FAILING_BY_DEFAULT = (NONFINITE, EXPLODED, OUTLIER)  # what makes a tensor "unhealthy"
_HEALTH_ROLES = ("weight",)  # exploded / outlier / zeroed: a step counter of 1e5 is not an exploded weight
_CAST_ROLES = ("weight", "buffer")  # what a cast to the serving dtype touches
FINDING_WORDS = {
    NONFINITE: "NON-FINITE",
    EXPLODED: "EXPLODED",
    OUTLIER: "OUTLIERS",
    ZEROED: "ZEROED",
}
OVERFLOW_WORDS = "OVERFLOW RISK ({dtype})"  # with the --target-dtype
# What stopped a checkpoint being judged (``ScanProblem.kind``, exit 3), in the verdict's words and in the
# one-line facts (count → phrase). Every kind is named for what it is: a hash mismatch is not "unreadable".
UNREADABLE_KIND, HASH_KIND, SELECTION_KIND, UNVERIFIED_KIND = "unreadable", "hash", "selection", "unverified"
PROBLEM_WORDS = {
    UNREADABLE_KIND: "UNREADABLE",
    HASH_KIND: "HASH MISMATCH",
    SELECTION_KIND: "NOTHING SELECTED",
    UNVERIFIED_KIND: "NOTHING VERIFIED",
}
_PROBLEM_FACTS = {
    UNREADABLE_KIND: lambda n: f"{n} part(s) unreadable",
    HASH_KIND: lambda n: f"{plural(n, 'file')} {'fails its' if n == 1 else 'fail their'} sha256 check",
    SELECTION_KIND: lambda n: "--only/--exclude left nothing to scan",
    UNVERIFIED_KIND: lambda n: "--verify-hashes verified nothing: no weight file has a recorded sha256 (record them "
                               "from a good copy with `nandoctor manifest PATH > manifest.json` and scan with --manifest, "
                               "or scan the repo id from the Hugging Face cache)",
}
_QUOTE_FIRST = (UNREADABLE_KIND, HASH_KIND, SELECTION_KIND)  # the unverified fact says all there is
CLEAN_WORDS, ALSO_REPORTED, REPORTED_ONLY = "CLEAN", " (also reported: {})", " (reported only)"
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
            "--fail-on overflow checks nothing without --target-dtype: add --target-dtype fp16 "
            "(or bf16, fp8_e4m3, fp8_e5m2), or gate on other findings (e.g. --fail-on nonfinite,exploded,outlier)"
        )


# ---------------------------------------------------------------------------------------------
# Tensor findings


def tensor_findings(t: TensorResult) -> tuple[str, ...]:
    """The findings of one tensor from its counts, census and role (``zeroed`` needs siblings: see judged)."""
    role = t.ref.role
    found = []
    if t.nonfinite and role != "trainer":
        found.append(NONFINITE)
    if role in _HEALTH_ROLES:
        if t.exploded:
            found.append(EXPLODED)
        if t.outliers is not None and t.outliers.count:
            found.append(OUTLIER)
    if t.overflow and role in _CAST_ROLES:
        found.append(OVERFLOW)
    return tuple(found)


_LAYER_NUMBER = re.compile(r"\.\d+\.")


def _zeroed(tensors: Iterable[TensorResult]) -> set[int]:
    """Indices of all-zero weight tensors whose siblings in the other layers are not all zero.

    Siblings share a name once the layer number is taken out (``model.layers.#.mlp.down_proj.weight``).
    A tensor with no sibling is not judged: some tensors are legitimately zero (a fresh LoRA ``lora_B``).
    """
    families: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for i, t in enumerate(tensors):
        ref = t.ref  # (the cheap tests first: this runs once per tensor)
        if t.max_abs is None or ref.role != "weight" or not t.can_hold_nonfinite or ref.numel == 0:
            continue
        name = ref.name
        family = _LAYER_NUMBER.sub(".#.", name)
        if family == name:
            continue
        families.setdefault((family, ref.dtype), []).append((i, t.max_abs == 0.0 and not t.nonfinite))
    out: set[int] = set()
    for members in families.values():
        if any(not zero for _, zero in members):
            out.update(i for i, zero in members if zero)
    return out


# ---------------------------------------------------------------------------------------------
# The report


def judged(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> ScanReport:
    """``report`` with every tensor's findings, the layer summaries and the verdict filled in."""
    zeroed = _zeroed(report.tensors)
    tensors = []
    for i, t in enumerate(report.tensors):
        findings = tensor_findings(t) + ((ZEROED,) if i in zeroed else ())
        tensors.append(t if findings == t.findings else dataclasses.replace(t, findings=findings))
    out = dataclasses.replace(report, tensors=tuple(tensors), layers=summarize(tensors), judgement=None)
    return dataclasses.replace(out, judgement=judge(out, fail_on))


def present(report: ScanReport) -> tuple[str, ...]:
    """Every finding some tensor of ``report`` has, in a fixed order."""
    seen = {f for t in report.tensors for f in t.findings}
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
    return Verdict(code, _words(report, failing, reported), health(report), failing, reported, fail_on)


def _words(report: ScanReport, failing: tuple[str, ...], reported: tuple[str, ...]) -> str:
    """What fails (the findings in ``fail_on``, then each kind of problem), then what is only reported:
    ``OVERFLOW RISK (fp16) (also reported: OUTLIERS)``, ``ZEROED (reported only)``, ``CLEAN``."""
    def word(finding: str) -> str:
        return OVERFLOW_WORDS.format(dtype=target_dtype(report)) if finding == OVERFLOW else FINDING_WORDS[finding]

    head = [word(f) for f in failing] + [PROBLEM_WORDS.get(kind, kind.upper()) for kind in problem_kinds(report)]
    also = [word(f) for f in reported]
    if not head:
        return " + ".join(also) + REPORTED_ONLY if also else CLEAN_WORDS
    return " + ".join(head) + (ALSO_REPORTED.format(", ".join(also)) if also else "")


def problem_kinds(report: ScanReport) -> tuple[str, ...]:
    """The kinds of ``report``'s problems (``ScanProblem.kind``), each once, in the order of ``PROBLEM_WORDS``."""
    kinds = {p.kind for p in report.errors}
    return tuple(k for k in PROBLEM_WORDS if k in kinds) + tuple(sorted(kinds - set(PROBLEM_WORDS)))


def health(report: ScanReport) -> str:
    """``healthy``, ``poisoned`` (a few bad tensors: repair them), ``diverged`` (most weights broken, or
    grown far past the run's first healthy checkpoint: resume from the last healthy checkpoint) or
    ``unreadable``. A report judged within its run (``extra["run"]``) uses the run's baseline too."""
    if report.errors:
        return "unreadable"
    if diverged_why(report):
        return "diverged"
    if any(t.unhealthy for t in report.tensors) or any(u.nan or u.posinf or u.neginf for u in report.unviewed):
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
    weights = [t for t in report.tensors if t.ref.role == "weight" and t.can_hold_nonfinite and t.ref.numel]
    bad = [t for t in weights if NONFINITE in t.findings or EXPLODED in t.findings]
    exploded = sum(1 for t in bad if EXPLODED in t.findings)
    spread = len(bad) > NONFINITE_DIVERGED_SHARE * len(weights) or exploded >= DIVERGED_SHARE * len(weights)
    if weights and len(bad) > 1 and spread:
        nan = sum(1 for t in bad if NONFINITE in t.findings)
        kinds = "NaN/Inf or exploded" if nan and nan < len(bad) else "NaN/Inf" if nan else "exploded"
        log = f"; the trainer log has NaN/Inf from step {log_nonfinite_step}" if log_nonfinite_step is not None else ""
        return f"{len(bad)} of {len(weights)} weight tensors are {kinds}{log}"
    top = max_abs(report, "weight")
    if top is not None and healthy_max and top / healthy_max >= GROWTH_DIVERGED:
        return f"its largest weight is {top / healthy_max:.3g}x that of the run's first healthy checkpoint"
    return ""


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
    return tuple(t for t in report.tensors if OVERFLOW in t.findings)


def overflow_count(report: ScanReport) -> int:
    return sum(t.overflow for t in overflow_tensors(report))


def max_abs(report: ScanReport, role: str | None = None) -> float | None:
    values = [t.max_abs for t in report.tensors if t.max_abs is not None and (role is None or t.ref.role == role)]
    return max(values) if values else None


def with_finding(report: ScanReport, finding: str) -> tuple[TensorResult, ...]:
    return tuple(t for t in report.tensors if finding in t.findings)


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
    weight_groups = {layer_of(t.name).group for t in report.tensors if t.unhealthy and t.ref.role == "weight"}
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
        # Tensors by name, as the tables and JSON list them; values once (a tied copy adds none: docs/json.md)
        tied = len(report.bad_tensors) - len(report.distinct_bad_tensors)
        pieces.append(
            f"{len(report.bad_tensors)} of {tensors} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf"
            + (f"; {tied} of them {'a tied copy' if tied == 1 else 'tied copies'} of another, counted once)" if tied else ")")
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
    hashes = _hashes_fact(report)
    if hashes:
        pieces.append(hashes)
    left_out = excluded(report)
    if left_out:  # a gate that skipped tensors says so on its one line
        pieces.append(f"{left_out:,} tensors excluded (--only/--exclude)")
    quote = first_problem
    for kind in problem_kinds(report):  # each kind in its own words, the first problem quoted
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
    matched = len(hashes["verified"])
    unrecorded = len(hashes.get("unverified") or ())
    total = matched + unrecorded + sum(1 for p in report.errors if p.kind == HASH_KIND)
    if total == matched:
        return ("hashes: the weight file matches its recorded sha256" if matched == 1
                else f"hashes: all {matched:,} weight files match their recorded sha256")
    return f"hashes: {matched:,} of {total:,} weight files match their recorded sha256" + (
        f" ({unrecorded:,} not verified: no sha256 recorded)" if unrecorded else "")


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
