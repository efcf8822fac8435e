"""The default console report shows every finding, not only NaN/Inf: exploded, outlier and zeroed tensors
get the verdict module's words on the verdict line, a row per finding and layer range, and a row per
tensor; findings the gate leaves out (``zeroed``, or ``--fail-on nonfinite``) are warnings, never hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fixtures.builders import RawTensor, write_safetensors
from tests.conftest import run_cli as run

NAME = "model.layers.{}.mlp.down_proj.weight"


def _tensor(seed: int, planted: dict[int, float] | None = None, zero: bool = False) -> RawTensor:
    values = (np.random.default_rng(seed).standard_normal(256) * 0.02).astype(np.float32)
    if zero:
        values[:] = 0
    for index, value in (planted or {}).items():
        values[index] = value
    return RawTensor("F32", (16, 16), values.tobytes())


EXPLODED = {i: 1e30 for i in range(200)}  # most of the tensor: its bulk is huge too, so not an outlier
SPECIAL = {
    "exploded": {1: _tensor(1, EXPLODED)},
    "outlier": {2: _tensor(2, {5: 50.0, 9: -60.0})},
    "zeroed": {3: _tensor(3, zero=True)},
    "mixed": {0: _tensor(0, {3: float("nan")}), 1: _tensor(1, EXPLODED), 2: _tensor(2, {5: 50.0}), 3: _tensor(3, zero=True)},
}


def _file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    write_safetensors(path, {NAME.format(i): SPECIAL[kind].get(i, _tensor(10 + i)) for i in range(4)})
    return path


def _lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()]


def _row(output: str, start: str) -> list[str]:
    """The cells of the first table row that starts with ``start``."""
    line = next(line for line in _lines(output) if line.startswith(start))
    return [cell.strip() for cell in line.split("│")]


def test_an_exploded_only_file_fails_and_says_so(tmp_path):
    result = run("scan", _file(tmp_path, "exploded"), "--no-progress")
    assert result.exit_code == 1
    assert "✗ FAIL EXPLODED (POISONED): 1 weight tensor exploded (max |x| 1e+30); worst model.layers.1" in result.output
    assert _row(result.output, "model.layers.1 ")[:4] == ["model.layers.1", "exploded", "1/1", "1e+30"]
    assert _row(result.output, NAME.format(1))[1] == "exploded"
    assert "nandoctor repair" in result.output


def test_an_exploded_only_file_under_fail_on_nonfinite_passes_with_a_warning(tmp_path):
    result = run("scan", _file(tmp_path, "exploded"), "--no-progress", "--fail-on", "nonfinite")
    assert result.exit_code == 0
    assert "⚠ PASS EXPLODED (reported only): 1 weight tensor exploded (max |x| 1e+30); worst model.layers.1" in result.output
    assert "reported, not failed (--fail-on nonfinite): exploded" in result.output
    assert _row(result.output, "model.layers.1 ")[1] == "exploded (reported)"
    assert "CLEAN" not in result.output


def test_an_outlier_only_file_lists_count_and_magnitude(tmp_path):
    result = run("scan", _file(tmp_path, "outlier"), "--no-progress")
    assert result.exit_code == 1
    assert "✗ FAIL OUTLIERS (POISONED): 2 outlier values in 1 tensor; worst model.layers.2" in result.output
    assert _row(result.output, "model.layers.2 ")[:5] == ["model.layers.2", "outlier", "1/1", "2", "60"]


def test_a_zeroed_only_file_fails_and_is_a_warning_where_fail_on_leaves_it_out(tmp_path):
    result = run("scan", _file(tmp_path, "zeroed"), "--no-progress")
    assert result.exit_code == 1
    assert "✗ FAIL ZEROED: 1 tensor all zero (model.layers.3.mlp.down_proj.weight)" in result.output
    assert "CLEAN" not in result.output and "finite and healthy" not in result.output
    assert _row(result.output, "model.layers.3 ")[:3] == ["model.layers.3", "zeroed", "1/1"]
    assert "compare with the source of the weights" in result.output and "nandoctor repair" in result.output
    reported = run("scan", _file(tmp_path, "zeroed"), "--no-progress", "--fail-on", "nonfinite,exploded,outlier")
    assert reported.exit_code == 0
    assert "⚠ PASS ZEROED (reported only): 1 tensor all zero" in reported.output
    assert _row(reported.output, "model.layers.3 ")[:3] == ["model.layers.3", "zeroed (reported)", "1/1"]


def test_mixed_findings_each_get_their_own_layer_range(tmp_path):
    path = _file(tmp_path, "mixed")
    result = run("scan", path, "--no-progress")
    assert result.exit_code == 1
    verdict = next(line for line in _lines(result.output) if line.startswith("✗"))
    assert verdict.startswith("✗ FAIL NON-FINITE + EXPLODED + OUTLIERS + ZEROED (DIVERGED): 1 of 4 tensors hold NaN/Inf "
                              "(1 NaN, 0 +Inf, 0 -Inf); 1 weight tensor exploded (max |x| 1e+30); "
                              "1 outlier value in 1 tensor; 1 tensor all zero")
    # one row per finding and range: the NaN is blamed on layer 0 only, the zeroed layer 3 is listed
    rows = {finding: _row(result.output, f"model.layers.{i} ") for i, finding in enumerate(("nonfinite", "exploded", "outlier"))}
    assert [rows[f][:3] for f in rows] == [["model.layers.0", "nonfinite", "1/1"], ["model.layers.1", "exploded", "1/1"],
                                           ["model.layers.2", "outlier", "1/1"]]
    assert rows["nonfinite"][3] == "1"  # NaN column
    assert _row(result.output, "model.layers.3 ")[:2] == ["model.layers.3", "zeroed"]
    assert "model.layers.0–2" not in "".join(line for line in _lines(result.output) if "│" in line)
    for i in range(4):
        assert NAME.format(i) in result.output

    gated = run("scan", path, "--no-progress", "--fail-on", "nonfinite")
    assert gated.exit_code == 1
    assert "✗ FAIL NON-FINITE (also reported: EXPLODED, OUTLIERS, ZEROED) (DIVERGED): 1 of 4" in gated.output
    assert "reported, not failed (--fail-on nonfinite): exploded, outlier, zeroed" in gated.output
    assert _row(gated.output, "model.layers.1 ")[1] == "exploded (reported)"


def test_outliers_beside_a_zeroed_tensor_get_one_repair_command(tmp_path):
    """A new user's trial: a file with outliers and a zeroed tensor printed the same repair command twice, as if two
    repairs were needed; the one that restores the bad tensors restores the zeroed one too, and says so."""
    path = tmp_path / "both.safetensors"
    write_safetensors(path, {NAME.format(i): t for i, t in {0: _tensor(2, {5: 50.0}), 1: _tensor(3, zero=True),
                                                            2: _tensor(12), 3: _tensor(13)}.items()})
    result = run("scan", path, "--no-progress")
    assert result.exit_code == 1
    assert result.output.count("nandoctor repair") == 1, result.output
    assert "the repair above restores them too" in result.output


def test_a_clean_file_says_finite_and_healthy(tmp_path):
    path = tmp_path / "clean.safetensors"
    write_safetensors(path, {NAME.format(0): _tensor(1)})
    result = run("scan", path, "--no-progress")
    assert result.exit_code == 0
    assert "✓ CLEAN: all 1 tensor finite and healthy" in result.output
    assert "PASS CLEAN" in run("scan", path, "-q").output and "1 tensor healthy" in run("scan", path, "-q").output


def test_a_missing_path_with_json_or_markdown_still_prints_a_report(tmp_path):
    missing = tmp_path / "nonexistent"
    result = run("scan", "--json", missing)
    assert result.exit_code == 3
    import json

    data = json.loads(result.stdout)
    assert data["schema_version"] == 3 and data["target"] == str(missing)
    assert data["summary"]["verdict"] == "UNREADABLE" and data["summary"]["exit_code"] == 3
    assert data["errors"] == [{"path": str(missing), "message": "no such file or folder", "hint": data["errors"][0]["hint"],
                              "kind": "unreadable"}]
    assert data["errors"][0]["hint"] and data["gate"]["exit_code"] == 3 and data["gate"]["passed"] is False
    assert result.stderr.startswith(f"error: {missing}: no such file or folder") and "hint:" in result.stderr

    result = run("scan", "--markdown", missing)
    assert result.exit_code == 3
    assert result.stdout.startswith("## nandoctor: ❌ FAIL UNREADABLE\n")
    assert f"- {missing}: no such file or folder".replace("_", "\\_") in result.stdout
    assert result.stderr.startswith("error: ")


def test_repair_says_and_records_why_each_tensor_was_restored(tmp_path):
    """A tensor restored for a 1e30 weight is "exploded", not "NaN/Inf", in the table and in the proof."""
    import json

    donor = tmp_path / "donor.safetensors"
    write_safetensors(donor, {NAME.format(i): _tensor(10 + i) for i in range(4)})
    target = tmp_path / "target.safetensors"
    write_safetensors(target, {NAME.format(0): _tensor(0, {3: float("nan")}), NAME.format(1): _tensor(1, {7: 1e30}),
                               **{NAME.format(i): _tensor(10 + i) for i in (2, 3)}})
    out = tmp_path / "out"
    result = run("repair", target, "--from", donor, "--out", out, "--no-progress", "--allow-diverged")
    assert result.exit_code == 0, result.output
    assert _row(result.output, NAME.format(0))[6] == "nonfinite"
    assert _row(result.output, NAME.format(1))[6] == "exploded"  # (one value: one finding, not also an outlier)
    assert "NaN/Inf" not in _row(result.output, NAME.format(1))
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    findings = {r["tensor"]: r["findings"] for r in proof["restored"]}
    assert findings == {NAME.format(0): ["nonfinite"], NAME.format(1): ["exploded"]}


def test_debug_is_accepted_after_the_command_and_help_names_every_failing_finding(tmp_path):
    import pytest

    from nandoctor.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError):  # --debug: the traceback, not the error: line
        run("scan", tmp_path / "nonexistent", "--debug")
    helped = " ".join(run("scan", "--help").output.split())
    assert "NaN/Inf, exploded, outlier or zeroed weights" in helped and "needs --json" in helped


def test_a_glob_matching_nothing_is_a_problem_not_unreadable(tmp_path):
    result = run("scan", _file(tmp_path, "zeroed"), "--only", "nothing.*", "--no-progress")
    assert result.exit_code == 3
    assert "Problems (exit 3)" in result.output and "Could not be read" not in result.output


def test_problem_headings_follow_each_problems_kind(tmp_path):
    """Heading by the problem's kind, never by words in its message: a hash mismatch is a problem with
    the file's bytes, an unreadable file is unreadable (JSON says the kind too)."""
    import json

    import nandoctor

    clean = _file(tmp_path, "zeroed")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(nandoctor.manifest(clean)))
    data = bytearray(clean.read_bytes())
    data[-1] ^= 0x01  # a changed mantissa bit: still readable, no longer the recorded bytes
    clean.write_bytes(bytes(data))
    changed = run("scan", clean, "--verify-hashes", "--manifest", manifest, "--no-progress")
    assert changed.exit_code == 3
    assert "Problems (exit 3)" in changed.output and "Could not be read" not in changed.output
    as_json = json.loads(run("scan", clean, "--verify-hashes", "--manifest", manifest, "--json").output)
    assert [e["kind"] for e in as_json["errors"]] == ["hash"]
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    unread = run("scan", broken, "--no-progress")
    assert unread.exit_code == 3 and "Could not be read (exit 3)" in unread.output


