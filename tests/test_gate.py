"""Gate options of `nandoctor scan`: --quiet, --target-dtype (overflow risk), --fail-on; exit codes on real bytes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures.builders import SPECIALS, RawTensor, bf16_bits, write_safetensors
from nandoctor.cli import cli

from .conftest import DEMO_RUN
from .conftest import run_cli as run

TORCH_TARGETS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}




def edge_values() -> np.ndarray:
    """Magnitudes on both sides of every target's overflow limit, both signs, plus ordinary weights."""
    edges = [0.01, 1.0, 448.0, 463.9, 464.0, 464.1, 480.0, 57344.0, 61439.0, 61440.0, 61441.0, 65504.0,
             65519.0, 65520.0, 65521.0, 1e5, 3.0e38, 3.3895e38, 3.3961e38, 3.4e38]
    vals = np.array(edges + [-v for v in edges], dtype=np.float32)
    rng = np.random.default_rng(3)
    return np.concatenate([vals, (rng.standard_normal(60) * 10.0 ** rng.integers(-2, 6, 60)).astype(np.float32)])


def torch_overflow(values: np.ndarray, target: str) -> int:
    """The truth: how many finite values torch's own cast does not keep in range.

    fp16/bf16/fp8_e5m2 turn them into Inf. fp8_e4m3fn has no Inf: torch 2.13 clamps values
    beyond the last rounding boundary (464) to ±448 (a non-saturating cast would give NaN);
    nandoctor counts those, as kernels/targets.py documents.
    """
    src = torch.from_numpy(values)
    cast = src.to(TORCH_TARGETS[target]).float()
    lost = ~torch.isfinite(cast)
    if target == "fp8_e4m3":
        lost |= (src.abs() > 464) & (cast.abs() == 448)
    return int((torch.isfinite(src) & lost).sum())


@pytest.fixture
def overflow_ckpt(tmp_path):
    values = edge_values()
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {
        "model.layers.0.mlp.down_proj.weight": RawTensor("F32", (values.size,), values.tobytes()),
        "model.layers.1.mlp.down_proj.weight": RawTensor("BF16", (2,), bf16_bits(np.array([7e4, 1.0], np.float32)).tobytes()),
        "model.layers.1.input_layernorm.weight": RawTensor("F32", (2,), np.ones(2, np.float32).tobytes()),
        "step": RawTensor("I64", (1,), np.array([10**12], np.int64).tobytes()),  # integers are never cast
    })
    return path, values


@pytest.mark.parametrize("target", sorted(TORCH_TARGETS))
def test_overflow_counts_agree_with_torchs_own_cast(overflow_ckpt, target):
    path, values = overflow_ckpt
    result = run("scan", str(path), "--target-dtype", target, "--json")
    data = json.loads(result.output)
    by_name = {t["name"]: t for t in data["tensors"]}
    expected = torch_overflow(values, target)
    assert by_name["model.layers.0.mlp.down_proj.weight"]["overflow"] == expected
    assert by_name["model.layers.0.mlp.down_proj.weight"]["max_abs"] == pytest.approx(float(np.abs(values).max()))
    assert by_name["step"]["overflow"] == 0
    assert data["target_dtype"] == target
    total = data["summary"]["overflow"]
    assert result.exit_code == (1 if total else 0)
    assert data["gate"] == {"fail_on": ["exploded", "nonfinite", "outlier", "overflow", "zeroed"], "exit_code": result.exit_code, "passed": total == 0}


def test_fp16_overflow_fails_the_gate_and_is_reported(overflow_ckpt):
    path, values = overflow_ckpt
    result = run("scan", str(path), "--target-dtype", "fp16")
    assert result.exit_code == 1
    assert "Overflow risk when cast to fp16" in result.output
    # one verdict line, after the overflow table: what fails, overflow included, and one next
    verdict_lines = [line for line in result.output.splitlines() if line.startswith(("✗", "✓", "⚠"))]
    assert len(verdict_lines) == 1 and result.output.count("next:") == 1
    assert verdict_lines[0].startswith("✗ FAIL EXPLODED + OVERFLOW RISK (fp16) (POISONED): ")
    assert result.output.index("Overflow risk when cast to fp16") < result.output.index(verdict_lines[0])
    expected = torch_overflow(values, "fp16") + 1
    assert f"{expected} finite values in 2 tensors become Inf when cast to fp16 (largest finite fp16: 65504" in result.output
    assert "model.layers.1.mlp.down_proj.weight" in result.output  # the bf16 70000
    assert "NON-FINITE" not in result.output  # no NaN/Inf in the file itself
    quiet = run("scan", str(path), "--target-dtype", "fp16", "-q")
    # the planted 3.4e38 is also exploded (and so no outlier): a few bad tensors, so the line says (POISONED)
    assert quiet.output.startswith("FAIL ") and f"OVERFLOW RISK (fp16) (POISONED) {path}:" in quiet.output
    assert f"{expected} values in 2 tensors overflow fp16" in quiet.output
    assert "max |x| 3.4e+38" in quiet.output


