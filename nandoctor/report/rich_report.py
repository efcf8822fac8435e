"""ScanReport → a rich console report: verdict, bad layer ranges, bad tensors, heatmap, errors.

Names come from untrusted files, so every one goes through :func:`safe` (report/text.py, re-exported
here: control characters escaped) and into ``Text`` objects (never parsed as rich markup).
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nandoctor import verdict as verdicts
from nandoctor.layers import COMPONENTS, component_of, normalise
from nandoctor.model import ScanReport, TensorResult
from nandoctor.report.columns import add_column
from nandoctor.report.overflow_report import render_overflow
from nandoctor.report.summary import CLEAN, finding_ranges, next_steps, tensor_rows
from nandoctor.report.text import safe

MAX_TENSOR_ROWS = 40
HEATMAP_MIN_LAYERS = 8


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def verdict_text(report: ScanReport, fail_on: frozenset[str] | None = None) -> Text:
    """The console verdict line: verdict.py's words and counts (those of ``--quiet``), marked pass or fail.

    A pass with findings (``zeroed``, or findings ``--fail-on`` leaves out) is a warning, never "clean".
    """
    from nandoctor import verdict as verdicts

    decided = report.judgement if fail_on is None else verdicts.judge(report, fail_on)
    assert decided is not None, "pass the report through verdict.judged() first"
    facts = safe("; ".join(verdicts.facts(report, first_problem=False)))  # (names from files: a layer range, a problem's path)
    reported = decided.reported or decided.base_reported  # (an adapter's base model's findings only reported too)
    if decided.exit_code == 0 and not reported and verdicts.cautioned(report, decided):
        return Text.assemble((f"⚠ PASS {decided.words}", "bold yellow"), f": {facts}")  # (the caution is among the facts)
    if decided.exit_code == 0 and not reported and (
            verdicts.trainer_nonfinite(report) or verdicts.sentinel_infinities(report) or verdicts.health_unchecked(report)):
        # not "all finite and healthy": trainer state or a mask holds NaN/Inf, or a tensor's health is unknown
        return Text.assemble(("✓ CLEAN", "bold green"), f": {facts}")
    if decided.exit_code == 0 and not reported:
        tensors = len(report.tensors)
        rest = safe("; ".join(verdicts.facts(report, first_problem=False)[1:]))  # the first fact is "N tensors healthy"
        return Text.assemble(("✓ CLEAN", "bold green"), f": all {verdicts.plural(tensors, 'tensor')} finite and healthy"
                             + (f"; {rest}" if rest else ""))
    if decided.exit_code == 0:
        return Text.assemble((f"⚠ PASS {decided.words}", "bold yellow"), f": {facts}")
    return Text.assemble((f"✗ FAIL {verdicts.words_with_case(decided)}", "bold red"), f": {facts}")


# Below this width both tables merge NaN/+Inf/-Inf into one NaN/Inf column (as the run timeline does) and
# drop dtype, shape, bad %, components, the tensor table's outlier count (the layer table has it) and its
# first-bad coordinates when max |w| is shown: at 80 columns names are then not folded mid-token.
NARROW = 140  # the wide tables of a mixed report need about this much
_TABLE_FINDINGS = (verdicts.NONFINITE, verdicts.EXPLODED, verdicts.OUTLIER, verdicts.ZEROED)  # overflow: its own table
_NUMERIC = {"tensors", "NaN", "+Inf", "-Inf", "NaN/Inf", "outliers", "max |w|", "bad %"}
_NARROW_DROP = {"dtype", "shape", "bad %", "components", "NaN", "+Inf", "-Inf"}


def _finding_cell(finding: str, reported: tuple[str, ...], narrow: bool = False, word: str | None = None) -> Text:
    """A finding (said as ``word`` where a row words it otherwise) in red when it fails the gate, yellow (and
    "(reported)" when there is room) when it does not."""
    said = finding if word is None else word
    if finding not in reported:
        return Text(said, style="red")
    return Text(said + ("" if narrow else " (reported)"), style="yellow")


def _magnitude(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _columns(wanted: list[str], narrow: bool, rows: list[dict[str, object]], drop: set[str]) -> list[str]:
    """The columns to show: numbers no row has (no NaN anywhere, no outlier) are left out."""
    def has(*keys: str) -> bool:
        return any(row.get(k) for row in rows for k in keys)

    out = []
    for column in wanted:
        if column in ("NaN", "+Inf", "-Inf", "NaN/Inf") and not has("NaN", "+Inf", "-Inf"):
            continue
        if (column == "outliers" and not has("outliers")) or (column == "max |w|" and not has("max |w|")):
            continue
        if (narrow and column in _NARROW_DROP | drop) or (not narrow and column == "NaN/Inf"):
            continue
        out.append(column)
    if narrow and "max |w|" in out and "first bad at" in out:
        out.remove("first bad at")
    return out


def _table(title: str, rows: list[dict[str, object]], wanted: list[str], narrow: bool, name: str,
           drop: set[str] = frozenset()) -> Table:  # type: ignore[assignment]
    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    columns = _columns(wanted, narrow, rows, set(drop))
    for row in rows:
        row["NaN/Inf"] = sum(int(row.get(k) or 0) for k in ("NaN", "+Inf", "-Inf"))  # type: ignore[call-overload]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    for k, column in enumerate(columns):
        numeric = column in _NUMERIC
        widest = max((len(str(r[k])) for r in cells), default=0) if numeric else 0
        add_column(table, column, numeric=numeric, name=column == name, widest=widest)
    for r in cells:
        table.add_row(*r)
    return table


def _cell(value: object) -> Text | str:
    if isinstance(value, Text):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _worst_of(finding: str, t: TensorResult) -> float:
    """How much of ``finding`` a tensor has: picks a range's worst tensor."""
    if finding == verdicts.NONFINITE:
        return t.nonfinite
    if finding == verdicts.EXPLODED:  # the tensor holding the range's largest magnitude (its max |w| cell)
        return t.max_abs if t.max_abs is not None else 0
    if finding == verdicts.OUTLIER:
        return t.outliers.count if t.outliers is not None else 0
    return t.ref.numel


