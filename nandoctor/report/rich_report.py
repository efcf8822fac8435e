"""ScanReport → a rich console report: verdict, bad layer ranges, bad tensors, heatmap, errors.

Names come from untrusted files, so every one goes through :func:`safe` (control
characters escaped) and into ``Text`` objects (never parsed as rich markup).
"""

from __future__ import annotations

import bisect
import os
import unicodedata

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor.layers import COMPONENTS, bad_ranges, component_of, layer_of
from nandoctor.model import LayerSummary, ScanReport

MAX_TENSOR_ROWS = 40
HEATMAP_MIN_LAYERS = 8


def safe(text: str) -> str:
    """Escape control and format characters (terminal escapes, bidi overrides) from a file's names."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def verdict_text(report: ScanReport) -> Text:
    ranges = bad_ranges(report.layers)
    if report.ok:
        return Text.assemble(("✓ CLEAN", "bold green"), f": all {len(report.tensors)} tensors are finite")
    parts: list[Text | str | tuple[str, str]] = []
    if report.nonfinite:
        where = ", ".join(safe(r.label) for r in ranges[:4]) + (" …" if len(ranges) > 4 else "")
        parts += [
            ("✗ NON-FINITE", "bold red"),
            f": {len(report.bad_tensors)} of {len(report.tensors)} tensors hold NaN/Inf "
            f"({report.nan:,} NaN, {report.posinf:,} +Inf, {report.neginf:,} -Inf)",
        ]
        if where:
            parts.append(f" in {where}")
    if report.errors:
        if parts:
            parts.append("; ")
        parts += [
            ("✗ UNREADABLE", "bold red"),
            f": {len(report.errors)} problem(s), so this checkpoint cannot be called clean",
        ]
    return Text.assemble(*parts)


def _add_column(table: Table, header: str, *, numeric: bool, name: bool) -> None:
    """Names are what the report is for: on a narrow terminal they wrap whole (folded), never end in "…";
    numbers never break; other text gives way first."""
    if name:
        table.add_column(header, overflow="fold", min_width=20, ratio=3)
    elif numeric:
        table.add_column(header, justify="right", no_wrap=True)
    else:
        table.add_column(header, overflow="fold", ratio=1)


def _layer_table(report: ScanReport, width: int = 160, limit: int | None = None) -> Table:
    table = Table(title="Bad layers", title_justify="left", show_edge=False, header_style="bold")
    # The worst tensor is the first row of the tensor table anyway: on a narrow terminal, drop it here.
    worst_column = width >= 110
    for column in ("layers", "bad tensors", "NaN", "+Inf", "-Inf", "components", "worst tensor")[: 7 if worst_column else 6]:
        _add_column(table, column, numeric=column in ("NaN", "+Inf", "-Inf", "bad tensors"), name=column == "layers")
    by_layer = {s.layer: s for s in report.layers}
    # Bad layers of each stack by index, so each range finds its members by bisection: with tens of
    # thousands of bad "layers" (one-element tensors) a scan over all layers per range was quadratic.
    stacks: dict[str | None, list[tuple[int, LayerSummary]]] = {}
    for summary in report.layers:
        if summary.bad and summary.index is not None:
            stacks.setdefault(summary.stack, []).append((summary.index, summary))
    for members_of_stack in stacks.values():
        members_of_stack.sort(key=lambda pair: pair[0])
    ranges = bad_ranges(report.layers)
    shown = ranges if limit is None else ranges[:limit]
    if len(ranges) > len(shown):
        table.caption = f"… and {len(ranges) - len(shown)} more bad layer groups (--all lists them, --json gives every one)"
    for rng in shown:
        if rng.first is None:
            members = [by_layer[rng.label]]
        else:
            ordered = stacks[rng.stack]
            lo = bisect.bisect_left(ordered, rng.first, key=lambda pair: pair[0])
            hi = bisect.bisect_right(ordered, rng.last, key=lambda pair: pair[0])
            members = [summary for _, summary in ordered[lo:hi]]
        worst = max(members, key=lambda s: s.nonfinite)
        components = sorted({c for s in members for c in s.bad_components}, key=COMPONENTS.index)
        table.add_row(
            Text(safe(rng.label), style="bold"),
            f"{rng.bad_tensors}/{rng.tensors}",
            f"{sum(s.nan for s in members):,}",
            f"{sum(s.posinf for s in members):,}",
            f"{sum(s.neginf for s in members):,}",
            ", ".join(components),
            *([Text(safe(worst.worst or ""))] if worst_column else []),
        )
    return table


def _tensor_table(report: ScanReport, limit: int | None) -> Table:
    bad = sorted(report.bad_tensors, key=lambda t: (-t.nonfinite, t.name))
    table = Table(title="Bad tensors", title_justify="left", show_edge=False, header_style="bold")
    # A name in several files (separate checkpoints side by side, --both-formats): say which file.
    files_by_name: dict[str, set[str]] = {}
    for t in report.tensors:
        files_by_name.setdefault(t.name, set()).add(t.ref.file)
    show_file = any(len(files_by_name[t.name]) > 1 for t in bad)
    for column in ("tensor", *(("file",) if show_file else ()), "dtype", "shape", "NaN", "+Inf", "-Inf", "bad %", "first bad at"):
        _add_column(table, column, numeric=column in ("NaN", "+Inf", "-Inf", "bad %"), name=column == "tensor")
    shown = bad if limit is None else bad[:limit]
    for t in shown:
        coords = t.first_bad_coords
        table.add_row(
            Text(safe(t.name)),
            *((Text(safe(os.path.basename(t.ref.file))),) if show_file else ()),
            t.ref.dtype + (" scales" if t.ref.region.blocks is not None else ""),  # counts of its scale fields
            "×".join(map(str, t.ref.shape)) or "scalar",
            f"{t.nan:,}",
            f"{t.posinf:,}",
            f"{t.neginf:,}",
            f"{100 * t.fraction:.3g}",
            f"[{', '.join(map(str, coords))}]" if coords is not None else "",
        )
    if len(bad) > len(shown):
        table.caption = f"… and {len(bad) - len(shown)} more bad tensors (--all lists them, --json gives every tensor)"
    return table


def _heatmaps(report: ScanReport) -> list[tuple[Text, Table]]:
    """Per layer stack of HEATMAP_MIN_LAYERS or more: a component × layer grid of bad/clean cells."""
    sizes: dict[str, int] = {}
    present: dict[str, set[str]] = {}
    bad: dict[str, dict[int, set[str]]] = {}
    for t in report.tensors:
        key = layer_of(t.name)
        if key.stack is None or key.index is None:
            continue
        component = component_of(t.name)
        sizes[key.stack] = max(sizes.get(key.stack, 0), key.index + 1)
        present.setdefault(key.stack, set()).add(component)
        if t.bad:
            bad.setdefault(key.stack, {}).setdefault(key.index, set()).add(component)
    out = []
    for stack, cells in bad.items():
        n = sizes[stack]
        if n < HEATMAP_MIN_LAYERS:
            continue
        title = Text.assemble((safe(stack), "bold"), ": layer × component  (", ("█", "red"), " bad  ", ("·", "green"), " clean)")
        table = Table(show_edge=False, show_header=False, pad_edge=False, box=None)
        table.add_column("component", style="bold")
        table.add_column("layers", no_wrap=True)
        ruler = "".join(str(i // 10 % 10) if i % 10 == 0 else " " for i in range(n))
        table.add_row("layer", Text(ruler, style="dim"))
        for component in (c for c in COMPONENTS if c in present[stack]):
            row = Text()
            for i in range(n):
                if component in cells.get(i, ()):
                    row.append("█", style="red")
                else:
                    row.append("·", style="green")
            table.add_row(component, row)
        out.append((title, table))
    return out


def render(report: ScanReport, console: Console, *, show_all: bool = False) -> None:
    console.print(
        Text.assemble(
            ("nandoctor scan ", "bold"),
            safe(report.target),
            (
                f"\n  {len(report.files)} file(s) · {len(report.tensors)} tensors · "
                f"{human_bytes(report.bytes_scanned)} read · {report.seconds:.2f} s"
                f" ({report.gbps:.2f} GB/s) · {report.device}",
                "dim",
            ),
        )
    )
    for note in report.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    if report.nonfinite:
        console.print()
        console.print(_layer_table(report, console.width, None if show_all else MAX_TENSOR_ROWS))
        console.print()
        console.print(_tensor_table(report, None if show_all else MAX_TENSOR_ROWS))
        tied = len(report.bad_tensors) - len(report.distinct_bad_tensors)
        if tied:
            console.print(Text(f"  {tied} of these tensors view the same elements as another one listed "
                               "(tied weights saved as one storage): their values are counted once in the totals",
                               style="dim"))
        for title, heatmap in _heatmaps(report):
            console.print()
            console.print(title)
            console.print(heatmap)
    if report.unviewed:
        console.print()
        for u in report.unviewed:
            console.print(
                Text(
                    f"  storage {safe(u.storage)} in {safe(u.file)}: {u.nan + u.posinf + u.neginf:,} non-finite "
                    "values in bytes that no tensor views (harmless to loading, but a sign of corruption)",
                    style="yellow",
                )
            )
    if report.errors:
        console.print()
        console.print(Text("Could not be read", style="bold red"))
        for problem in report.errors:
            line = Text.assemble("  ", (safe(problem.path), "bold"), ": ", safe(problem.message))
            console.print(line)
            if problem.hint:
                console.print(Text(f"    hint: {safe(problem.hint)}", style="dim"))
    console.print()
    console.print(verdict_text(report))
    if report.nonfinite:
        from nandoctor.hints import repair_command

        lead = (
            "make every part readable first (a repair needs all of them; see above), then restore the bad tensors with"
            if report.errors
            else "restore the bad tensors from an earlier checkpoint with"
        )
        # soft_wrap: the terminal wraps the command, so a copy of it pastes as one line
        console.print(Text(f"  next: {lead}\n        {safe(repair_command(report))}", style="dim"), soft_wrap=True)

