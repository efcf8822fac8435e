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


def test_a_run_under_fail_on_says_what_fails_and_what_is_only_reported(tmp_path, monkeypatch):
    """The run summary's verdict is the deciding checkpoint's words under the command's --fail-on (as the
    exit code is), reported findings marked so; JSON and HTML say the same."""
    import json

    monkeypatch.chdir(ROOT)
    markdown = scan("fixtures/demo-run", "--markdown", "--fail-on", "exploded")
    assert markdown.exit_code == 0
    assert markdown.output.startswith("## nandoctor: ⚠️ PASS NON-FINITE (reported only) (training run)\n")
    data = json.loads(scan("fixtures/demo-run", "--json", "--fail-on", "exploded").output)
    assert data["summary"]["verdict"] == "NON-FINITE (reported only)" and data["summary"]["exit_code"] == 0
    assert data["summary"]["health"] == "poisoned"  # (the deciding checkpoint's, whatever --fail-on fails)
    scan("fixtures/demo-run", "--html", str(tmp_path / "r.html"), "--fail-on", "exploded", "-q")
    assert "⚠ PASS NON-FINITE (reported only)" in (tmp_path / "r.html").read_text()


def test_a_checkpoint_under_fail_on_repairs_only_what_fails(monkeypatch):
    """--fail-on exploded on a checkpoint with NaN: the verdict marks NaN as reported only and next: does not
    suggest a repair (nothing that fails needs one)."""
    monkeypatch.chdir(ROOT)
    markdown = scan("fixtures/demo-run/checkpoint-300", "--markdown", "--fail-on", "exploded")
    assert markdown.exit_code == 0
    assert markdown.output.startswith("## nandoctor: ⚠️ PASS NON-FINITE (reported only)\n\n"
                                      "PASS NON-FINITE (reported only) fixtures/demo-run/checkpoint-300: 18 of 195")
    assert "nandoctor repair" not in markdown.output and "### Next" not in markdown.output
    failing = scan("fixtures/demo-run/checkpoint-300", "--markdown")
    assert "### Next" in failing.output and "nandoctor repair" in failing.output
