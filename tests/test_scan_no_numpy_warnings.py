"""No numpy warning reaches the user from a scan: a signalling NaN made by a bit flip, quiet NaNs and Infs in
every float dtype, small tensors (scanned as columns) and large ones (jobs), console, --json and the API
(the tester's `census.py:441: RuntimeWarning: invalid value encountered in cast`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import nandoctor
from fixtures.builders import ITEMSIZE, SPECIALS, RawTensor, finite_bits, plant, write_safetensors
from tests.conftest import ROOT

FLOATS = [d for d in SPECIALS if d in ITEMSIZE]  # F64 F32 F16 BF16 and the fp8 formats
KINDS = ("snan", "nan", "negnan", "posinf", "neginf")


def planted_file(path: Path) -> dict[str, dict[str, int]]:
    """Per float dtype and special value, a small tensor (under 64 KiB: the column path) and a large one (the job
    path) holding that value alone (a signalling NaN beside no quiet one: a bit flip's) and the largest finite
    value; the expected counts."""
    rng = np.random.default_rng(3)
    tensors, expected = {}, {}
    # the small tensors of a dtype adjacent (a run, read at once), then the large ones
    for size, n in (("small", 64), ("large", (1 << 16) + 64)):
        for dtype in FLOATS:
            for kind in KINDS:
                if SPECIALS[dtype][kind] is None:
                    continue
                bits = finite_bits(dtype, n, rng)
                counts = plant(bits, {kind: [1, n - 2]}, dtype)
                bits[40] = SPECIALS[dtype]["max"]
                name = f"{dtype.lower()}.{kind}.{size}"
                tensors[name] = RawTensor(dtype, (n,), bits.tobytes())
                expected[name] = counts
    c64 = finite_bits("F32", 2 * 64, rng)  # a complex tensor: a signalling NaN in a real part, +Inf in an imaginary
    c64[[4, 9]] = [SPECIALS["F32"]["snan"], SPECIALS["F32"]["posinf"]]
    tensors["c64.small"] = RawTensor("C64", (64,), c64.tobytes())
    expected["c64.small"] = {"nan": 1, "posinf": 1, "neginf": 0}
    write_safetensors(path, tensors)
    return expected


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    path = tmp_path_factory.mktemp("specials") / "model.safetensors"
    return path, planted_file(path)


@pytest.mark.parametrize("target_dtype", [None, "fp16", "fp8_e4m3"])
@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_the_api_scan_raises_no_warning_and_counts_every_special_value(planted, tmp_path, fmt, target_dtype):
    path, expected = planted
    if fmt == "torch":  # the same tensors in a torch file (torch's own reader of the safetensors file)
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(path), tmp_path / "model.pt")
        path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning from the scan is an exception (worker threads included)
        report = nandoctor.scan(path, device="cpu", target_dtype=target_dtype)
        nandoctor.to_json(report)
    counts = {t.ref.name: {"nan": t.nan, "posinf": t.posinf, "neginf": t.neginf} for t in report.tensors}
    assert counts == expected
    assert report.exit_code == 1


@pytest.mark.parametrize("flags", [[], ["--json"], ["-q"]], ids=["console", "json", "quiet"])
def test_the_cli_prints_no_warning(planted, flags):
    path, expected = planted
    for strict in ([], ["-W", "error"]):
        done = subprocess.run([sys.executable, *strict, "-m", "nandoctor", "scan", str(path), "--no-progress",
                               "--device", "cpu", *flags], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert done.returncode == 1, done.stderr
        assert done.stderr == "", done.stderr  # no RuntimeWarning line, no internal error
        if flags == ["--json"]:
            data = json.loads(done.stdout)
            assert {t["name"]: {k: t[k] for k in ("nan", "posinf", "neginf")} for t in data["tensors"]} == expected
