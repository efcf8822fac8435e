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


def _exploded_run(tmp_path: Path) -> Path:
    """The demo run with its newest checkpoint's NaN/Inf replaced by a finite 1e30 (exploded, not NaN)."""
    import shutil

    from nandoctor.readers.safetensors import read_header

    run = tmp_path / "run"
    shutil.copytree(ROOT / "fixtures" / "demo-run", run)
    for shard in (run / "checkpoint-300").glob("*.safetensors"):
        header, start, _ = read_header(shard)
        data = bytearray(shard.read_bytes())
        for name, entry in header.items():
            if name != "__metadata__" and entry["dtype"] in ("F32", "F16", "BF16"):
                assert entry["dtype"] == "BF16", "the demo's weights are bf16"
                begin, end = (start + o for o in entry["data_offsets"])
                bits = np.frombuffer(bytes(data[begin:end]), np.uint16).copy()
                broken = (bits & 0x7F80) == 0x7F80  # bf16 NaN/Inf: every exponent bit set
                bits[broken] = np.float32(1e30).view(np.uint32) >> 16  # 1e30 in bf16 (the high half of fp32's)
                data[begin:end] = bits.tobytes()
        shard.write_bytes(bytes(data))
    return run


def test_a_run_under_fail_on_says_what_fails_and_what_is_only_reported(tmp_path, monkeypatch):
    """The run summary's verdict is the deciding checkpoint's words under the command's --fail-on (as the
    exit code is), reported findings marked so; JSON and HTML say the same."""
    import json

    run = _exploded_run(tmp_path)
    markdown = scan(str(run), "--markdown", "--fail-on", "nonfinite")
    assert markdown.exit_code == 0
    # (its bulk grew: 1e30 in 14 of a 96-value bias's values, DIVERGED as the health case, reported too)
    assert markdown.output.startswith("## nandoctor: ⚠️ PASS EXPLODED (reported only) (DIVERGED) (training run)\n")
    data = json.loads(scan(str(run), "--json", "--fail-on", "nonfinite").output)
    assert data["summary"]["verdict"] == "EXPLODED (reported only) (DIVERGED)" and data["summary"]["exit_code"] == 0
    assert data["summary"]["health"] == "diverged"  # (the deciding checkpoint's, whatever --fail-on fails)
    scan(str(run), "--html", str(tmp_path / "r.html"), "--fail-on", "nonfinite", "-q")
    assert "⚠ PASS EXPLODED (reported only)" in (tmp_path / "r.html").read_text()
    nan_run = scan(str(ROOT / "fixtures" / "demo-run"), "--markdown", "--fail-on", "exploded")  # (NaN fails any gate)
    assert nan_run.exit_code == 1 and "❌ FAIL NON-FINITE" in nan_run.output


def test_a_checkpoint_under_fail_on_repairs_only_what_fails(tmp_path, monkeypatch):
    """--fail-on nonfinite on an exploded checkpoint: the verdict marks it as reported only and next: does not
    suggest a repair (nothing that fails needs one)."""
    newest = _exploded_run(tmp_path) / "checkpoint-300"
    markdown = scan(str(newest), "--markdown", "--fail-on", "nonfinite")
    assert markdown.exit_code == 0
    assert markdown.output.startswith("## nandoctor: ⚠️ PASS EXPLODED (reported only)\n\n"
                                      f"PASS EXPLODED (reported only) {md(str(newest))}: ")
    assert "nandoctor repair" not in markdown.output and "### Next" not in markdown.output
    monkeypatch.chdir(ROOT)
    failing = scan("fixtures/demo-run/checkpoint-300", "--markdown")
    assert "### Next" in failing.output and "nandoctor repair" in failing.output
