"""Poisoned or diverged, on real ``transformers.Trainer`` runs (tests/realruns.py): a handful of bad elements
is poisoned and repairable, whatever their size; weights whose bulk grew are diverged.

A new-user trial flipped one exponent bit of one element of a run's newest checkpoint (6.4e36): the run
scan called it diverged ("its largest weight is 6.36e+36x that of the run's first healthy checkpoint") and
repair refused it, though the trainer log was finite. The growth rule now reads each tensor's bulk.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.realruns import diverging_trainer_run  # noqa: E402

pytestmark = pytest.mark.integration

TARGET = "model.layers.1.self_attn.o_proj.weight"  # 32x32, frozen in the run: the same in every checkpoint
STEPS = 4


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def healthy_run(request, tmp_path_factory):
    """A healthy run (lr 1, stable): checkpoint-1 … checkpoint-4, each a real Trainer save."""
    out = tmp_path_factory.mktemp("run") / "out"
    facts = diverging_trainer_run(out, steps=STEPS, learning_rate=1.0, warmup_steps=0, dtype=request.param)
    assert facts["first_nonfinite"] is None and facts["last_healthy"] == STEPS  # the ground truth: healthy
    run = nandoctor.scan_run(str(out), device="cpu")
    assert [c.status for c in run.checkpoints] == ["clean"] * STEPS
    return out


@pytest.fixture
def run(healthy_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(healthy_run, copy)
    return copy


def _weights(run: Path, step: int = STEPS) -> Path:
    return run / f"checkpoint-{step}" / "model.safetensors"


def _flip_bit(path: Path, name: str, index: int, bit: int) -> float:
    """Flip one bit of one element in the file's bytes (a true bit flip); the element's new value."""
    with open(path, "r+b") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        entry = json.loads(f.read(header_len))[name]
        size = {"F32": 4, "BF16": 2}[entry["dtype"]]
        offset = 8 + header_len + entry["data_offsets"][0] + index * size
        f.seek(offset)
        element = bytearray(f.read(size))
        element[bit // 8] ^= 1 << (bit % 8)
        f.seek(offset)
        f.write(element)
    with safe_open(str(path), "pt") as f:
        return float(f.get_tensor(name).reshape(-1)[index].float())


def _rewrite(path: Path, change) -> None:
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _status(run: Path, step: int = STEPS) -> str:
    return {c.step: c for c in nandoctor.scan_run(str(run), device="cpu").checkpoints}[step].status


def _top_exponent_bit(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return 30 if f.get_slice(TARGET).get_dtype() == "F32" else 14


def test_one_flipped_exponent_bit_is_poisoned_and_repair_restores_the_donors_bytes(run, tmp_path):
    weights = _weights(run)
    value = _flip_bit(weights, TARGET, 100, _top_exponent_bit(weights))
    assert abs(value) > 1e30  # x2^128 of a ~0.02 weight: the trial's 6.4e36
    scanned = nandoctor.scan_run(str(run), device="cpu")
    newest = scanned.checkpoints[-1]
    assert newest.status == "poisoned" and newest.why == ""
    assert newest.baseline_growth is not None and newest.baseline_growth < 2  # the bulk did not move
    assert scanned.last_healthy.step == STEPS - 1 and scanned.first_bad is newest
    alone = nandoctor.scan(str(run / f"checkpoint-{STEPS}"), device="cpu")
    assert alone.health == "poisoned" and alone.extra["run"]["growth"]["factor"] < 2
    assert [t.name for t in alone.tensors if t.findings] == [TARGET]
    assert set(alone.tensors[[t.name for t in alone.tensors].index(TARGET)].findings) == {"exploded"}  # (one value)

    quiet = run_cli("scan", str(run), "--quiet")
    assert quiet.exit_code == 1
    assert quiet.output == (
        f"FAIL EXPLODED (POISONED) {run / f'checkpoint-{STEPS}'}: 1 weight tensor exploded "
        f"(max |x| {abs(value):.3g}); worst model.layers.1 · "
        f"last healthy: checkpoint-{STEPS - 1} · first bad: checkpoint-{STEPS}\n"
    )
    out = tmp_path / "fixed"
    repaired = run_cli("repair", run / f"checkpoint-{STEPS}", "--from", "auto", "--out", out, "--no-progress")
    assert repaired.exit_code == 0, repaired.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert [(r["tensor"], r["donor_step"], r["findings"]) for r in proof["restored"]] == [
        (TARGET, STEPS - 1, ["exploded"])]
    fixed, donor = load_file(str(out / "model.safetensors")), load_file(str(_weights(run, STEPS - 1)))
    bits = torch.int32 if fixed[TARGET].dtype == torch.float32 else torch.int16
    assert torch.equal(fixed[TARGET].view(bits), donor[TARGET].view(bits))  # the donor's bytes, exactly
    source = load_file(str(weights))
    assert all(torch.equal(fixed[k].view(torch.uint8), source[k].view(torch.uint8)) for k in source if k != TARGET)
    assert nandoctor.scan(str(out), device="cpu").ok


@pytest.mark.parametrize("value", [3000.0, 200.0])
def test_one_large_element_is_poisoned_not_diverged(run, value):
    _rewrite(_weights(run), lambda t: t[TARGET].__setitem__((5, 5), value))
    assert _status(run) == "poisoned"
    alone = nandoctor.scan(str(run / f"checkpoint-{STEPS}"), device="cpu")
    assert alone.health == "poisoned"
    bad = [t for t in alone.tensors if t.findings]
    assert [(t.name, t.findings, t.outliers.count) for t in bad] == [(TARGET, ("outlier",), 1)]
    assert nandoctor.repair(str(run / f"checkpoint-{STEPS}"), "auto", str(run.parent / "fixed")).ok


def test_every_weight_x1000_is_diverged_and_repair_refuses(run, tmp_path):
    def scale(tensors):
        for name, t in tensors.items():
            if t.is_floating_point():
                tensors[name] = t * 1000

    _rewrite(_weights(run), scale)
    target = run / f"checkpoint-{STEPS}"
    scanned = nandoctor.scan_run(str(run), device="cpu")
    newest = scanned.checkpoints[-1]
    assert newest.status == "diverged" and newest.baseline_growth >= 256
    assert newest.why.startswith("the bulk of ") and newest.why.endswith(" since the run's first healthy checkpoint")
    assert scanned.last_healthy.step == STEPS - 1 and scanned.first_bad is newest
    assert scanned.exit_code() == 1  # no value is above a ceiling, but a diverged checkpoint fails the gate

    alone = nandoctor.scan(str(target), device="cpu")  # no finding, yet judged in its run: its bulk is large
    assert alone.nonfinite == 0 and all(t.findings == () for t in alone.tensors)
    assert alone.health == "diverged" and alone.verdict == "DIVERGED" and alone.exit_code == 1
    grown = alone.extra["run"]["growth"]
    assert grown["factor"] == newest.baseline_growth and grown["factor"] >= 256
    why = (f"the bulk of {grown['tensor']} grew {grown['factor']:.3g}x ({grown['was']:.3g} to {grown['scale']:.3g}) "
           "since the run's first healthy checkpoint")
    assert newest.why == why

    quiet = run_cli("scan", str(run), "--quiet")
    assert quiet.exit_code == 1
    assert quiet.output == (f"FAIL DIVERGED {target}: {why} · last healthy: checkpoint-{STEPS - 1} · "
                            f"first bad: checkpoint-{STEPS}\n")
    alone_quiet = run_cli("scan", str(target), "--quiet")
    assert alone_quiet.exit_code == 1 and alone_quiet.output == f"FAIL DIVERGED {target}: {why}\n"
    # the user who opts out of magnitude checks gets a pass, still told the case
    opted_out = run_cli("scan", str(target), "--quiet", "--fail-on", "nonfinite")
    assert opted_out.exit_code == 0 and opted_out.output == f"PASS DIVERGED (reported only) {target}: {why}\n"

    refused = run_cli("repair", target, "--from", "auto", "--out", tmp_path / "refused", "--no-progress")
    assert refused.exit_code == 3 and "diverged" in refused.output and not (tmp_path / "refused").exists()


def test_a_healthy_checkpoint_of_ordinary_weights_costs_no_extra_scan(healthy_run, monkeypatch):
    """A clean checkpoint whose weights' bulk stays far below 16 cannot have diverged by growth: its
    standalone scan is not judged against its run (no scan of the run's first checkpoint)."""
    from nandoctor.checkpoint import runcontext

    asked = []
    monkeypatch.setattr(runcontext, "run_facts", lambda *a: asked.append(a))
    report = nandoctor.scan(str(healthy_run / f"checkpoint-{STEPS}"), device="cpu")
    assert report.ok and report.health == "healthy" and "run" not in report.extra and asked == []


def test_the_same_weights_in_two_formats_have_not_grown(tmp_path):
    """A helper's trial: a BERT's final model.safetensors and its export_bin/pytorch_model.bin, value for value the same,
    showed a growth of x1.63 between them: a small tensor read whole carried a bulk scale (a power of two) in one
    format and its largest magnitude in the other. Below the high level a tensor's scale is its largest magnitude."""
    import torch
    from safetensors.torch import save_file

    from nandoctor import verdict

    torch.manual_seed(0)
    weights = {f"layer.{i}.bias": torch.randn(64) * 10.0 ** -(i + 1) for i in range(6)}
    weights["layer.0.weight"] = torch.randn(512, 512) * 0.02
    save_file(weights, str(tmp_path / "model.safetensors"))
    torch.save(weights, tmp_path / "pytorch_model.bin")
    a, b = (nandoctor.scan(tmp_path / name, device="cpu") for name in ("model.safetensors", "pytorch_model.bin"))
    grown = verdict.growth(b, verdict.tensor_scales(a))
    assert grown is not None and grown.factor == 1.0
    assert verdict.tensor_scales(a) == verdict.tensor_scales(b)
