"""ScanReport / RunReport → a GitHub-flavoured Markdown summary (``nandoctor scan PATH --markdown``).

For ``$GITHUB_STEP_SUMMARY`` or a merge-request comment: the verdict, the bad layer
ranges, the worst tensors as a table and the next command. The same values as the
HTML report (report/summary.py) and the verdict verdict.py stored; no timings, so
the same checkpoint gives the same text. Names from files are escaped for Markdown
and for the HTML GitHub would otherwise render (``<img …>`` in a tensor name).
"""

from __future__ import annotations

import re
from typing import Any

from nandoctor import verdict as verdicts
from nandoctor.checkpoint.runs import RunReport, status_words
from nandoctor.errors import NandoctorError
from nandoctor.layers import bad_ranges
from nandoctor.model import ScanReport
from nandoctor.report.rich_report import problems_heading, safe
from nandoctor.report.summary import next_steps, tensor_rows, timeline_rows

MAX_MARKDOWN_ROWS = 20  # a CI summary is read at a glance; --html and --json hold the rest
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~])")  # ( ) + - matter only after ] or at a line's start


def md(text: object) -> str:
    """Text that renders as itself: control characters made visible, Markdown and HTML punctuation escaped,
    ``&`` as an entity (so ``&lt;`` in a name is not decoded)."""
    return _SPECIAL.sub(r"\\\1", safe(str(text)).replace("&", "&amp;"))


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _code_block(lines: list[str]) -> list[str]:
    """A fenced block longer than any backtick run inside, so a name cannot close it."""
    body = [safe(line) for line in lines]
    longest = max((len(m) for line in body for m in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "sh", *body, fence]


def _status(code: int, reported: bool = False) -> str:
    """The headline's mark: a pass with findings only reported (ZEROED) is no green check (the console's ⚠ PASS)."""
    return ("⚠️ PASS" if reported else "✅ PASS") if code == 0 else "❌ FAIL"


def _tensors(report: ScanReport, heading: str, limit: int | None = MAX_MARKDOWN_ROWS) -> list[str]:
    rows, more = tensor_rows(report, limit)
    if not rows:
        return []
    cells = [[md(r.name), ", ".join(map(r.word, r.findings)), f"{r.nan:,}", f"{r.posinf:,}", f"{r.neginf:,}", f"{r.outliers:,}",
              md(r.worst), md(r.first_at_words) if r.first_at_words else ""]
             for r in rows]
    out = ["", f"### {heading}", ""]
    out += _table(["tensor", "findings", "NaN", "+Inf", "-Inf", "outliers", "worst value", "first bad at"],
                  cells, {2, 3, 4, 5})
    if more:
        out += ["", f"… and {verdicts.plural(more, 'more tensor', 'more tensors')} with findings (`--all` lists them, "
                "`--json` gives every tensor)"]
    return out


# a command a prose step ends with, after its colon (the console's one line: "…, move them out of Trainer's way (…):
# mv a b && mv c d"): a review copied it from the raw Markdown, escaped as prose (&amp;&amp;, \_), and it did not run
_TRAILING_COMMAND = re.compile(r"^(?P<prose>.*?): (?P<command>(?:mv|cp|nandoctor|printf|echo) .+)$")


def _next(steps: list[str]) -> list[str]:
    """Prose as text, only the commands (the steps indented four spaces, or a command a step ends with) in ``sh``
    blocks."""
    if not steps:
        return []
    out = ["", "### Next", ""]
    commands: list[str] = []
    for step in steps:
        if step.startswith("    "):
            commands.append(step.strip())
            continue
        trailing = _TRAILING_COMMAND.match(step)
        if trailing is not None:
            if commands:
                out += [*_code_block(commands), ""]
            out += [md(trailing["prose"] + ":"), ""]
            commands = [trailing["command"]]
            continue
        if commands:
            out += [*_code_block(commands), ""]
            commands = []
        out += [md(step), ""]
    if commands:
        out += _code_block(commands)
    while out[-1] == "":
        out.pop()
    return out


def _exit_line(code: int, then: str, not_written: NandoctorError | None) -> str:
    """The exit code the command returns: 3 when a report file could not be written, whatever the verdict."""
    if not_written is None:
        return f"- **Exit code:** {code} ({then})"
    return f"- **Exit code:** {not_written.exit_code} (the --html report could not be written; the verdict's: {code}, {then})"


def render_scan(report: ScanReport, fail_on: frozenset[str] = verdicts.DEFAULT_FAIL_ON,
                not_written: NandoctorError | None = None, show_all: bool = False) -> str:
    """The Markdown summary of a scan; ``not_written``: a report file (``--html``) that could not be written,
    said in its own section and in the exit code."""
    decided = verdicts.judge(report, fail_on)
    out = [f"## nandoctor: {_status(decided.exit_code, verdicts.cautioned(report, decided))} {md(verdicts.words_with_case(decided))}", "",
           f"{md(verdicts.one_line(report, fail_on))}", ""]
    ranges = bad_ranges(report.layers)
    if ranges:
        labels = ", ".join(md(r.label) for r in ranges[:MAX_MARKDOWN_ROWS])
        out.append(f"- **Bad layers:** {labels}" + (f" … and {len(ranges) - MAX_MARKDOWN_ROWS} more" if len(ranges) > MAX_MARKDOWN_ROWS else ""))
    out.append(_exit_line(decided.exit_code, f"fails on: {', '.join(sorted(fail_on))}", not_written))
    out += _tensors(report, "Worst tensors", None if show_all else MAX_MARKDOWN_ROWS)
    if report.errors:
        out += ["", f"### {problems_heading(report)} (exit 3)", ""]
        for p in report.errors[:MAX_MARKDOWN_ROWS]:
            out.append(f"- {md(p.path)}: {md(p.message)}")
            if p.hint:
                out.append(f"  - hint: {md(p.hint)}")
    out += _next(next_steps(report, decided))
    return "\n".join(out) + "\n"


def not_written_section(error: NandoctorError | None) -> str:
    """Appended to the summary when a report file (``--html``) could not be written: the command exits 3."""
    if error is None:
        return ""
    return f"\n### Report not written (exit 3)\n\n- {md(error.message)}\n  - hint: {md(error.hint)}\n"


def render_error(data: dict[str, Any]) -> str:
    """The Markdown of a scan that could not start (json_report.error_to_json's report)."""
    summary = data["summary"]
    out = [f"## nandoctor: {_status(summary['exit_code'])} {md(summary['verdict'])}", "",
           f"- **Exit code:** {summary['exit_code']} (fails on: {', '.join(summary['fail_on'])})",
           "", "### Problems", ""]
    for error in data["errors"]:
        out.append(f"- {md(error['path'])}: {md(error['message'])}")
        if error["hint"]:
            out.append(f"  - hint: {md(error['hint'])}")
    return "\n".join(out) + "\n"


def render_run(run: RunReport, fail_on: frozenset[str] = verdicts.DEFAULT_FAIL_ON,
               not_written: NandoctorError | None = None) -> str:
    from nandoctor.report.run_report import (
        HINT,
        after_loss_jump,
        bad_behind_words,
        decides_words,
        explanations,
        log_words,
        one_line,
        same_words,
    )
    from nandoctor.report.run_report import next_steps as run_next_steps

    code = run.exit_code(fail_on)
    last, first = run.last_healthy_under(fail_on), run.first_bad
    decider = run.decider(fail_on)
    decides = "the newest checkpoint decides" if decider is None else decides_words(run, decider).removesuffix(" the exit code")
    out = [f"## nandoctor: {_status(code, run.reported_only(fail_on))} {md(run.headline_under(fail_on))} (training run)", "",
           md(one_line(run, fail_on)), "",
           f"- **Last healthy:** {md(last.name) if last else 'none'}{md(after_loss_jump(run, last))} · **First bad:** {md(first.name) if first else 'none'}",
           _exit_line(code, md(decides), not_written)]
    behind = run.bad_behind(fail_on)
    if behind:
        out.append(f"- **Earlier checkpoints:** {md(bad_behind_words(behind))}")
    if run.log is not None and run.log.suspicious_step is not None:
        out.append(f"- **Trainer log:** {md(log_words(run.log))}")
    chosen = timeline_rows(run, MAX_MARKDOWN_ROWS * 2)
    rows = []
    for c in chosen:
        r = c.report if c.same_as is None else None  # a row that is an earlier row's file: counted there
        rows.append([c.step_label, md(c.name), status_words(c),
                     "" if r is None else f"{len(r.unhealthy_tensors)}/{len(r.tensors)}",
                     "" if r is None else f"{r.nonfinite:,}",
                     "" if r is None else c.max_abs_words,
                     md(same_words(c)) if c.same_as is not None else "" if r is None
                     else ", ".join(md(x.label) for x in bad_ranges(r.layers)[:4])])
    out += ["", "### Checkpoints", ""]
    out += _table(["step", "checkpoint", "status", "bad tensors", "NaN/Inf", "max \\|w\\|", "bad layers"], rows, {0, 3, 4, 5})
    if len(run.checkpoints) > len(chosen):
        out += ["", f"{len(run.checkpoints) - len(chosen)} checkpoints not listed (`--json` lists every one)"]
    why = explanations(run)
    if why or run.notes:
        out += ["", "### Why", ""]
        out += [f"  - hint: {md(line)}" if kind == HINT else f"- {md(line)}" for kind, line in why[:MAX_MARKDOWN_ROWS]]
        if len(why) > MAX_MARKDOWN_ROWS:
            out.append(f"- … {len(why) - MAX_MARKDOWN_ROWS} more (the console report and `--html` list every one)")
        out += [f"- note: {md(note)}" for note in run.notes]
    if first is not None and first.report is not None:
        out += _tensors(first.report, f"Worst tensors of the first bad checkpoint, {md(first.name)}")
    out += _next(run_next_steps(run, fail_on) if code else [])
    return "\n".join(out) + "\n"