def test_tied_names_with_nan_count_as_tensors_everywhere_and_their_values_once(tmp_path):
    """Two names sharing one storage (a tied .bin) are two bad tensors on the verdict line, in the tables and
    in JSON, and their NaN are counted once in the totals (docs/json.md)."""
    import json

    torch = __import__("pytest").importorskip("torch")
    embed = torch.randn(16, 8)
    embed[2, 3] = float("nan")
    embed[5, 0] = float("nan")
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed,
             "model.layers.0.mlp.up_proj.weight": torch.randn(8, 8)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    result = run("scan", tmp_path / "pytorch_model.bin", "--no-progress")
    assert result.exit_code == 1
    assert "✗ FAIL NON-FINITE (DIVERGED): 2 of 3 tensors hold NaN/Inf (2 NaN, 0 +Inf, 0 -Inf; 1 of them a tied copy of another, " \
           "counted once)" in result.output
    assert _row(result.output, "lm_head.weight")[1] == "nonfinite"
    assert _row(result.output, "model.embed_tokens.weight")[1] == "nonfinite"
    data = json.loads(run("scan", tmp_path / "pytorch_model.bin", "--json").output)
    assert (data["summary"]["bad_tensors"], data["summary"]["nan"]) == (2, 2)
    quiet = run("scan", tmp_path / "pytorch_model.bin", "-q").output
    assert "2 of 3 tensors hold NaN/Inf (2 NaN, 0 +Inf, 0 -Inf; 1 of them a tied copy of another, counted once)" in quiet


