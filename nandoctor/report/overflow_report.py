"""Overflow risk (``--target-dtype``) → a rich table and a verdict line, printed after the NaN/Inf report."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor import verdict as verdicts
from nandoctor.model import ScanReport
from nandoctor.report.text import safe

MAX_ROWS = 40
_BECOMES = {"inf": "Inf", "nan": "NaN"}  # other targets describe themselves (fp8_e4m3: clamped or NaN)


def overflow_table(report: ScanReport, limit: int | None = MAX_ROWS) -> Table:
    dtype = verdicts.target_dtype(report)
    rows = sorted(verdicts.overflow_tensors(report), key=lambda t: (-t.overflow, t.name))
    table = Table(title=f"Overflow risk when cast to {dtype}", title_justify="left", show_edge=False, header_style="bold")
    for column in ("tensor", "dtype", "shape", "overflow", "overflow %", "max |x|"):
        table.add_column(column, justify="left" if column in ("tensor", "dtype", "shape") else "right")
    shown = rows if limit is None else rows[:limit]
    for t in shown:
        table.add_row(
            Text(safe(t.name)),
            t.ref.dtype,
            "×".join(map(str, t.ref.shape)) or "scalar",
            f"{t.overflow:,}",
            f"{100 * t.overflow / t.ref.numel:.3g}" if t.ref.numel else "0",
            f"{t.max_abs:.6g}" if t.max_abs is not None else "",
        )
    if len(rows) > len(shown):
        table.caption = f"… and {len(rows) - len(shown)} more (--all lists them, --json gives every tensor)"
    return table


def render_overflow(report: ScanReport, console: Console, *, show_all: bool = False) -> None:
    """Nothing without a target dtype; else the table (when anything overflows) and a verdict line."""
    dtype = verdicts.target_dtype(report)
    if dtype is None:
        return
    from nandoctor.kernels.targets import target

    spec = target(dtype)
    count, top = verdicts.overflow_count(report), verdicts.max_abs(report)
    top_text = f"{top:.6g}" if top is not None else "n/a"
    if count:
        console.print()
        console.print(overflow_table(report, None if show_all else MAX_ROWS))
        console.print()
        console.print(
            Text.assemble(
                (f"✗ OVERFLOW RISK ({dtype})", "bold red"),
                f": {count:,} finite values in {len(verdicts.overflow_tensors(report))} tensors become "
                f"{_BECOMES.get(spec.becomes, spec.becomes)} when cast to {dtype} "
                f"(largest finite {dtype}: {spec.max_finite:g}; max |x| here: {top_text})",
            )
        )
        console.print(
            Text(
                f"  next: serve in bf16/fp32, or clamp/rescale {safe(verdicts.worst_overflow_layer(report) or 'those weights')} before casting",
                style="dim",
            )
        )
    else:
        console.print(
            Text.assemble(
                (f"✓ fits {dtype}", "bold green"),
                f": no finite value reaches the cast's overflow limit (max |x| {top_text}, largest finite {dtype}: {spec.max_finite:g})",
            )
        )
