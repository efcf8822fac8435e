"""A scan report printed as `nandoctor scan` prints it: Markdown, JSON (with the gate), one line, or the rich report.

Shared by `scan`, `scan --distributed` and `merge`, so a merged report prints exactly as a single scan's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from nandoctor.cli.common import echo_json

if TYPE_CHECKING:
    from nandoctor.model import ScanReport


def emit_scan(
    report: ScanReport, as_json: bool, quiet: bool, show_all: bool, fail_on: frozenset[str], *, markdown: bool = False
) -> int:
    """Print ``report`` as the scan command does (Markdown, JSON, one line or rich); its exit code under ``fail_on``."""
    from nandoctor import verdict as verdicts

    code = verdicts.exit_code(report, fail_on)
    if markdown:
        from nandoctor.report.markdown_report import render_scan

        click.echo(render_scan(report, fail_on), nl=False)
    elif as_json:
        from nandoctor.report.json_report import report_to_json

        data = report_to_json(report, fail_on, lazy=True)  # tensors encoded one by one, never all held
        data["gate"] = {"fail_on": sorted(fail_on), "exit_code": code, "passed": code == 0}
        echo_json(data)
    elif quiet:
        from nandoctor.report.text import safe

        click.echo(safe(verdicts.one_line(report, fail_on)))
    else:
        from nandoctor.cli.progress import stdout_console
        from nandoctor.report.overflow_report import render_overflow
        from nandoctor.report.rich_report import render

        console = stdout_console()
        render(report, console, show_all=show_all, fail_on=fail_on)
        render_overflow(report, console, show_all=show_all)
    return code
