"""A scan report printed as `nandoctor scan` prints it: Markdown, JSON (with the gate), one line, or the rich report.

Shared by `scan`, `scan --distributed` and `merge`, so a merged report prints exactly as a single scan's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from nandoctor.cli.common import echo_json

if TYPE_CHECKING:
    from nandoctor.errors import ReportWriteError
    from nandoctor.model import ScanReport


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

        click.echo(render_scan(report, fail_on) + not_written_section(not_written), nl=False)
    elif as_json:
        from nandoctor.report.json_report import report_to_json, with_gate

        data = report_to_json(report, fail_on, lazy=True)  # tensors encoded one by one, never all held
        echo_json(with_gate(data, fail_on, code, not_written))
    elif quiet:
        from nandoctor.report.text import safe

        click.echo(safe(verdicts.one_line(report, fail_on)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.rich_report import render

        render(report, stdout_console(), show_all=show_all, fail_on=fail_on)
    return code
