"""What people read, from a reports trial: the worst tensor is the one with the worst value, equal rows in
layer order, one headline everywhere, numbers never cut at a narrow width, the exit code the command returns."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.conftest import run_cli


@pytest.fixture
def planted(tmp_path):
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": np.full((32, 32), 0.02, np.float32) for i in range(12)}
    tensors["model.layers.2.mlp.up_proj.weight"][0, 0] = 1e30
    tensors["model.layers.3.mlp.up_proj.weight"][0, 0] = 2.2e36
    tensors["model.layers.10.mlp.up_proj.weight"][1, 1] = np.nan
    tensors["model.layers.9.mlp.up_proj.weight"][1, 1] = np.nan
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    return path


def test_the_worst_value_leads_and_equals_go_in_layer_order(planted):
    from nandoctor import scan
    from nandoctor.report.summary import tensor_rows

    rows, _ = tensor_rows(scan(planted))
    names = [r.name for r in rows]
    assert names[:2] == ["model.layers.9.mlp.up_proj.weight", "model.layers.10.mlp.up_proj.weight"]  # not 10, 9
    assert names[2:4] == ["model.layers.3.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"]  # 2.2e36 first


def test_a_narrow_width_never_cuts_a_number_and_the_headline_says_the_case(planted):
    import io

    from rich.console import Console

    from nandoctor import scan
    from nandoctor.report.rich_report import render

    buffer = io.StringIO()
    render(scan(planted), Console(file=buffer, width=60, highlight=False, color_system=None))
    out = buffer.getvalue()
    assert "2.2e+36" in out and "1e+30" in out  # were cut to "2.2e+" and "1e+" at 60 columns
    assert "FAIL NON-FINITE + EXPLODED (POISONED)" in " ".join(out.split())  # as --quiet says it


def test_markdown_gives_the_exit_code_the_command_returns(planted, tmp_path):
    done = run_cli("scan", str(planted), "--markdown", "--html", str(tmp_path / "missing" / "r.html"))
    assert done.exit_code == 3
    assert "- **Exit code:** 3 (the --html report could not be written; the verdict's: 1" in done.stdout


def test_a_missing_weight_file_is_not_looked_up_as_a_model_to_download(tmp_path):
    done = run_cli("scan", str(tmp_path.name) + ".safetensors")
    assert done.exit_code == 3 and "download" not in done.output


def test_a_truncated_shard_names_the_tensors_that_went_unscanned(tmp_path):
    import json

    from nandoctor import scan

    folder = tmp_path / "ckpt"
    folder.mkdir()
    shards = {"model-00001-of-00002.safetensors": ["a.weight", "b.weight"],
              "model-00002-of-00002.safetensors": ["c.weight", "d.weight"]}
    for shard, names in shards.items():
        save_file({n: np.full((64, 64), 0.02, np.float32) for n in names}, folder / shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, names in shards.items() for n in names}}))
    broken = folder / "model-00002-of-00002.safetensors"
    broken.write_bytes(broken.read_bytes()[:-5000])
    report = scan(folder)
    assert report.exit_code == 3
    (problem,) = report.errors
    assert "its 2 tensor(s) in model.safetensors.index.json were not scanned: 'c.weight', 'd.weight'" in problem.message


def _grid(report) -> dict[str, str]:
    """The console heatmap's rows (component → cells) and its title, as printed without colour."""
    import io

    from rich.console import Console

    from nandoctor.report.rich_report import render

    buffer = io.StringIO()
    render(report, Console(file=buffer, width=140, highlight=False, color_system=None))
    lines = buffer.getvalue().splitlines()
    at = next((i for i, line in enumerate(lines) if "layer × component" in line), None)
    if at is None:
        return {}
    rows = {"title": lines[at]}
    for line in lines[at + 2:]:
        if not line.strip():
            break
        component, cells = line[:11].strip(), line[11:]
        rows[component] = cells
    return rows


