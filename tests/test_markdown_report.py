"""`nandoctor scan --markdown`: the summary compared with checked snapshots, its escaping, its usage errors.

To update a snapshot after a deliberate change: ``NANDOCTOR_UPDATE_SNAPSHOTS=1 pytest tests/test_markdown_report.py``
and read the diff before committing it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures.builders import RawTensor, write_safetensors
from nandoctor.cli import cli
from nandoctor.report.markdown_report import md
from tests.conftest import ROOT

SNAPSHOTS = Path(__file__).parent / "snapshots"


def scan(*args: str):
    return CliRunner().invoke(cli, ["scan", "--no-progress", *args], catch_exceptions=False)


@pytest.mark.parametrize(("target", "snapshot", "code"), [
    ("fixtures/demo-run", "demo-run.md", 1),
    ("fixtures/demo-run/checkpoint-300", "checkpoint-300.md", 1),
    ("fixtures/demo-run/checkpoint-100", "checkpoint-100.md", 0),
])
def test_markdown_matches_its_snapshot(target, snapshot, code, monkeypatch):
    monkeypatch.chdir(ROOT)  # the paths in the summary are as given on the command line
    result = scan(target, "--markdown")
    assert result.exit_code == code
    expected = SNAPSHOTS / snapshot
    if os.environ.get("NANDOCTOR_UPDATE_SNAPSHOTS"):
        expected.write_text(result.output)
    assert result.output == expected.read_text()


@pytest.mark.parametrize("other", ["--json", "--quiet"])
def test_markdown_with_json_or_quiet_is_a_usage_error(other):
    result = CliRunner().invoke(cli, ["scan", "fixtures/demo-run", "--markdown", other])
    assert result.exit_code == 2 and "--markdown" in result.output


def test_hostile_names_stay_text_and_keep_the_table_whole(tmp_path):
    bad = np.array([np.nan, 1.0], dtype=np.float32).tobytes()
    names = ["a|b.<img src=x onerror=alert(1)>.weight", "c.`code`.*bold*.[link](x).weight", "d.&lt;e.weight"]
    write_safetensors(tmp_path / "m.safetensors", {n: RawTensor("F32", (2,), bad) for n in names})
    out = scan(str(tmp_path / "m.safetensors"), "--markdown").output
    rows = [line for line in out.splitlines() if line.startswith("| ") and "nonfinite" in line]
    assert len(rows) == 3
    for row in rows:  # an unescaped | would add a cell
        assert row.replace("\\|", "").count("|") == 9
    prose = out.split("### Next")[0]  # (the code block after it is never rendered as HTML)
    assert not re.search(r"(?<!\\)[<>]", prose)  # every < and > escaped: GitHub renders inline HTML
    assert "a\\|b.\\<img src=x onerror=alert(1)\\>.weight" in out
    assert "d.&amp;lt;e.weight" in out  # an entity in a name is shown as written, not decoded


def test_md_escapes_control_characters_and_punctuation():
    assert md("x\x1b[31m") == "x\\\\x1b\\[31m"  # safe() writes \\x1b, whose backslash is escaped
    assert md("a_b*c") == "a\\_b\\*c"
