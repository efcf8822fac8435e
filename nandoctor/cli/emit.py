"""A scan report printed as `nandoctor scan` prints it: Markdown, JSON (with the gate), one line, or the rich report.

Shared by `scan`, `scan --distributed` and `merge`, so a merged report prints exactly as a single scan's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from nandoctor.cli.common import echo_json, fail, known_error

if TYPE_CHECKING:
    from nandoctor.checkpoint.runs import RunReport
    from nandoctor.errors import ReportWriteError
    from nandoctor.model import ScanReport


def check_markdown(markdown: bool, as_json: bool, quiet: bool) -> None:
    """--markdown is an output of its own: refused beside --json and --quiet."""
    if markdown and (as_json or quiet):
        raise click.UsageError("--markdown prints its own summary: use it without --json and --quiet")


def write_html(result: ScanReport | RunReport, path: str | None, fail_on: frozenset[str],
               show_all: bool = False) -> ReportWriteError | None:
    """Write the ``--html`` report; the error when it could not be written (the caller reports it after the scan's)."""
    if path is None:
        return None
    from nandoctor.errors import ReportWriteError
    from nandoctor.model import ScanReport
    from nandoctor.report import html_report

    inside = _inside_the_checkpoint(path, result)
    if inside is not None:
        return ReportWriteError(f"{path}: not written: {inside}; nandoctor never writes into a checkpoint's files",
                                "give --html a file outside the checkpoint, e.g. --html report.html")
    try:
        rendered = (html_report.render_scan(result, fail_on, show_all) if isinstance(result, ScanReport)
                    else html_report.render_run(result, fail_on))
        html_report.write_html(path, rendered)
    except ReportWriteError as exc:
        return exc
    return None


_REPORT_SUFFIXES = (".html", ".htm")


def _inside_the_checkpoint(path: str, result: ScanReport | RunReport) -> str | None:
    """Why the ``--html`` FILE ``path`` must not be written, or None: it is a file the scan read (a trial's report
    replaced a weight shard, after a scan that said CLEAN), or a name that is no report's in a folder that holds
    them (loaders may read it: a new model.safetensors beside an index)."""
    import os

    reports = [result] if not hasattr(result, "checkpoints") else [c.report for c in result.checkpoints]
    read = {os.path.realpath(f) for report in reports if report is not None for f in report.files}
    final = os.path.realpath(path)
    if final in read:
        return "it is a file of the checkpoint this scan read"
    folders = {os.path.dirname(f) for f in read}
    root = os.path.realpath(result.target) if os.path.isdir(result.target) else None
    under = root is not None and os.path.commonpath([root, final]) == root  # (its subfolders too: a chat template's)
    if (os.path.dirname(final) in folders or under) and not final.lower().endswith(_REPORT_SUFFIXES):
        return (f"it lies in the checkpoint's folder {os.path.dirname(final)} and is no .html file (a weight, config "
                "or tokenizer name there is read by loaders)")
    return None


def emit_scan_and_html(
    report: ScanReport, as_json: bool, quiet: bool, show_all: bool, fail_on: frozenset[str], *, markdown: bool = False,
    html_path: str | None = None,
) -> int:
    """``--html`` written, then :func:`emit_scan`; its exit code. A report file that cannot be written is an error of
    the output, not of the checkpoint: the scan's report is still printed (saying the file was not written), then
    one ``error:`` line, and the exit is 3."""
    not_written = write_html(report, html_path, fail_on, show_all)
    code = emit_scan(report, as_json, quiet, show_all, fail_on, markdown=markdown, not_written=not_written)
    if not_written is not None:
        from nandoctor.cli.common import fail

        fail(not_written.message, not_written.hint, not_written.exit_code)
    return code


def quiet_line(line: str, not_written: ReportWriteError | None) -> str:
    """``--quiet``'s line when a report file could not be written: its first word is the exit code's (3), so a gate
    that reads it never sees PASS, and it says why."""
    if not_written is None:
        return line
    status, _, rest = line.partition(" ")
    # (a passing scan says so as the weights', not the gate's: "FAIL CLEAN" read as a contradiction to a new user)
    said = f"REPORT NOT WRITTEN, weights {rest}" if status == "PASS" else rest if status == "FAIL" else line
    return f"FAIL {said} · the --html report was not written (exit {not_written.exit_code})"


def emit_scan(
    report: ScanReport, as_json: bool, quiet: bool, show_all: bool, fail_on: frozenset[str], *, markdown: bool = False,
    not_written: ReportWriteError | None = None,
) -> int:
    """Print ``report`` as the scan command does (Markdown, JSON, one line or rich); its exit code under ``fail_on``.

    ``not_written``: a report file (``--html``) that could not be written; Markdown and JSON say so (the
    JSON gate's exit code is then 3, as the command's), the caller prints the ``error:`` line."""
    from nandoctor import verdict as verdicts

    code = verdicts.exit_code(report, fail_on)
    if markdown:
        from nandoctor.report.markdown_report import not_written_section, render_scan

        click.echo(render_scan(report, fail_on, not_written, show_all) + not_written_section(not_written), nl=False)
    elif as_json:
        from nandoctor.report.json_report import report_to_json, with_gate

        data = report_to_json(report, fail_on, lazy=True)  # tensors encoded one by one, never all held
        echo_json(with_gate(data, fail_on, code, not_written))
    elif quiet:
        from nandoctor.report.text import safe

        click.echo(safe(quiet_line(verdicts.one_line(report, fail_on), not_written)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.rich_report import render

        render(report, stdout_console(), show_all=show_all, fail_on=fail_on)
    return code


@contextmanager
def report_on_error(path: str, quiet: bool, as_json: bool, markdown: bool, fail_on: frozenset[str]) -> Iterator[None]:
    """What stops a scan (or a merge) is still the report its options ask for on stdout: --quiet's one ``FAIL``
    line (a gate reads one line), one JSON object or Markdown page (a redirect never leaves an empty file); the
    usual ``error:`` line and hint go to stderr. Without those options, the usual error alone."""
    from nandoctor.errors import NandoctorError
    from nandoctor.report.text import safe

    try:
        yield
    except (NandoctorError, OSError) as raised:
        exc = known_error(raised)
        if exc is None or not (quiet or as_json or markdown):
            raise
        if quiet:
            click.echo(safe(f"FAIL {exc.verdict_word} {path}: {exc.message.removeprefix(f'{path}: ')}"))
            if exc.hint:
                click.echo(f"hint: {safe(exc.hint)}", err=True)
            sys.exit(exc.exit_code)
        from nandoctor.report.json_report import error_to_json

        data = error_to_json(path, exc.message, exc.hint, exc.exit_code, fail_on, exc.verdict_word)
        if markdown:
            from nandoctor.report.markdown_report import render_error

            click.echo(render_error(data), nl=False)
        else:
            echo_json(data)
        fail(exc.message, exc.hint, exc.exit_code)
