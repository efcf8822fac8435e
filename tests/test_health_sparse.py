"""Scattered damage is poisoned, tensors broken throughout are diverged (verdict.BROKEN_TENSOR_SHARE).

A new-user trial planted 1-4 NaN/Inf at random positions in 20 of the 24 tensors (33M elements each) of a bf16
file: the scan called it diverged ("20 of 24 weight tensors are NaN/Inf") and repair refused it, though a donor
restores every one of those tensors. A tensor counts towards the divergence shares only when at least one in a
thousand of its elements is NaN/Inf or exploded: what real divergence leaves (docs/health.md).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

import nandoctor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

LAYERS, SHAPE = 24, (512, 1024)  # bf16, 1 MiB a tensor
NAN, POSINF = b"\xc0\x7f", b"\x80\x7f"  # bf16, little-endian


def _name(i: int) -> str:
    return f"model.layers.{i}.mlp.up_proj.weight"


def _clean(path: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    save_file({_name(i): (torch.randn(*SHAPE) * 0.02).to(torch.bfloat16) for i in range(LAYERS)}, str(path))


def _plant(path: Path, counts: dict[int, int]) -> dict[str, list[int]]:
    """Overwrite ``counts[i]`` random elements of layer i with NaN / +Inf (alternating), in the file's bytes."""
    rng = np.random.default_rng(1)
    planted = {}
    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        for i, k in counts.items():
            start, end = header[_name(i)]["data_offsets"]
            where = sorted(int(p) for p in rng.choice((end - start) // 2, size=k, replace=False))
            for j, p in enumerate(where):
                f.seek(8 + size + start + 2 * p)
                f.write(NAN if j % 2 == 0 else POSINF)
            planted[_name(i)] = where
    return planted


def _bits(t: torch.Tensor) -> bytes:
    return t.view(torch.int16).numpy().tobytes()


def test_a_few_nan_in_most_tensors_is_poisoned_and_repair_restores_the_donors_bytes(tmp_path):
    donor, target, out = tmp_path / "donor.safetensors", tmp_path / "target.safetensors", tmp_path / "fixed"
    _clean(donor)
    _clean(target)
    planted = _plant(target, {i: 1 + i % 4 for i in range(20)})  # 1-4 in each of 20 of 24 tensors: 50 in all

    report = nandoctor.scan(str(target), device="cpu")
    assert (report.health, report.nonfinite, report.exit_code) == ("poisoned", 50, 1)
    scanned = run_cli("scan", target, "--quiet")
    assert scanned.exit_code == 1
    assert scanned.output == (f"FAIL NON-FINITE (POISONED) {target}: 20 of 24 tensors hold NaN/Inf (30 NaN, 20 +Inf, "
                              "0 -Inf); worst model.layers.0–19\n")

    result = run_cli("repair", target, "--from", donor, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    proof = json.loads((out / "nandoctor-repair.json").read_text())
    assert sorted(r["tensor"] for r in proof["restored"]) == sorted(planted)
    repaired, before, healthy = (load_file(str(p)) for p in (out / target.name, target, donor))
    assert all(_bits(repaired[n]) == _bits(healthy[n]) for n in planted)  # bit-exact from the donor
    assert all(_bits(repaired[n]) == _bits(before[n]) for n in before if n not in planted)  # the rest untouched


def test_tensors_mostly_nan_are_diverged_and_repair_refuses(tmp_path):
    donor, target = tmp_path / "donor.safetensors", tmp_path / "target.safetensors"
    _clean(donor)
    _clean(target)
    _plant(target, dict.fromkeys(range(20), SHAPE[0] * SHAPE[1] * 6 // 10))  # 60 % of each of 20 tensors

    report = nandoctor.scan(str(target), device="cpu")
    assert report.health == "diverged"
    refused = run_cli("repair", target, "--from", donor, "--out", tmp_path / "fixed", "--no-progress")
    assert refused.exit_code == 3 and not (tmp_path / "fixed").exists()
    assert f"{target}: diverged: 20 of 24 weight tensors are NaN/Inf" in refused.output


@pytest.mark.parametrize(("bad", "health"), [(3, "poisoned"), (4, "diverged")])
def test_a_tensor_counts_as_broken_from_one_element_in_a_thousand(tmp_path, bad, health):
    """3 of 4 tensors of 4,000 elements hold ``bad`` NaN each: 3 (0.075 %) is scattered, 4 (0.1 %) broken."""
    path = tmp_path / "t.safetensors"
    save_file({f"w{i}": torch.full((4000,), 0.5) for i in range(4)}, str(path))
    tensors = load_file(str(path))
    for i in range(3):
        tensors[f"w{i}"][:bad] = float("nan")
    save_file(tensors, str(path))
    assert nandoctor.scan(str(path), device="cpu").health == health