@pytest.mark.parametrize("spelled", ["float16", "torch.float16", "FP16", "half"])
def test_target_dtype_as_torch_and_config_json_spell_it(overflow_ckpt, spelled):
    """config.json says "float16": --target-dtype float16 is the same check as fp16, not a usage error."""
    path, _ = overflow_ckpt
    assert run("scan", str(path), "--target-dtype", spelled, "-q").output == run(
        "scan", str(path), "--target-dtype", "fp16", "-q").output
    refused = run("scan", str(path), "--target-dtype", "fp32")
    assert refused.exit_code == 2 and "'fp32' is not one of fp16, bf16" in refused.output


def test_without_target_dtype_there_is_no_overflow_check(overflow_ckpt):
    path, _ = overflow_ckpt
    result = run("scan", str(path), "--json", "--fail-on", "nonfinite")  # its 3.4e38 weights are exploded too
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["summary"]["overflow"] == 0 and all(t["overflow"] == 0 for t in data["tensors"])


def test_fail_on_picks_what_fails(overflow_ckpt):
    path, _ = overflow_ckpt
    only_nonfinite = run("scan", str(path), "--target-dtype", "fp16", "--fail-on", "nonfinite", "-q")
    assert only_nonfinite.exit_code == 0 and only_nonfinite.output.startswith("PASS ")
    assert "OVERFLOW RISK (fp16)" in only_nonfinite.output.splitlines()[0]
    bad = DEMO_RUN / "checkpoint-300"
    assert run("scan", str(bad), "--fail-on", "exploded", "-q").exit_code == 1  # NaN fails under any gate
    assert run("scan", str(bad), "--fail-on", "overflow,nonfinite", "-q").exit_code == 2  # (overflow: no target)
    wrong = run("scan", str(bad), "--fail-on", "nan")
    assert wrong.exit_code == 2 and "--fail-on" in wrong.output


def test_unreadable_fails_whatever_fail_on_says(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": RawTensor("F32", (4,), np.ones(4, np.float32).tobytes())})
    path.write_bytes(path.read_bytes()[:-2])
    for fail_on in ("nonfinite", "overflow"):
        result = run("scan", str(path), "--fail-on", fail_on, "--target-dtype", "fp16", "-q")
        assert result.exit_code == 3 and "UNREADABLE" in result.output


def test_quiet_is_one_line_with_counts_and_the_worst_range():
    clean = run("scan", str(DEMO_RUN / "checkpoint-200"), "--quiet")
    assert clean.exit_code == 0
    assert clean.output == f"PASS CLEAN {DEMO_RUN / 'checkpoint-200'}: 195 tensors healthy\n"
    bad = run("scan", str(DEMO_RUN / "checkpoint-300"), "--quiet")
    assert bad.exit_code == 1 and bad.output.count("\n") == 1
    assert "18 of 195 tensors hold NaN/Inf (144 NaN, 53 +Inf, 64 -Inf); worst transformer.h.21–23" in bad.output


def test_nonfinite_planted_with_target_dtype_counts_only_finite_values_as_overflow(tmp_path):
    bits = np.array([SPECIALS["F32"]["posinf"], SPECIALS["F32"]["nan"], np.float32(1e6).view(np.uint32)], np.uint32)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": RawTensor("F32", (3,), bits.tobytes())})
    data = json.loads(run("scan", str(path), "--target-dtype", "fp16", "--json").output)
    t = data["tensors"][0]
    assert (t["posinf"], t["nan"], t["overflow"], t["max_abs"]) == (1, 1, 1, 1e6)


def test_pre_commit_hook_entry_scans_each_file_and_fails_with_the_worst_code(tmp_path, overflow_ckpt):
    import re
    import shlex
    import shutil as sh
    import subprocess

    yaml = pytest.importorskip("yaml")
    from .conftest import ROOT

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    command = shlex.split(hook["entry"])  # what pre-commit runs, followed by args, then file names
    if sh.which(command[0]) is None:
        pytest.skip(f"needs {command[0]} on PATH")
    big, _ = overflow_ckpt
    clean = DEMO_RUN / "checkpoint-200" / "model-00001-of-00002.safetensors"
    bad = DEMO_RUN / "checkpoint-300" / "model-00002-of-00002.safetensors"
    assert re.search(hook["files"], bad.name) and re.search(hook["exclude"], "ckpt/training_args.bin")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's nandoctor, as the hook's venv installs it

    def hook_run(*args):
        return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=tmp_path, env=env)

    assert hook_run("--fail-on", "nonfinite", clean, big).returncode == 0  # finite (its 3.4e38 weights are exploded)
    assert hook_run(clean, big).returncode == 1
    both = hook_run(clean, bad)
    assert both.returncode == 1 and both.stdout.count("\n") == 2 and "FAIL NON-FINITE" in both.stdout
    assert hook_run("--target-dtype", "fp16", clean, big).returncode == 1  # args from the config reach each scan
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(clean.read_bytes()[:100])
    assert hook_run(bad, truncated).returncode == 3