def _layer_table(report: ScanReport, width: int = 160, limit: int | None = None, reported: tuple[str, ...] = ()) -> Table:
    ranges = finding_ranges(report, _TABLE_FINDINGS)
    shown = ranges if limit is None else ranges[:limit]
    rows: list[dict[str, object]] = []
    for rng in shown:
        members = rng.members
        nonfinite = rng.finding == verdicts.NONFINITE
        maxes = [t.max_abs for t in members if t.max_abs is not None]
        rows.append({
            "layers": Text(safe(rng.label), style="bold"),
            "finding": _finding_cell(rng.finding, reported, width < NARROW),
            "tensors": f"{len(members)}/{rng.tensors}",
            "NaN": sum(t.nan for t in members) if nonfinite else 0,
            "+Inf": sum(t.posinf for t in members) if nonfinite else 0,
            "-Inf": sum(t.neginf for t in members) if nonfinite else 0,
            "outliers": sum(t.outliers.count for t in members if t.outliers is not None) if rng.finding == verdicts.OUTLIER else 0,
            "max |w|": _magnitude(max(maxes)) if maxes and rng.finding != verdicts.NONFINITE else "",
            "components": ", ".join(sorted({component_of(t.name) for t in members}, key=COMPONENTS.index)),
            # The worst tensor is the first row of the tensor table anyway: on a narrow terminal, drop it here.
            "worst tensor": Text(safe(max(members, key=lambda t: _worst_of(rng.finding, t)).name)),
        })
    wanted = ["layers", "finding", "tensors", "NaN", "+Inf", "-Inf", "NaN/Inf", "outliers", "max |w|", "components"]
    table = _table("Findings by layer", rows, wanted + (["worst tensor"] if width >= 110 else []), width < NARROW, "layers")
    if len(ranges) > len(shown):
        table.caption = (f"… and {verdicts.plural(len(ranges) - len(shown), 'more layer group')} (--all lists them, "
                         "--json gives every one)")
    return table


def _file_in(target: str, file: str) -> str:
    """``file`` as named from the scanned folder ``target`` (``global_step100/mp_rank_00_model_states.pt``: two saves'
    files of one name told apart, an adversarial round's), else its name alone."""
    relative = os.path.relpath(file, target) if os.path.isdir(target) else os.path.basename(file)
    return os.path.basename(file) if relative.startswith("..") else relative


