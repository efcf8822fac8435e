"""The console, Markdown and HTML reports of a run say the same things about why (report/run_report.py
``explanations``): the trainer log's loss jump, where the log broke, each diverged checkpoint's reason. A
tester found Markdown and HTML showing checkpoint-6 "diverged" with no reason and checkpoint-5 "clean" beside
"last healthy: checkpoint-4", with nothing explaining the difference."""

from __future__ import annotations

import html
import io

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rich.console import Console  # noqa: E402

import nandoctor  # noqa: E402
from nandoctor.report import html_report, markdown_report, run_report  # noqa: E402
from nandoctor.report.markdown_report import md  # noqa: E402
from tests.realruns import diverging_trainer_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("why") / "run"
    diverging_trainer_run(out, steps=26)
    return nandoctor.scan_run(str(out))


def test_every_explanation_is_in_all_three_reports(run):
    lines = run_report.explanations(run)
    kinds = {line.split(":", 1)[0] for _, line in lines}
    assert {"diverged", "trainer log"} <= kinds, lines  # the run has something to explain
    console = Console(file=io.StringIO(), width=400, color_system=None)
    run_report.render(run, console)
    shown = console.file.getvalue()
    page = html_report.render_run(run)
    markdown = markdown_report.render_run(run)
    for _, line in lines:
        assert line in shown
        assert html.escape(line, quote=True) in page or html.escape(line) in page, line
    for _, line in lines[: markdown_report.MAX_MARKDOWN_ROWS]:
        assert md(line) in markdown, line
    if len(lines) > markdown_report.MAX_MARKDOWN_ROWS:
        assert f"{len(lines) - markdown_report.MAX_MARKDOWN_ROWS} more" in markdown


def test_a_diverged_checkpoint_names_its_reason_in_markdown(run):
    diverged = [c for c in run.checkpoints if c.status == "diverged" and c.why]
    assert diverged
    markdown = markdown_report.render_run(run)
    first = next(line for _, line in run_report.explanations(run) if line.startswith(f"diverged: {diverged[0].name}"))
    assert first.endswith(f": {diverged[0].why}") and md(first) in markdown


def test_consecutive_checkpoints_diverged_for_the_same_reason_are_one_line(run):
    """A run diverged for good says so once (a trial's run printed the same line for 18 checkpoints in a row)."""
    rows = [c for c in run.checkpoints if c.same_as is None]
    said = [line for _, line in run_report.explanations(run) if line.startswith("diverged: ")]
    expected = []
    for k, c in enumerate(rows):
        if c.status != "diverged" or not c.why:
            continue
        if k and expected and rows[k - 1].status == "diverged" and rows[k - 1].why == c.why:
            expected[-1].append(c)
        else:
            expected.append([c])
    assert len(said) == len(expected), said
    for line, group in zip(said, expected):
        names = group[0].name if len(group) == 1 else f"{group[0].name} to {group[-1].name} ({len(group)} checkpoints)"
        assert line == f"diverged: {names}: {group[0].why}"
    assert any(len(group) > 1 for group in expected), said  # (the run diverges for good: a range to merge)
