"""DiffReport → a rich console report: the verdict, layer ranges, a table of what differs, problems.

Names come from untrusted files: every one goes through ``safe`` and into
``Text`` objects (never parsed as markup).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor.diffs import result as r
from nandoctor.diffs.result import Change, DiffReport, TensorDiff
from nandoctor.report.rich_report import human_bytes, safe
from nandoctor.verdict import plural

MAX_ROWS = 40

_WORDS = {
    r.EQUAL: "same values", r.CAST: "cast", r.CHANGED: "changed", r.SHAPE: "shape changed",
    r.ONLY_A: "only in A", r.ONLY_B: "only in B", r.TIED: "tied", r.UNREADABLE: "unreadable",
}


def _value(x: float) -> str:
    return f"{x:.6g}"


def _at(coords: tuple[int, ...] | None) -> str:
    return "[" + ", ".join(map(str, coords or ())) + "]"


def _where(c: Change | None) -> str:
    if c is None:
        return ""
    # A is the checkpoint under test, B the reference: say which value is which, never an arrow
    return f"{c.amount:.4g} at {_at(c.coords)} (A: {_value(c.a)}, B: {_value(c.b)})"


def _shape(shape: tuple[int, ...] | None, order: str) -> str:
    """A shape as scan prints it, with GGUF's ``ne`` order (ne0 first) said, so [64, 32] ≠ ne [32, 64] reads right."""
    return ("ne " if order == "F" else "") + str(list(shape or ()))


def detail(t: TensorDiff) -> str:
    """One line on what differs in a tensor."""
    if t.status == r.CHANGED:
        parts = []
        if t.changed_blocks is not None:  # block-quantized: compared block by block, never dequantized
            parts.append(f"{t.changed_blocks:,} of {t.blocks or 0:,} {t.dtype_a} blocks")
        elif t.changed is not None:
            # across a dtype change the count leaves the roundings out: say so, as the largest change below
            parts.append(f"{t.changed:,} of {t.numel:,} elements" + (" beyond rounding" if t.rounding is not None else ""))
        overall = t.max_abs_all
        rounded_more = overall is not None and (t.max_abs is None or overall.amount > t.max_abs.amount)
        if t.max_abs is not None:
            parts.append(f"max |Δ| {'beyond rounding ' if rounded_more else ''}{_where(t.max_abs)}")
        if t.max_rel is not None and t.max_rel.index != (t.max_abs.index if t.max_abs else -1):
            parts.append(f"max rel {'beyond rounding ' if rounded_more else ''}{_where(t.max_rel)}")
        if rounded_more:  # an element rounded by more than the largest change: the largest difference is that one
            parts.append(f"largest |Δ| overall {_where(overall)}, within rounding")
        scales = "scale fields; " if t.changed_blocks is not None else ""  # counted as the scan counts them
        if t.nonfinite_b_only:
            parts.append(f"{t.nonfinite_b_only:,} NaN/Inf only in B ({scales}first at "
                         f"{_at(t.first_nonfinite_b_only_coords)})")
        if t.nonfinite_a_only:
            parts.append(f"{t.nonfinite_a_only:,} NaN/Inf only in A ({scales}first at "
                         f"{_at(t.first_nonfinite_a_only_coords)})")
        if t.dtype_changed:
            parts.append(f"{t.dtype_a} → {t.dtype_b}")
        if t.message:
            parts.append(t.message)
        return "; ".join(parts)
    if t.status == r.CAST:
        return f"{t.dtype_a} → {t.dtype_b}, every value its rounding (largest rounding error {t.rounding or 0:.3g})"
    if t.status == r.SHAPE:
        return f"{_shape(t.shape_a, t.order)} {t.dtype_a} → {_shape(t.shape_b, t.order_b)} {t.dtype_b}"
    if t.status == r.TIED:
        return f"not saved on the other side; tied to {t.tied_to}"
    if t.status in (r.ONLY_A, r.ONLY_B):
        return f"{t.dtype_a or t.dtype_b} " + (_shape(t.shape_a, t.order) if t.shape_a else _shape(t.shape_b, t.order_b))
    if t.status == r.EQUAL:
        if t.dtype_changed:
            return f"{t.dtype_a} → {t.dtype_b}, every value exactly the same (nothing rounded)"
        return "other bytes, the same values (±0, NaN payloads, byte order or layout)"
    return t.message or ""


