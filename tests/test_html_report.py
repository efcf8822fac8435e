"""`nandoctor scan --html`: the page parsed strictly (it is well-formed XML) for its parts, escaping, size, atomicity."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fixtures.builders import RawTensor, write_safetensors
from nandoctor.cli import cli
from nandoctor.report import heatmaps
from tests.conftest import DEMO_RUN

RED, CLEAN = heatmaps.COLOURS["nonfinite"], heatmaps.COLOURS["clean"]


def scan(*args: str):
    return CliRunner().invoke(cli, ["scan", "--no-progress", *args], catch_exceptions=False)


def page(path: Path) -> ET.Element:
    """The page through a strict XML parser: an unescaped ``<`` or ``&`` anywhere fails here."""
    return ET.parse(path).getroot()


def by_id(root: ET.Element, ident: str) -> ET.Element:
    found = root.find(f".//*[@id='{ident}']")
    assert found is not None, ident
    return found


def text(element: ET.Element) -> str:
    return "".join(element.itertext())


def self_contained(html: str) -> None:
    lowered = html.lower()
    for needle in ("<script", "http://", "https://", "@import", "url(", "<link", "<img", "src="):
        assert needle not in lowered, needle


def test_run_report_has_the_verdict_charts_markers_heatmap_and_timeline(tmp_path):
    out = tmp_path / "run.html"
    plain = scan(str(DEMO_RUN))
    result = scan(str(DEMO_RUN), "--html", str(out))
    assert result.exit_code == plain.exit_code == 1
    timing = __import__("re").compile(r"\d+\.\d+ s")
    assert timing.sub("", result.output) == timing.sub("", plain.output)  # the console report is unchanged
    html = out.read_text()
    self_contained(html)
    root = page(out)

    verdict = by_id(root, "verdict")
    assert verdict.get("class") == "verdict fail" and "NON-FINITE" in text(verdict)
    assert "nandoctor repair" in text(by_id(root, "next"))
    milestones = text(by_id(root, "milestones"))
    assert "last healthy: checkpoint-200" in milestones and "first bad: checkpoint-300" in milestones

    # the trainer log over steps: 15 logged points, NaN grad_norm at 260, 280, 300 drawn as crosses
    loss = by_id(root, "chart-loss").find(".//*[@class='series']")
    assert loss is not None and loss.get("data-name") == "loss" and loss.get("data-points") == "15"
    grad = by_id(root, "chart-grad_norm")
    assert len(grad.findall(".//*[@class='nonfinite']")) == 3
    markers = grad.findall(".//*[@class='marker']")
    assert [m.get("data-label") for m in markers] == ["100", "200", "300"]
    colours = [m.find("line").get("stroke") for m in markers]  # type: ignore[union-attr]
    assert colours[0] == colours[1] != colours[2]  # healthy, healthy, poisoned
    dots = by_id(root, "chart-max-abs").findall(".//*[@class='dot']")
    assert len(dots) == 3 and "(log scale)" in text(by_id(root, "chart-max-abs"))

    # layer × checkpoint: h.21–23 turn red at the third checkpoint only
    heat = by_id(root, "run-heatmap")
    rows = [text(t) for t in heat.findall(".//*[@class='row']")]
    cells = {(int(c.get("data-row")), int(c.get("data-col"))): c.get("fill") for c in heat.findall(".//*[@class='cell']")}
    for layer in ("transformer.h.20", "transformer.h.21", "transformer.h.23"):
        r = rows.index(layer)
        expected = [CLEAN, CLEAN, RED if layer != "transformer.h.20" else CLEAN]
        assert [cells[(r, c)] for c in range(3)] == expected, layer

    timeline = by_id(root, "timeline").findall("./tbody/tr")
    assert [text(tr.findall("td")[1]) for tr in timeline] == ["checkpoint-100", "checkpoint-200", "checkpoint-300"]
    assert len(by_id(root, "first-bad-tensors").findall("./tbody/tr")) == 18


def test_checkpoint_report_has_heatmap_cells_and_the_bad_tensors(tmp_path):
    out = tmp_path / "ckpt.html"
    assert scan(str(DEMO_RUN / "checkpoint-300"), "--html", str(out), "--quiet").exit_code == 1
    root = page(out)
    heat = by_id(root, "heatmap-0")
    rows = [text(t) for t in heat.findall(".//*[@class='row']")]
    assert rows == ["attention", "mlp", "norm"]
    red = {(rows[int(c.get("data-row"))], int(c.get("data-col"))) for c in heat.findall(".//*[@class='cell']")
           if c.get("fill") == RED}
    assert red == {(comp, layer) for comp in ("attention", "mlp") for layer in (21, 22, 23)}
    tensors = by_id(root, "tensors").findall("./tbody/tr")
    assert len(tensors) == 18
    first = [text(td) for td in tensors[0].findall("td")]
    assert first[0] == "transformer.h.22.attn.c_proj.weight" and first[-2:] == ["NaN", "[1, 21]"]
    assert "transformer.h.21–23" in text(by_id(root, "bad-layers"))


def test_a_clean_checkpoint_passes_and_names_no_next_step(tmp_path):
    out = tmp_path / "clean.html"
    assert scan(str(DEMO_RUN / "checkpoint-100"), "--html", str(out), "--json").exit_code == 0
    root = page(out)
    assert by_id(root, "verdict").get("class") == "verdict pass"
    assert root.find(".//*[@id='next']") is None and root.find(".//*[@id='tensors']") is None


HOSTILE = "<script>alert(1)</script>"


def test_names_from_the_checkpoint_are_text_never_markup(tmp_path):
    bad = np.array([np.nan, 1.0, 2.0, 3.0], dtype=np.float32).tobytes()
    folder = tmp_path / f"ckpt&{HOSTILE}"
    write_safetensors(folder / "model.safetensors", {
        f"model.layers.0.{HOSTILE}.weight": RawTensor("F32", (4,), bad),
        "model.layers.1.mlp.weight\x1b[31m": RawTensor("F32", (4,), bad),
    })
    out = tmp_path / "x.html"
    assert scan(str(folder), "--html", str(out)).exit_code == 1
    html = out.read_text()
    self_contained(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "\x1b" not in html
    root = page(out)
    names = [text(tr.find("td")) for tr in by_id(root, "tensors").findall("./tbody/tr")]  # type: ignore[arg-type]
    assert f"model.layers.0.{HOSTILE}.weight" in names
    assert "model.layers.1.mlp.weight\\x1b[31m" in names


def test_a_100k_tensor_checkpoint_gives_a_page_under_5_mb(tmp_path):
    # Every tensor bad, in 25,000 layers: every table and grid must be capped or binned. The report is
    # built directly (the engine's cost on 100k tiny tensors is not what is tested here) and judged as a scan is.
    from nandoctor import verdict
    from nandoctor.model import Region, ScanReport, TensorRef, TensorResult
    from nandoctor.report.html_report import render_scan, write_html

    results = []
    for i in range(100_000):
        name = f"model.layers.{i // 4}.mlp.w{i % 4}.weight"
        ref = TensorRef(name, "F32", (2,), Region("big.safetensors", 8 * i, 8, "F32", name))
        results.append(TensorResult(ref, nan=1, first_bad=0, max_abs=1.0))
    report = verdict.judged(ScanReport("big.safetensors", ("big.safetensors",), tuple(results), ()))
    out = tmp_path / "big.html"
    write_html(out, render_scan(report))
    assert out.stat().st_size < 5_000_000
    root = page(out)
    assert len(by_id(root, "tensors").findall("./tbody/tr")) == 40
    assert len(by_id(root, "bad-layers").findall("./tbody/tr")) == 1  # one range, 0–24999
    columns = by_id(root, "heatmap-0").findall(".//*[@class='col']")
    assert 100 < len(columns) <= heatmaps.MAX_COLUMNS
    assert text(columns[-1]).endswith("24999")


def test_the_page_is_written_atomically(tmp_path, monkeypatch):
    from nandoctor.errors import ReportWriteError
    from nandoctor.report import html_report

    out = tmp_path / "report.html"
    out.write_text("previous report")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(html_report.os, "replace", broken_replace)
    with pytest.raises(ReportWriteError, match="No space left"):
        html_report.write_html(out, "<html/>")
    assert out.read_text() == "previous report"  # never half-written
    assert os.listdir(tmp_path) == ["report.html"]  # the temporary file is gone


def test_an_unwritable_html_path_is_one_error_line_not_a_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["scan", str(DEMO_RUN / "checkpoint-100"), "--html", str(tmp_path / "no" / "x.html")])
    assert result.exit_code == 3
    assert "error:" in result.output and "cannot write the HTML report" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("target", ["checkpoint-100", "checkpoint-300", "."])
def test_an_unwritable_html_path_is_an_output_error_and_the_scans_verdict_still_stands(tmp_path, target):
    """The report that cannot be written is not the checkpoint: the scan's own verdict is printed (quiet, JSON,
    Markdown, console), then one `error:` line naming the HTML file; exit 3; never "UNREADABLE"."""
    import json

    path = DEMO_RUN / target
    out = str(tmp_path / "no" / "x.html")
    error = f"error: {out}: cannot write the HTML report (No such file or directory)\nhint: give a path in a folder"
    own = scan(str(path), "-q")
    quiet = scan(str(path), "--html", out, "-q")
    # (the scan's own line, its first word the exit code's: FAIL, and why; a new user's gate read PASS on an exit 3)
    said = own.stdout.rstrip("\n").partition(" ")[2]
    assert quiet.exit_code == 3 and "UNREADABLE" not in quiet.output
    head = "" if own.exit_code else "REPORT NOT WRITTEN, weights "
    assert quiet.stdout == f"FAIL {head}{said} · the --html report was not written (exit 3)\n"
    assert quiet.stderr.startswith(error)
    data = json.loads(scan(str(path), "--html", out, "--json").stdout)
    assert data["summary"]["exit_code"] == own.exit_code  # the scan's verdict
    assert data["report_errors"] == [{"message": f"{out}: cannot write the HTML report (No such file or directory)",
                                      "hint": "give a path in a folder that exists and that you can write to"}]
    if "gate" in data:  # a checkpoint's gate is the command's exit code
        assert data["gate"]["exit_code"] == 3 and data["gate"]["passed"] is False
    markdown = scan(str(path), "--html", out, "--markdown")
    assert markdown.exit_code == 3 and "### Report not written (exit 3)" in markdown.stdout
    assert "UNREADABLE" not in markdown.stdout and markdown.stderr.startswith(error)
    console = scan(str(path), "--html", out)
    assert console.exit_code == 3 and console.stderr.startswith(error) and "UNREADABLE" not in console.output

    def untimed(text: str) -> list[str]:
        return [line for line in text.splitlines() if " read · " not in line]

    assert untimed(console.stdout) == untimed(scan(str(path)).stdout)  # the whole console report, as without --html


def test_the_run_grid_has_rows_of_model_layers_only(tmp_path):
    """A reports trial: a Trainer run's HTML grid had 39 rows ``optimizer.state.N`` (numbered by parameter, not by
    layer) against 7 of the model; the optimizer's NaN still counts in the checkpoint's verdict."""
    import shutil

    torch = pytest.importorskip("torch")
    import nandoctor

    run = tmp_path / "run"
    shutil.copytree(DEMO_RUN, run)
    for step in (100, 200, 300):
        moments = {i: {"step": torch.tensor(float(step)), "exp_avg": torch.full((4,), float(i)),
                       "exp_avg_sq": torch.ones(4)} for i in range(12)}
        if step == 200:
            moments[3]["exp_avg"][1] = float("nan")
        torch.save({"state": moments, "param_groups": [{"lr": 1e-4, "params": list(range(12))}]},
                   run / f"checkpoint-{step}" / "optimizer.pt")
    scanned = nandoctor.scan_run(str(run), device="cpu")
    assert {c.step: sum(c.report.tensors.nan) for c in scanned.checkpoints}[200] == 1  # (read and judged)
    grid = heatmaps.run_grid(scanned)
    assert grid is not None and grid.rows and not [r for r in grid.rows if "optimizer" in r or "state" in r]


def test_an_html_path_that_is_a_folder_is_an_output_error_too(tmp_path):
    """A docs audit: `--html /tmp` was a usage error (exit 2) that printed no report at all, where docs/cli.md says
    a report file that cannot be written still prints the scan's report and exits 3."""
    import json

    result = scan(str(DEMO_RUN / "checkpoint-300"), "--html", str(tmp_path), "--json")
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["summary"]["verdict"] and data["report_errors"][0]["message"] == (
        f"{tmp_path}: cannot write the HTML report (Is a directory)")
    assert list(tmp_path.iterdir()) == []  # nothing written into the folder
    # (a trial: the hint said "give a path in a folder that exists", which the folder did)
    assert data["report_errors"][0]["hint"] == (  # (beside it: the folder may be the checkpoint, never written into)
        f"--html takes the file to write, not a folder: give e.g. {tmp_path}-report.html")
    quiet = scan(str(DEMO_RUN / "checkpoint-200"), "--html", str(tmp_path), "-q")
    # (a new user: the line said PASS CLEAN and the command exited 3; its first word is the exit code's)
    assert quiet.exit_code == 3 and quiet.stdout == (f"FAIL REPORT NOT WRITTEN, weights CLEAN {DEMO_RUN / 'checkpoint-200'}: "
                                                     "195 tensors healthy · "
                                                     "the --html report was not written (exit 3)\n")


