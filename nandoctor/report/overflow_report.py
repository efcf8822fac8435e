"""Overflow risk (``--target-dtype``) → a rich table, printed in the console report above its one verdict line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor import verdict as verdicts
from nandoctor.model import ScanReport
from nandoctor.report.columns import add_column
from nandoctor.report.text import safe

MAX_ROWS = 40
_BECOMES = {"inf": "Inf", "nan": "NaN"}  # other targets describe themselves (fp8_e4m3: clamped or NaN)


def overflow_table(report: ScanReport, limit: int | None = MAX_ROWS, width: int = 160) -> Table:
    dtype = verdicts.target_dtype(report)
    rows = sorted(verdicts.overflow_tensors(report), key=lambda t: (-t.overflow, t.name))
    table = Table(title=f"Overflow risk when cast to {dtype}", title_justify="left", show_edge=False, header_style="bold")
    shown = rows if limit is None else rows[:limit]
    # (narrow: the name and the numbers, which then still fit; dtype and shape are in the tensor table above)
    columns = ("tensor", "overflow", "overflow %", "max |x|") if width < 80 else \
        ("tensor", "dtype", "shape", "overflow", "overflow %", "max |x|")
    cells: list[dict[str, Text | str]] = [{
        "tensor": Text(safe(t.name)), "dtype": t.ref.dtype, "shape": "×".join(map(str, t.ref.shape)) or "scalar",
        "overflow": f"{t.overflow:,}", "overflow %": f"{100 * t.overflow / t.ref.numel:.3g}" if t.ref.numel else "0",
        "max |x|": f"{t.max_abs:.6g}" if t.max_abs is not None else ""} for t in shown]
    for column in columns:
        add_column(table, column, name=column == "tensor", numeric=column not in ("tensor", "dtype", "shape"),
                   widest=max((len(row[column]) for row in cells), default=0))
    for row in cells:
        table.add_row(*(row[column] for column in columns))
    if len(rows) > len(shown):
        table.caption = f"… and {len(rows) - len(shown)} more (--all lists them, --json gives every tensor)"
    return table


def render_overflow(report: ScanReport, console: Console, *, show_all: bool = False) -> None:
    """With a target dtype and values that overflow it: the table and what the cast does to them. The
    verdict and the next step are the report's own (rich_report.render prints this above them)."""
    dtype = verdicts.target_dtype(report)
    count = verdicts.overflow_count(report)
    if dtype is None or not count:
        return
    from nandoctor.kernels.targets import target

    spec = target(dtype)
    top = verdicts.max_abs(report)
    tensors = len(verdicts.overflow_tensors(report))
    console.print()
    console.print(overflow_table(report, None if show_all else MAX_ROWS, console.width))
    console.print(Text(
        f"  {verdicts.plural(count, 'finite value')} in {verdicts.plural(tensors, 'tensor')} "
        f"{'becomes' if count == 1 else 'become'} {_BECOMES.get(spec.becomes, spec.becomes)} when cast to {dtype} (largest finite {dtype}: "
        f"{spec.max_finite:g}" + (f"; max |x| here: {top:.6g})" if top is not None else ")"),
        style="dim",
    ))