def verdict_text(report: DiffReport) -> Text:
    n = len(report.tensors)
    if report.verdict == "SAME":
        tied = report.counts.get(r.TIED, 0)
        widened = sum(1 for t in report.tensors if t.status == r.EQUAL and t.dtype_changed)
        extra = "".join(f" ({words})" for words in (
            f"{tied} tied cop{'y' if tied == 1 else 'ies'} saved once" if tied else "",
            f"{plural(widened, 'tensor')} in another dtype" if widened else "") if words)
        return Text.assemble(("✓ SAME", "bold green"), f": all {n} tensors hold the same values{extra}")
    if report.verdict == "INCOMPLETE":
        return Text.assemble(("✗ INCOMPLETE", "bold red"), ": some parts could not be read, so nothing is called the same")
    differ = n - sum(report.counts.get(s, 0) for s in r.SAME)
    label = ("≠ CAST", "bold yellow") if report.verdict == "CAST" else ("✗ DIFFERENT", "bold red")
    return Text.assemble(label, f": {differ} of {n} tensors differ")


def render(report: DiffReport, console: Console, *, show_all: bool = False) -> None:
    console.print(Text(f"A: {safe(report.a)}\nB: {safe(report.b)}"))
    console.print(verdict_text(report))
    counts = ", ".join(f"{c} {_WORDS.get(s, s)}" for s, c in report.counts.items() if c)
    read = f"{human_bytes(report.bytes_read)} read in {report.seconds:.2f} s"
    console.print(Text(f"  {counts}; {read}" if counts else f"  {read}", style="dim"))
    for ranges, what in ((report.changed_ranges, "changed"), (report.cast_ranges, "cast")):
        if ranges:
            console.print(Text(f"  {what}: " + ", ".join(safe(x.label) for x in ranges)))
    # (what could not be read first, where it leaves tensors uncompared: a new user read 195 "not compared" rows before
    # the one line that said why)
    problems_first = report.verdict == "INCOMPLETE"
    if problems_first:
        _problems(report, console)
    rows = [t for t in report.tensors if not t.same or t.status == r.EQUAL]
    if rows and not show_all and all(t.status == r.UNREADABLE for t in rows):
        console.print(Text(f"  {plural(len(rows), 'tensor')} not compared (--all lists them)", style="dim"))
        rows = []
    if rows:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("tensor", overflow="fold")
        table.add_column("status")
        table.add_column("what differs", overflow="fold")
        shown = rows if show_all else rows[:MAX_ROWS]
        for t in shown:
            name = safe(t.name) + (f" (B: {safe(t.name_b)})" if t.name_b else "")
            style = "red" if t.status in (r.CHANGED, r.UNREADABLE, r.ONLY_A, r.ONLY_B, r.SHAPE) else "yellow"
            table.add_row(Text(name), Text(_WORDS.get(t.status, t.status), style=style), Text(safe(detail(t))))
        console.print(table)
        if len(rows) > len(shown):
            console.print(Text(f"  … and {len(rows) - len(shown)} more (--all lists every one)", style="dim"))
    if not problems_first:
        _problems(report, console)
    for note in report.notes:
        console.print(Text(f"  note: {safe(note)}", style="dim"))


def _problems(report: DiffReport, console: Console) -> None:
    for p in report.problems:
        console.print(Text(f"  unreadable: {safe(p.path)}: {safe(p.message)}", style="red"))
        if p.hint:
            console.print(Text(f"    hint: {safe(p.hint)}", style="dim"))