def test_the_console_heatmap_marks_every_finding_as_the_html_one_does(tmp_path):
    """A reports trial: NaN in layer 5's MLP and one weight of 3e6 in layer 6's attention; the console grid
    (titled bad · clean) marked only layer 5 and drew layer 6 clean, and with only the exploded weight drew no
    grid at all. Optimizer state, numbered by parameter, gets no grid of layers."""
    from nandoctor import scan

    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(10):
        for part in ("self_attn.q_proj", "mlp.up_proj"):
            tensors[f"model.layers.{i}.{part}.weight"] = (rng.standard_normal((16, 16)) * 0.02).astype(np.float32)
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(16, np.float32)
    tensors["model.layers.6.self_attn.q_proj.weight"][3, 4] = 3e6
    tensors["model.layers.2.mlp.up_proj.weight"][:] = 0.0  # zeroed among non-zero siblings (reported)
    save_file(tensors, tmp_path / "exploded.safetensors")
    grid = _grid(scan(tmp_path / "exploded.safetensors"))
    assert grid["attention"] == "······▓···" and grid["mlp"] == "··░·······" and grid["norm"] == "··········"
    assert "▓ exploded" in grid["title"] and "░ zeroed" in grid["title"] and "NaN/Inf" not in grid["title"]

    tensors["model.layers.5.mlp.up_proj.weight"][1, 1] = np.nan
    tensors["optimizer.state.7.exp_avg"] = np.full(16, np.nan, np.float32)
    save_file(tensors, tmp_path / "both.safetensors")
    report = scan(tmp_path / "both.safetensors")
    grid = _grid(report)
    assert grid["attention"] == "······▓···" and grid["mlp"] == "··░··█····"  # (a mark per finding: no colour needed)
    assert grid["title"].split("(", 1)[1] == "█ NaN/Inf  ▓ exploded  ░ zeroed  · clean)"
    from nandoctor.report import heatmaps

    grids, _ = heatmaps.checkpoint_grids(report)  # (the HTML report's grids: the same cells)
    assert [g.title for g in grids] == ["model.layers: component × layer"]
    assert grids[0].cells[grids[0].rows.index("mlp")][2:6] == ["zeroed", "clean", "clean", "nonfinite"]


def test_a_narrow_terminal_never_cuts_a_checkpoint_or_tensor_name(tmp_path):
    """A reports trial at 60 columns: the run timeline showed checkpoint-10000 as "checkpoint-1000" beside the real
    checkpoint-1000 (a poisoned row under a healthy checkpoint's name), and the overflow table cut both tensor names
    to "model.la…"."""
    import io

    from rich.console import Console

    from nandoctor import scan, scan_run
    from nandoctor.report.overflow_report import render_overflow
    from nandoctor.report.run_report import render as render_run

    base = {f"model.layers.{i}.mlp.up_proj.weight": np.full((32, 32), 0.02, np.float32) for i in range(4)}
    for step in (1000, 9000, 10000):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        saved = {k: v.copy() for k, v in base.items()}
        if step == 10000:
            saved["model.layers.1.mlp.up_proj.weight"][0, 0] = np.nan
            saved["model.layers.3.mlp.up_proj.weight"][0, 1] = 7e4  # overflows fp16
            saved["model.layers.1.mlp.up_proj.weight"][0, 2] = 8e4
        save_file(saved, folder / "model.safetensors")
    buffer = io.StringIO()
    render_run(scan_run(tmp_path / "run"), Console(file=buffer, width=60, highlight=False, color_system=None))
    rows = [line.split()[0] for line in buffer.getvalue().splitlines() if line.strip().startswith("checkpoint-")]
    assert rows[:3] == ["checkpoint-1000", "checkpoint-9000", "checkpoint-10000"], buffer.getvalue()
    buffer = io.StringIO()
    render_overflow(scan(tmp_path / "run" / "checkpoint-10000", target_dtype="fp16"),
                    Console(file=buffer, width=60, highlight=False, color_system=None))
    text = buffer.getvalue()
    assert "…" not in text and "80000" in text and "70000" in text, text
    names, cells = [], [line.split("│") for line in text.splitlines() if "│" in line]
    for cell in cells:  # a folded name goes on in the next line, whose other cells are empty
        if names and not "".join(cell[1:]).strip():
            names[-1] += cell[0].strip()
        else:
            names.append(cell[0].strip())
    assert names == ["model.layers.1.mlp.up_proj.weight", "model.layers.3.mlp.up_proj.weight"], text


