"""ScanReport / RunReport → one self-contained HTML page (``nandoctor scan PATH --html FILE``).

No scripts, no external styles, fonts or images: the charts are inline SVG
(report/svg.py), colours are inline, tooltips are SVG ``<title>``s, so the page
reads the same as a CI artifact, a mail attachment or offline. Everything shown
comes from the report and the verdict verdict.py stored in it (and, for a run,
run_report's next steps): nothing is decided here. Every string read from a
checkpoint goes through ``svg.esc``; tables are capped as on the console. The page
is well-formed XML (a strict parser reads it: that is how the tests check it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.runs import (
    CLEAN,
    DIVERGED,
    INCOMPLETE,
    OVERFLOW,
    POISONED,
    UNREADABLE,
    ZEROED_WORDS,
    RunCheckpoint,
    RunReport,
    status_words,
)
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport
from nandoctor.report import heatmaps, svg
from nandoctor.report.rich_report import human_bytes, problems_heading
from nandoctor.report.summary import MAX_ROWS, next_steps, tensor_rows, timeline_rows
from nandoctor.report.svg import esc, num

MAX_TIMELINE_ROWS = 200
STATUS_COLOURS = {CLEAN: "#2e7d32", OVERFLOW: "#e0a800", POISONED: "#d62728", DIVERGED: "#7b1fa2",
                  UNREADABLE: "#6d4c41", INCOMPLETE: "#9e9e9e"}


def _colour(c: RunCheckpoint) -> str:
    """A row's status colour: a healthy row with weights zeroed since an earlier checkpoint in the warning one."""
    return STATUS_COLOURS[OVERFLOW] if status_words(c) == ZEROED_WORDS else STATUS_COLOURS[c.status]


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.target{font-family:monospace;word-break:break-all;color:#555}
.verdict{padding:12px 16px;border-radius:6px;margin:14px 0}.pass{background:#e8f5e9;border-left:6px solid #2e7d32}
.fail{background:#fdecea;border-left:6px solid #d62728}.verdict b{font-size:18px}
pre{background:#f6f8fa;padding:8px 10px;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}td.name{font-family:monospace;word-break:break-all}
.chip{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;margin:1px}
.legend span{display:inline-block;width:11px;height:11px;margin:0 4px 0 12px;vertical-align:middle}
.note{color:#8a6d00}.dim{color:#777}.scroll{overflow-x:auto}
"""


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>" + "".join(body) + "</body></html>\n")


def _table(headers: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]], table_id: str) -> str:
    """``rows`` of (class, already escaped HTML) cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="{cls}">{cell}</td>' for cls, cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _chip(text: str, colour: str) -> str:
    return f'<span class="chip" style="background:{colour}">{esc(text)}</span>'


def _verdict_box(passed: bool, words: str, line: str, steps: list[str], reported: bool = False) -> str:
    """The headline box: ``reported``, a pass with findings only reported (ZEROED): ⚠, as the console marks it."""
    mark = ("⚠ PASS" if reported else "✓ PASS") if passed else "✗ FAIL"
    out = [f'<section id="verdict" class="verdict {"pass" if passed else "fail"}">',
           f'<b>{mark} {esc(words)}</b><p>{esc(line)}</p>']
    if steps:
        out.append('<div id="next">next:<pre>' + "\n".join(esc(step) for step in steps) + "</pre></div>")
    out.append("</section>")
    return "".join(out)


def _legend() -> str:
    items = "".join(f'<span style="background:{heatmaps.COLOURS[k]}"></span>{esc(k)}' for k in heatmaps.LEGEND)
    return f'<p class="legend">{items}</p>'


def _grid_svg(grid: heatmaps.Grid, chart_id: str) -> str:
    return '<div class="scroll">' + svg.heatmap(grid.rows, grid.columns, grid.colours(), grid.tooltips,
                                                title=grid.title, chart_id=chart_id) + "</div>"


def _tensors_section(report: ScanReport, heading: str, section_id: str, limit: int | None = MAX_ROWS) -> str:
    rows, more = tensor_rows(report, limit)
    if not rows:
        return ""
    files_of: dict[str, set[str]] = {}  # a name in several files (--both-formats): say which file, as the console
    for t in report.tensors:
        files_of.setdefault(t.name, set()).add(t.ref.file)
    show_file = any(len(files_of[r.name]) > 1 for r in rows)
    cells = []
    for r in rows:
        cells.append([
            ("name", esc(r.name)),
            *((("name", esc(os.path.basename(r.file))),) if show_file else ()),
            ("", esc(r.role)), ("", esc(r.dtype)), ("", esc(r.shape)),
            ("", "".join(_chip(r.word(f), heatmaps.COLOURS.get(f, "#555")) for f in r.findings)),
            ("n", f"{r.nan:,}"), ("n", f"{r.posinf:,}"), ("n", f"{r.neginf:,}"), ("n", f"{r.outliers:,}"),
            ("n", r.worst),
            ("n", r.first_at_words),
        ])
    headers = ["tensor", *(["file"] if show_file else []), "role", "dtype", "shape", "findings", "NaN", "+Inf",
               "-Inf", "outliers", "worst value", "first bad at"]
    tail = (f'<p class="dim">… and {verdicts.plural(more, "more tensor", "more tensors")} with findings (--all lists '
            'them, --json gives every tensor)</p>' if more else "")
    return f"<h2>{esc(heading)}</h2>" + _table(headers, cells, section_id) + tail


def _scan_body(report: ScanReport, show_all: bool = False) -> list[str]:
    out = [f"<h2>Checkpoint</h2><p>{len(report.files)} file(s) · {len(report.tensors):,} tensors · "
           f"{esc(human_bytes(report.bytes_scanned))} read · {esc(report.device)}</p>"]
    out += [f'<p class="note">note: {esc(n)}</p>' for n in report.notes]
    ranges = bad_ranges(report.layers)
    if ranges:
        shown = ranges[:MAX_ROWS]
        rows = [[("name", esc(r.label)), ("n", f"{r.bad_tensors}/{r.tensors}"), ("n", f"{r.nonfinite:,}")] for r in shown]
        out.append("<h2>Bad layers</h2>" + _table(["layers", "bad tensors", "NaN/Inf values"], rows, "bad-layers"))
        if len(ranges) > len(shown):
            out.append(f'<p class="dim">… and {verdicts.plural(len(ranges) - len(shown), "more bad layer group")}</p>')
    grids, outside = heatmaps.checkpoint_grids(report)
    if grids or outside:
        out.append("<h2>Where in the network</h2>" + _legend())
        out += [_grid_svg(g, f"heatmap-{i}") for i, g in enumerate(grids)]
        if outside:
            shown_groups = list(outside.items())[:MAX_ROWS]
            chips = "".join(_chip(group, heatmaps.COLOURS.get(f, "#555")) for group, f in shown_groups)
            out.append(f'<p id="outside">outside the layer stacks: {chips}</p>')
    out.append(_tensors_section(report, "Tensors with findings", "tensors", None if show_all else MAX_ROWS))
    if report.errors:
        rows = [[("name", esc(p.path)), ("", esc(p.message)), ("", esc(p.hint))] for p in report.errors[:MAX_ROWS]]
        out.append(f"<h2>{esc(problems_heading(report))} (exit 3)</h2>" + _table(["path", "problem", "hint"], rows, "errors"))
    return out


def render_scan(report: ScanReport, fail_on: frozenset[str] = verdicts.DEFAULT_FAIL_ON, show_all: bool = False) -> str:
    """The page for one checkpoint: verdict and next command, heatmap, tensors with findings."""
    decided = verdicts.judge(report, fail_on)
    head = f'<h1>nandoctor scan</h1><p class="target">{esc(report.target)}</p>'
    box = _verdict_box(decided.exit_code == 0, verdicts.words_with_case(decided), verdicts.one_line(report, fail_on),
                       next_steps(report, decided), verdicts.cautioned(report, decided))
    return _page(f"nandoctor: {report.target}", [head, box, *_scan_body(report, show_all)])


# ------------------------------------------------------------------------------------------------
# Runs


def _markers(run: RunReport) -> list[svg.Marker]:
    return [svg.Marker(c.step, c.name.removeprefix("checkpoint-"), _colour(c), f"{c.name}: {status_words(c)}")
            for c in run.checkpoints]


def _charts(run: RunReport) -> list[str]:
    out = []
    series = run.series
    if series is not None:
        source = f'<p class="dim">from {esc(series.source)}' + (
            f" ({len(series.points)} of {series.thinned_from} points)" if series.thinned_from else "") + "</p>"
        out.append(source)
        for key, attr, colour in ((series.loss_key, "loss", "#1f77b4"), (series.grad_key, "grad_norm", "#ff7f0e")):
            points = [(p.step, v) for p in series.points if (v := getattr(p, attr)) is not None]
            if key and points:
                line = svg.Series(key, points, colour)
                out.append(svg.line_chart([line], title=key, markers=_markers(run), chart_id=f"chart-{attr}"))
    else:
        out.append('<p class="dim">no trainer log (trainer_state.json log_history or a Lightning metrics.csv)</p>')
    scanned = [c for c in run.checkpoints if c.max_abs is not None]
    if scanned:
        line = svg.Series("max |w|", [(c.step, c.max_abs or 0.0) for c in scanned], "#444", dots=True,
                          dot_colours=[_colour(c) for c in scanned])
        out.append(svg.line_chart([line], title="largest finite weight magnitude per checkpoint (its dot: the status)",
                                  log_y=True,
                                  markers=_markers(run), chart_id="chart-max-abs"))
    return out


def _timeline(run: RunReport) -> str:
    from nandoctor.report.run_report import log_words, same_words

    rows = []
    chosen = timeline_rows(run, MAX_TIMELINE_ROWS)
    for c in chosen:
        r = c.report if c.same_as is None else None  # a row that is an earlier row's file: counted there
        rows.append([
            ("n", c.step_label), ("name", esc(c.name)), ("", _chip(status_words(c), _colour(c))),
            ("n", "" if r is None else f"{len(r.unhealthy_tensors)}/{len(r.tensors)}"),
            ("n", "" if r is None else f"{r.nonfinite:,}"),
            ("n", "" if r is None else c.max_abs_words),  # (a same_as row: said in its row, as the console does)
            ("n", "" if c.growth is None else "×" + num(c.growth)),
            ("name", esc(same_words(c)) if c.same_as is not None else "" if r is None
             else esc(", ".join(x.label for x in bad_ranges(r.layers)[:8]))),
            ("", esc(log_words(c.log) if not c.incomplete else "; ".join(c.incomplete))),
        ])
    headers = ["step", "checkpoint", "status", "bad tensors", "NaN/Inf", "max |w|", "growth", "bad layers", "trainer log / why"]
    more = len(run.checkpoints) - len(chosen)
    tail = f'<p class="dim">{more} checkpoints not listed (--json lists every one)</p>' if more else ""
    return "<h2>Timeline</h2>" + _table(headers, rows, "timeline") + tail


def render_run(run: RunReport, fail_on: frozenset[str] = verdicts.DEFAULT_FAIL_ON) -> str:
    """The page for a run: verdict, last healthy / first bad, the log and max |w| charts, the heatmap, the timeline."""
    from nandoctor.report.run_report import HINT, after_loss_jump, explanations, one_line
    from nandoctor.report.run_report import next_steps as run_next_steps

    code = run.exit_code(fail_on)
    head = f'<h1>nandoctor scan · training run</h1><p class="target">{esc(run.target)}</p>'
    body = [head, _verdict_box(code == 0, run.headline_under(fail_on), one_line(run, fail_on),
                               run_next_steps(run, fail_on) if code else [], run.reported_only(fail_on))]
    last, first = run.last_healthy_under(fail_on), run.first_bad
    body.append('<p id="milestones">last healthy: '
                + (_chip(last.name, STATUS_COLOURS[CLEAN]) + esc(after_loss_jump(run, last)) if last else "<b>none</b>")
                + " · first bad: " + (_chip(first.name, STATUS_COLOURS[first.status]) if first else "<b>none</b>")
                + "</p>")
    body += [f'<p class="note">note: {esc(n)}</p>' for n in run.notes]
    body.append("<h2>Over steps</h2>")
    body += _charts(run)
    grid = heatmaps.run_grid(run)
    if grid is not None:
        body.append("<h2>Where the damage began and how it spread</h2>" + _legend() + _grid_svg(grid, "run-heatmap"))
    body.append(_timeline(run))
    why = explanations(run)
    if why:
        items = "".join(f'<li class="{kind}">{"hint: " if kind == HINT else ""}{esc(line)}</li>' for kind, line in why)
        body.append(f'<h2>Why</h2><ul id="why">{items}</ul>')
    if first is not None and first.report is not None:
        body.append(_tensors_section(first.report, f"First bad checkpoint: {first.name}", "first-bad-tensors"))
    return _page(f"nandoctor: {run.target}", body)


def write_html(path: str | os.PathLike[str], page: str) -> None:
    """Write ``page`` to ``path`` as :mod:`nandoctor.report.outfile` writes a report file (atomically for a regular
    or new file, directly for a FIFO or device); a ``ReportWriteError`` naming it when that fails."""
    from nandoctor.errors import ReportWriteError
    from nandoctor.report.outfile import write_text

    try:
        write_text(path, page)
    except IsADirectoryError as exc:  # (a trial: the default hint, "a folder that exists", applied to a folder)
        # (beside the folder, never in it: the folder may be the checkpoint itself, which nandoctor never writes into)
        beside = os.path.abspath(os.fspath(path))  # (`--html .`: a name beside the folder, not ".-report.html")
        raise ReportWriteError(
            f"{os.fspath(path)}: cannot write the HTML report ({exc.strerror or exc})",
            f"--html takes the file to write, not a folder: give e.g. {beside}-report.html",
        ) from None
    except OSError as exc:
        raise ReportWriteError(f"{os.fspath(path)}: cannot write the HTML report ({exc.strerror or exc})") from None
