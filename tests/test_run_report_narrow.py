"""The run timeline at a narrow terminal: numbers are never cut. A review: at 50-60 columns rich cut a diverged
checkpoint's max |w| of 1.01e+04 to "1." and nan to "na", which read as normal; the columns that do not fit now go
under the table, each value whole."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

import nandoctor
from nandoctor.report import run_report
from tests.conftest import DEMO_RUN


@pytest.mark.parametrize("width", [40, 50, 60, 80, 100])
def test_every_rows_largest_weight_is_said_whole_at_any_width(width):
    run = nandoctor.scan_run(DEMO_RUN, device="cpu")
    out = io.StringIO()
    run_report.render(run, Console(file=out, width=width, force_terminal=False, color_system=None))
    text = out.getvalue()
    assert all(len(line) <= width for line in text.split("Timeline")[1].split("last healthy")[0].splitlines())
    # every row's value whole, in its row or in its line under the table (which may wrap between words, never in one)
    said = " ".join(text.split("Timeline")[1].split("last healthy")[0].split())
    names = [c.name for c in run.checkpoints]
    for c in run.checkpoints:
        value = c.max_abs_words
        assert value, c.name
        spans = [m.end() for m in re.finditer(re.escape(c.name), said)]
        assert any(re.match(rf"((?!{'|'.join(map(re.escape, names))}).)*?(│ |max \|w\| ){re.escape(value)}( |;|$)",
                            said[at:]) for at in spans), (width, c.name, text)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_repair_plan_s_tables_lose_no_character_at_any_width(tmp_path, width):
    """A review: at 60 columns the repair's tensor column wrapped five characters a line and the why/donor columns had
    no width; a path folded into a narrow last column lost characters (rich crops a table that overflows). Narrow, the
    tables keep the tensor, its NaN/Inf and the donor's number in the list above them."""
    import shutil

    from nandoctor.report.repair_report import render_plan

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    plan = nandoctor.repair(run / "checkpoint-300", "auto", dry_run=True).plan
    out = io.StringIO()
    render_plan(plan, Console(file=out, width=width, force_terminal=False, color_system=None))
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    # the tensor column's rows, a folded name's pieces joined again: every name whole, nothing lost between lines
    names: list[str] = []
    for line in text.split("Restored tensors")[1].splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) < 2:
            continue
        if cells[1]:  # (a row's first line: its count column is filled)
            names.append(cells[0])
        elif names:
            names[-1] += cells[0]
    assert names == [r.name for r in plan.restorations][: len(names)] and names, (names, text)
    assert (f"donor 1 (step {plan.donors[0].step})" in text) == (width < 100)