def test_all_lists_every_tensor_in_markdown_and_html_too(tmp_path):
    """A reports trial: `--all --html` still stopped at 40 rows and `--markdown --all` at 20 (the console listed all
    168); with 41 bad tensors every format said "… and 1 more tensors"."""
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": np.full((8, 8), 0.02, np.float32) for i in range(45)}
    for i in range(45):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"][0, 0] = np.nan
    save_file(tensors, tmp_path / "m.safetensors")
    page = tmp_path / "p.html"
    markdown = run_cli("scan", tmp_path / "m.safetensors", "--markdown", "--all", "--html", page).stdout
    assert all(f"model.layers.{i}.mlp.up\\_proj.weight" in markdown for i in range(45)) and "more tensor" not in markdown
    html = page.read_text()
    assert all(f"model.layers.{i}.mlp.up_proj.weight" in html for i in range(45)) and "more tensor" not in html
    default = run_cli("scan", tmp_path / "m.safetensors", "--markdown").stdout
    assert "… and 25 more tensors with findings" in default
    del tensors["model.layers.44.mlp.up_proj.weight"], tensors["model.layers.43.mlp.up_proj.weight"]
    del tensors["model.layers.42.mlp.up_proj.weight"], tensors["model.layers.41.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "m41.safetensors")
    console = run_cli("scan", tmp_path / "m41.safetensors").stdout
    assert "… and 1 more tensor with findings" in " ".join(console.split())


def test_the_heatmap_axis_writes_the_layer_numbers_out():
    """A new-user review: the axis printed the tens digit alone (``0  1  2`` for layers 0, 10, 20), which read as
    layers 0-2 of a 24-layer model."""
    from nandoctor.report.rich_report import layer_ruler

    assert layer_ruler(list(range(24))) == "0         10        20"
    assert layer_ruler(list(range(0, 120, 2))) == "0    10   20   30   40   50   60   70   80   90   100  110"
    assert layer_ruler(list(range(95, 130))) == "     100       110       120"  # (no room for 90 before 100)


def test_a_gguf_repair_hint_asks_for_a_gguf_donor(tmp_path):
    """A new-user review: a GGUF's hint asked for "an earlier clean checkpoint or the base model", while a GGUF repairs
    only from a GGUF of the same tensor types (docs/gguf.md)."""
    from nandoctor.hints import repair_command_for

    (tmp_path / "model.gguf").write_bytes(b"")
    assert "--from <a clean GGUF of the same model and tensor types>" in repair_command_for(str(tmp_path / "model.gguf"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "--from <an earlier clean checkpoint or the base model>" in repair_command_for(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("width", [120, 80, 60, 40])
def test_the_progress_bar_stays_on_one_line_with_its_byte_count(monkeypatch, width):
    """A review: at 80 columns the bar wrapped onto two lines and cut the byte total (`642.6/642…`), at 60 it was
    `642… 11… 0:0…`. The numbers never wrap; the file name takes what is left."""
    import io
    import re

    from rich.console import Console

    from nandoctor.cli import progress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=width, color_system=None)
    monkeypatch.setattr(progress, "stderr_console", lambda: console)
    monkeypatch.setattr(progress, "_stderr_may_be_terminal", lambda: True)
    monkeypatch.delenv("NANDOCTOR_NO_PROGRESS", raising=False)
    with progress.byte_progress(enabled=True, description="scanning") as update:
        assert update is not None
        update(642_600, 642_600, "/x/model-00002-of-00002.safetensors")
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buffer.getvalue())
    lines = [line for line in re.split(r"[\r\n]", shown) if line.strip()]
    assert lines and all(len(line) <= width and "642.6/642.6 kB" in line for line in lines), lines
    assert all((re.search(r"-:--:--|\d:\d\d:\d\d", line) is not None) == (width >= 72) for line in lines), lines
