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
    assert "FAIL NON-FINITE + EXPLODED + OUTLIERS (POISONED)" in " ".join(out.split())  # as --quiet says it


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
