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