@pytest.mark.parametrize("victim", ["model-00001-of-00002.safetensors", "config.json", "model.safetensors"])
def test_an_html_path_inside_the_checkpoint_is_refused_and_nothing_is_touched(tmp_path, victim):
    """A trial: `scan ckpt --html ckpt/model-00001-of-00002.safetensors` said CLEAN (exit 0), then replaced the shard
    with the page (safetensors.load_file: "header too large"). A file the scan read, a config beside them, or a new
    weight name there (a model.safetensors beside an index is what loaders take) is refused: exit 3, bytes kept."""
    import shutil

    from safetensors import safe_open

    ckpt = Path(shutil.copytree(DEMO_RUN / "checkpoint-200", tmp_path / "ckpt"))
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    result = scan(str(ckpt), "--quiet", "--html", str(ckpt / victim))
    assert result.exit_code == 3 and "never writes into a checkpoint's files" in result.output, result.output
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    with safe_open(ckpt / "model-00001-of-00002.safetensors", "pt") as shard:  # the oracle: the shard still loads
        assert len(list(shard.keys())) > 0
    single = scan(str(ckpt / "model-00001-of-00002.safetensors"), "--quiet", "--html",
                  str(ckpt / "model-00001-of-00002.safetensors"))
    assert single.exit_code == 3 and {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    # (nor a file in one of its subfolders: a review's page replaced additional_chat_templates/tool_use.jinja)
    (ckpt / "additional_chat_templates").mkdir()
    (ckpt / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}")
    sub = scan(str(ckpt), "--quiet", "--html", str(ckpt / "additional_chat_templates" / "tool_use.jinja"))
    assert sub.exit_code == 3 and (ckpt / "additional_chat_templates" / "tool_use.jinja").read_text() == "{{ messages }}"
    shutil.rmtree(ckpt / "additional_chat_templates")
    # (a report page inside the folder, or anywhere else, is written as asked)
    assert scan(str(ckpt), "--quiet", "--html", str(ckpt / "report.html")).exit_code == 0
    assert scan(str(ckpt), "--quiet", "--html", str(tmp_path / "elsewhere.txt")).exit_code == 0
    assert (ckpt / "report.html").stat().st_size > 1000 and (tmp_path / "elsewhere.txt").stat().st_size > 1000