def test_pre_commit_hook_takes_an_option_value_that_is_a_file_as_the_option_s(tmp_path):
    """args: [--verify-hashes, --manifest, manifest.json]: manifest.json exists, and is still --manifest's value,
    never a file to scan (the hook used to scan it, leaving `scan --manifest` without its PATH: exit 2)."""
    import shlex
    import shutil as sh
    import subprocess

    yaml = pytest.importorskip("yaml")
    from .conftest import ROOT

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    command = shlex.split(hook["entry"])
    if sh.which(command[0]) is None:
        pytest.skip(f"needs {command[0]} on PATH")
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"w": RawTensor("F32", (2,), np.array([1.0, 2.0], np.float32).tobytes())})
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"w": RawTensor("F32", (2,), np.array([1.0, 3.0], np.float32).tobytes())})
    manifest = run("manifest", str(good))
    assert manifest.exit_code == 0
    (tmp_path / "manifest.json").write_text(manifest.output)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--verify-hashes", "--manifest", "manifest.json"]  # exactly as in .pre-commit-config.yaml

    def hook_run(*files):
        return subprocess.run(command + args + [*files], capture_output=True, text=True, cwd=tmp_path, env=env)

    passed = "PASS CLEAN good.safetensors: 1 tensor healthy; hashes: the weight file matches its recorded sha256"
    ok = hook_run("good.safetensors")
    assert (ok.returncode, ok.stdout) == (0, passed + "\n"), ok.stderr
    changed = hook_run("good.safetensors", "other.safetensors")  # other's bytes are not the manifest's
    assert changed.returncode == 3, changed.stderr
    lines = changed.stdout.splitlines()
    assert lines[0] == passed and len(lines) == 2
    assert lines[1].startswith("FAIL HASH MISMATCH") and " other.safetensors: " in lines[1]
    assert "Missing argument" not in changed.stderr
    # "--opt=value", flags, and "--" before a file that starts with a dash
    (tmp_path / "-dash.safetensors").write_bytes(good.read_bytes())
    mixed = subprocess.run(command + ["--fail-on=nonfinite", "-q", "--target-dtype", "fp16", "--", "-dash.safetensors"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert (mixed.returncode, mixed.stdout) == (0, "PASS CLEAN -dash.safetensors: 1 tensor healthy; fits fp16 (max |x| 2)\n")


def test_pre_commit_arguments_are_split_by_the_scan_command_s_own_options():
    from nandoctor.cli.precommit import split_arguments
    from nandoctor.cli.scan_cmd import scan

    assert split_arguments(["--verify-hashes", "--manifest", "manifest.json", "a.safetensors", "b.bin"], scan) == (
        ["--verify-hashes", "--manifest", "manifest.json"], ["a.safetensors", "b.bin"])
    assert split_arguments(["--fail-on=nonfinite", "-q", "--target-dtype", "fp16", "x.pt"], scan) == (
        ["--fail-on=nonfinite", "-q", "--target-dtype", "fp16"], ["x.pt"])
    assert split_arguments(["--only", "model.*", "--exclude", "opt.*", "--", "-odd.pt"], scan) == (
        ["--only", "model.*", "--exclude", "opt.*"], ["-odd.pt"])


def test_fail_on_overflow_alone_needs_a_target_dtype(tmp_path):
    """Overflow is counted only for a target dtype: without one, this gate would pass NaN weights."""
    import nandoctor

    bad = str(DEMO_RUN / "checkpoint-300")
    result = CliRunner().invoke(cli, ["scan", bad, "--fail-on", "overflow", "-q"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "--fail-on overflow" in said and "has nothing to check: no target dtype is given" in said
    with_target = CliRunner().invoke(cli, ["scan", bad, "--fail-on", "overflow", "--target-dtype", "fp16", "-q"])
    assert with_target.exit_code == 1 and with_target.output.startswith("FAIL NON-FINITE")  # NaN fails any gate
    with pytest.raises(ValueError, match="no target dtype is given"):
        nandoctor.assert_finite(bad, fail_on="overflow")


@pytest.mark.parametrize("option", [{"target_dtype": "int8"}, {"device": "tpu"}, {"device": "cuda"},
                                    {"fail_on": "nan"}])
def test_a_callback_with_a_bad_option_refuses_to_be_built(option):
    """Found at the first save, a bad option was only logged ("never crash training"): every save went unchecked
    while save_total_limit deleted the clean checkpoints. Both callbacks and the gate refuse it when built."""
    from nandoctor.errors import DeviceUnavailableError
    from nandoctor.integrations.gate import CheckpointGate
    from nandoctor.integrations.lightning import NanDoctorCallback as LightningCallback
    from nandoctor.integrations.transformers import NanDoctorCallback as TrainerCallback

    if option.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: cuda is a good device here")
    for build in (CheckpointGate, TrainerCallback, LightningCallback):
        with pytest.raises((ValueError, DeviceUnavailableError)):
            build(**option)


def test_pre_commit_scans_staged_files_whose_names_start_with_a_dash(tmp_path, monkeypatch):
    """pre-commit passes root-level file names bare, after the config's args: a staged NaN file named
    ``-nan.safetensors`` or ``--exclude=none.safetensors`` was taken for an option and the hook passed."""
    from safetensors.numpy import save_file

    from nandoctor.cli.precommit import main, split_arguments
    from nandoctor.cli.scan_cmd import scan

    monkeypatch.chdir(tmp_path)
    bad = np.array([np.nan, 1.0], np.float32)
    for name in ("-nan.safetensors", "--exclude=none.safetensors"):
        save_file({"w": bad}, name)
    save_file({"w": np.ones(2, np.float32)}, "good.safetensors")
    assert split_arguments(["--exclude=none.safetensors", "good.safetensors"], scan) == (
        [], ["--exclude=none.safetensors", "good.safetensors"])
    assert split_arguments(["--exclude=opt.*", "-nan.safetensors"], scan) == (["--exclude=opt.*"], ["-nan.safetensors"])
    assert main(["-nan.safetensors"]) == 1
    assert main(["--exclude=none.safetensors", "good.safetensors"]) == 1
    assert main(["--target-dtype", "fp16"]) == 2  # nothing to scan is never a pass


@pytest.mark.parametrize("args", [("scan", "{run}", "--json", "--fail-on", "bogus"),
                                  ("repair", "{run}/checkpoint-300", "--json")])
def test_a_usage_error_with_json_still_prints_json(args):
    """An adversarial round: `scan --json --fail-on bogus > r.json` (exit 2) left r.json empty, unparseable."""
    import json

    result = CliRunner().invoke(cli, [a.format(run=DEMO_RUN) for a in args])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    if args[0] == "repair":  # (repair's JSON is its plan's shape, errors and all: docs/repair.md)
        assert data["nandoctor_repair_plan"] == 1 and data["exit_code"] == 2 and "--from" in data["errors"][0]["message"]
        return
    assert data["summary"]["verdict"] == "USAGE ERROR" and data["summary"]["exit_code"] == 2 and data["errors"]
    assert data["target"] == ""  # (which argument is the path is what the options did not settle: a review's "bogus")