def _tensor_table(report: ScanReport, limit: int | None, width: int = 160, reported: tuple[str, ...] = ()) -> Table:
    rows_of, more = tensor_rows(report, limit, _TABLE_FINDINGS)
    # A name in several files (separate checkpoints side by side, --both-formats): say which file.
    # (by the name with wrapper prefixes stripped: a loop's checkpoint.pt keeps model.0.weight, its best_model.pt 0.weight)
    files_by_name: dict[str, set[str]] = {}
    for name, file in zip(report.tensors.refs.names, report.tensors.refs.files):
        files_by_name.setdefault(normalise(name), set()).add(file)
    show_file = any(len(files_by_name[normalise(r.name)]) > 1 for r in rows_of)
    rows: list[dict[str, object]] = []
    for r in rows_of:
        # (every finding of a row it lists, overflow too, as Markdown and HTML say them; a tensor that only
        # overflows is listed in the overflow table alone)
        findings = Text(", ").join(_finding_cell(f, reported, width < NARROW, r.word(f)) for f in r.findings)
        rows.append({
            "tensor": Text(safe(r.name)), "file": Text(safe(_file_in(report.target, r.file))), "findings": findings,
            "dtype": r.dtype + (" scales" if r.scales else ""),  # block-quantized: counts of its scale fields
            "shape": r.shape, "NaN": r.nan, "+Inf": r.posinf, "-Inf": r.neginf, "outliers": r.outliers,
            "max |w|": _magnitude(r.max_abs) if set(r.findings) & {verdicts.EXPLODED, verdicts.OUTLIER, verdicts.ZEROED} else "",
            "bad %": f"{100 * r.fraction:.3g}" if r.fraction else "",
            "first bad at": r.first_at_words,
        })
    wanted = ["tensor", *(["file"] if show_file else []), "findings", "dtype", "shape", "NaN", "+Inf", "-Inf", "NaN/Inf",
              "outliers", "max |w|", "bad %", "first bad at"]
    table = _table("Tensors with findings", rows, wanted, width < NARROW, "tensor", {"outliers"})
    if more:
        table.caption = (f"… and {verdicts.plural(more, 'more tensor', 'more tensors')} with findings (--all lists them, "
                         "--json gives every tensor)")
    return table


# a cell's worst finding → its mark and colour (heatmaps.py decides the worst, as for the HTML report); each finding
# its own mark, so a log without colour (CI, NO_COLOR, a pipe) still tells a NaN layer from an outlier one
_MARKS = {"nonfinite": ("█", "red"), "exploded": ("▓", "magenta"), "outlier": ("▒", "dark_orange"),
          "overflow": ("▞", "yellow"), "zeroed": ("░", "grey50"), CLEAN: ("·", "green")}
_LEGEND_WORDS = {"nonfinite": "NaN/Inf", "exploded": "exploded", "outlier": "outlier", "overflow": "overflow",
                 "zeroed": "zeroed", CLEAN: "clean"}


