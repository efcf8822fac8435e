"""The gate: which findings fail a check, its exit code, and the one-line verdict for ``--quiet``.

Non-finite weights and, with a target dtype, overflow risk both fail by default;
``fail_on`` picks which of them do. Something unreadable always fails (exit 3):
a part that was not read could hold anything, so it is never waved through.
"""

from __future__ import annotations

from collections.abc import Iterable

from nandoctor.errors import EXIT_NONFINITE, EXIT_OK, EXIT_UNREADABLE
from nandoctor.layers import bad_ranges, layer_of
from nandoctor.model import ScanReport, TensorResult

NONFINITE = "nonfinite"
OVERFLOW = "overflow"
FAIL_ON_CHOICES = (NONFINITE, OVERFLOW)
DEFAULT_FAIL_ON: frozenset[str] = frozenset(FAIL_ON_CHOICES)


def parse_fail_on(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"nonfinite,overflow"`` (or an iterable of names) → a set; ValueError names the choices."""
    if value is None:
        return DEFAULT_FAIL_ON
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {p.strip().lower() for p in parts if p.strip()}
    unknown = names - set(FAIL_ON_CHOICES)
    if unknown or not names:
        raise ValueError(
            f"--fail-on takes a comma-separated list of {', '.join(FAIL_ON_CHOICES)}; got {value!r}"
        )
    return frozenset(names)


def require_target_for_overflow(fail_on: frozenset[str], target_dtype: str | None) -> None:
    """ValueError when the gate checks overflow alone without a target dtype: it would pass anything."""
    if target_dtype is None and NONFINITE not in fail_on:
        raise ValueError(
            "--fail-on overflow checks nothing without --target-dtype; add --target-dtype fp16 "
            "(or bf16, fp8_e4m3, fp8_e5m2), or keep nonfinite in --fail-on"
        )


def target_dtype(report: ScanReport) -> str | None:
    value = report.extra.get("target_dtype")
    return value if isinstance(value, str) else None


def overflow_tensors(report: ScanReport) -> tuple[TensorResult, ...]:
    return tuple(t for t in report.tensors if t.overflow > 0)


def overflow_count(report: ScanReport) -> int:
    return sum(t.overflow for t in report.tensors)


def max_abs(report: ScanReport) -> float | None:
    values = [t.max_abs for t in report.tensors if t.max_abs is not None]
    return max(values) if values else None


def exit_code(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> int:
    if report.errors:
        return EXIT_UNREADABLE  # fail closed, whatever fail_on says
    if NONFINITE in fail_on and report.nonfinite:
        return EXIT_NONFINITE
    if OVERFLOW in fail_on and overflow_count(report):
        return EXIT_NONFINITE
    return EXIT_OK


def passes(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON) -> bool:
    return exit_code(report, fail_on) == EXIT_OK


def verdict(report: ScanReport) -> str:
    """CLEAN, NON-FINITE, OVERFLOW RISK, UNREADABLE, or a ``+`` of several; facts, not the gate."""
    parts = []
    if report.nonfinite:
        parts.append("NON-FINITE")
    if overflow_count(report):
        parts.append(f"OVERFLOW RISK ({target_dtype(report)})")
    if report.errors:
        parts.append("UNREADABLE")
    return " + ".join(parts) or "CLEAN"


def worst_range(report: ScanReport) -> str | None:
    """Label of the bad layer range with the most non-finite values (``transformer.h.21–23``)."""
    ranges = bad_ranges(report.layers)
    if not ranges:
        return None
    return max(ranges, key=lambda r: r.nonfinite).label


def worst_overflow_layer(report: ScanReport) -> str | None:
    by_layer: dict[str, int] = {}
    for t in overflow_tensors(report):
        group = layer_of(t.name).group
        by_layer[group] = by_layer.get(group, 0) + t.overflow
    return max(by_layer, key=lambda k: by_layer[k]) if by_layer else None


def one_line(report: ScanReport, fail_on: frozenset[str] = DEFAULT_FAIL_ON, *, label: str | None = None) -> str:
    """The ``--quiet`` verdict: status word, target, counts and the worst layer range, on one line.

    Names come from files: the caller escapes the line before printing.
    """
    code = exit_code(report, fail_on)
    status = "PASS" if code == EXIT_OK else "FAIL"
    pieces = [f"{status} {verdict(report)} {label or report.target}:"]
    tensors = len(report.tensors)
    if report.nonfinite:
        pieces.append(
            f"{len(report.bad_tensors)} of {tensors} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf)"
        )
        worst = worst_range(report)
        if worst:
            pieces.append(f"worst {worst}")
    else:
        pieces.append(f"{tensors} tensors finite" if not report.errors else f"{tensors} tensors read")
    overflow = overflow_count(report)
    if overflow:
        top = max_abs(report)
        pieces.append(
            f"{overflow:,} values in {len(overflow_tensors(report))} tensors overflow {target_dtype(report)}"
            + (f" (max |x| {top:.4g})" if top is not None else "")
            + (f", worst {worst_overflow_layer(report)}" if worst_overflow_layer(report) else "")
        )
    elif target_dtype(report):
        top = max_abs(report)
        pieces.append(f"fits {target_dtype(report)}" + (f" (max |x| {top:.4g})" if top is not None else ""))
    if report.errors:
        pieces.append(f"{len(report.errors)} part(s) unreadable")
    head, *rest = pieces
    return head + " " + "; ".join(rest)