def test_the_tensor_table_lists_a_listed_tensors_overflow_too(tmp_path):
    """The console's tensor table left out overflow where Markdown and HTML list it for the same tensor (a tensor
    that only overflows stays in the overflow table alone)."""
    values = np.random.default_rng(0).standard_normal(256).astype(np.float32) * 0.02
    values[3], values[9] = 7e4, np.nan
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"model.layers.0.mlp.up_proj.weight": RawTensor("F32", (16, 16), values.tobytes()),
                             "model.layers.1.mlp.up_proj.weight": RawTensor("F32", (16, 16), np.full(256, 7e4, np.float32).tobytes())})
    result = run("scan", path, "--target-dtype", "fp16", "--no-progress")
    assert _row(result.output, "model.layers.0.mlp.up_proj.weight")[1] == "nonfinite, exploded, overflow"  # (7e4 among 0.02: exploded too)
    table = result.output.split("Tensors with findings")[1].split("Overflow risk")[0]
    assert "model.layers.1.mlp.up_proj.weight" not in table
    markdown = run("scan", path, "--target-dtype", "fp16", "--markdown").output
    assert "| model.layers.0.mlp.up\\_proj.weight | nonfinite, exploded, overflow |" in markdown


def test_the_file_column_names_a_file_from_the_scanned_folder(tmp_path):
    """An adversarial round: a DeepSpeed save_dir's global_step100/ and global_step200/ hold files of one name; the
    tensor table's file column said mp_rank_00_model_states.pt for the bad one, which told the two saves apart not at
    all. It names the file from the scanned folder (a save_dir is now a run of its saves; Megatron's rank folders
    of one iteration hold files of one name too)."""
    import torch

    from tests.conftest import run_cli

    for rank, value in ((0, 0.5), (1, float("nan"))):
        (tmp_path / f"mp_rank_0{rank}").mkdir()
        torch.save({"model": {"layer.weight": torch.full((4, 4), value)}},
                   tmp_path / f"mp_rank_0{rank}" / "model_optim_rng.pt")
    shown = run_cli("scan", tmp_path, "--all").output
    assert "mp_rank_01/model_optim_rng.pt" in shown.split("Tensors with findings")[1], shown