def layer_ruler(firsts: list[int]) -> str:
    """The heatmap's axis: each column's first layer number given, ``firsts``, the tens written out where they
    start (``0         10        20``), each number from its column on, where it fits before the next."""
    ruler = [" "] * len(firsts)
    free = 0  # the first position a label may start at (one blank after the previous label)
    for i, first in enumerate(firsts):
        if i >= free and (first % 10 == 0 or (i and first // 10 != firsts[i - 1] // 10)):
            label = str(first // 10 * 10)
            if i + len(label) <= len(ruler):
                ruler[i:i + len(label)] = label
                free = i + len(label) + 1
    return "".join(ruler).rstrip()


def _heatmaps(report: ScanReport) -> list[tuple[Text, Table]]:
    """Per layer stack of HEATMAP_MIN_LAYERS or more with a finding: a component × layer grid, each cell marked by
    its worst finding (heatmaps.checkpoint_grids, the HTML report's grids)."""
    from nandoctor.report import heatmaps  # (only a report with findings draws one)

    out = []
    for grid in heatmaps.checkpoint_grids(report)[0]:
        kinds = {cell for row in grid.cells for cell in row if cell}
        if kinds <= {CLEAN} or len(grid.columns) < HEATMAP_MIN_LAYERS:
            continue
        legend: list[str | tuple[str, str]] = []
        for kind in (k for k in _MARKS if k in kinds):
            legend += [*(["  "] if legend else []), _MARKS[kind], f" {_LEGEND_WORDS[kind]}"]
        stack = grid.title.rsplit(": ", 1)[0]
        title = Text.assemble((safe(stack), "bold"), ": layer × component  (", *legend, ")")
        table = Table(show_edge=False, show_header=False, pad_edge=False, box=None)
        table.add_column("component", style="bold")
        table.add_column("layers", no_wrap=True)
        firsts = [int(label.split()[0]) for label in grid.columns]  # (a column of several layers: its first's number)
        table.add_row("layer", Text(layer_ruler(firsts), style="dim"))
        for component, cells in zip(grid.rows, grid.cells):
            row = Text()
            for cell in cells:
                mark, colour = _MARKS.get(cell, (" ", ""))
                row.append(mark, style=colour)
            table.add_row(component, row)
        out.append((title, table))
    return out


def render(report: ScanReport, console: Console, *, show_all: bool = False, fail_on: frozenset[str] | None = None) -> None:
    """The console report: header, findings by layer and by tensor, heatmaps, overflow risk, problems, the one
    verdict line, next."""
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
    base = verdicts.adapter_base_scan(report)
    if base is not None and isinstance(base.get("bytes"), int):  # (read beside the adapter: adapterbase.py)
        console.print(Text(f"  + its base model: {base.get('tensor_count', 0)} tensors · {human_bytes(base['bytes'])} "
                           f"read · {base.get('seconds', 0.0):.2f} s (once per process)", style="dim"))
    for note in report.notes:
        console.print(Text(f"  note: {safe(note)}", style="yellow"))
    limit = None if show_all else MAX_TENSOR_ROWS
    decided = report.judgement if fail_on is None else verdicts.judge(report, fail_on)
    reported = decided.reported if decided is not None else ()
    if report.tensors.with_any(_TABLE_FINDINGS):
        console.print()
        # crop=False: a table that cannot fit a very narrow terminal wraps there; a number is never cut short
        console.print(_layer_table(report, console.width, limit, reported), crop=False)
        console.print()
        console.print(_tensor_table(report, limit, console.width, reported), crop=False)
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
            why = ("values (a numpy array, not a tensor: torch.load(weights_only=False) loads it all the same)"
                   if u.kind == "numpy" else
                   "values (an io.BytesIO value holding a torch.save stream: torch.load(weights_only=False) gives it "
                   "back, and the module that saved it torch.loads it: TransformerEngine's _extra_state, its FP8 "
                   "scales)" if u.kind == "stream" else
                   "values in bytes that no tensor views (no tensor reads them, but torch.load loads them and torch.save "
                   "of a view writes them again: a NaN the file should not hold)")
            console.print(Text(f"  {safe(u.label())}: {u.nan + u.posinf + u.neginf:,} non-finite {why}", style="yellow"))
    render_overflow(report, console, show_all=show_all)
    render_problems(report, console)
    console.print()
    console.print(verdict_text(report, fail_on))
    if decided is not None and (decided.reported or decided.base_reported):
        console.print(Text(f"  reported, not failed (--fail-on {','.join(sorted(decided.fail_on))}): "
                           + ", ".join([*decided.reported, *(f"the base model's {f}" for f in decided.base_reported)]),
                           style="yellow"))
    print_next(console, next_steps(report, decided))


def render_problems(report: ScanReport, console: Console) -> None:
    """What stopped the checkpoint being judged, under a heading that says what it is (exit 3)."""
    if not report.errors:
        return
    console.print()
    console.print(Text(f"{problems_heading(report)} (exit 3)", style="bold red"))
    for problem in report.errors:
        console.print(Text.assemble("  ", (safe(problem.path), "bold"), ": ", safe(problem.message)))
        if problem.hint:
            console.print(Text(f"    hint: {safe(problem.hint)}", style="dim"))


def problems_heading(report: ScanReport) -> str:
    """"Could not be read" only when every problem is a read failure: a glob matching nothing or a hash
    mismatch is a problem, not an unreadable file."""
    unread = all(p.kind == "unreadable" for p in report.errors)
    return "Could not be read" if unread else "Problems"


def print_next(console: Console, steps: list[str]) -> None:
    """``next:`` and the steps; a command (indented four spaces) soft-wrapped so a copy pastes as one line."""
    if steps:
        console.print(Text("  next: " + "\n        ".join(safe(line.strip()) for line in steps), style="dim"),
                      soft_wrap=True)
