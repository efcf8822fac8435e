"""benchmarks/gpu_check.py runs end to end, so that a session lent a GPU spends its minutes on the GPU.

Without a GPU the script's --simulate-on-cpu mode puts the torch kernel on CPU
tensors where CUDA would be (the CUDA backend's code path) and must reach the
same verdicts as on a GPU: every check identical, every planted NaN found.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from nandoctor.kernels.targets import TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--simulate-on-cpu", "--size-gb", "0.03",
         "--trials", "8", "--runs", "1", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_results.json").read_text())
    fixtures = 1 + len(list((ROOT / "fixtures" / "demo-run").glob("checkpoint-*")))
    assert result["simulated"] is True and result["failures"] == []
    health = 4 * 2 * 2  # four torch float dtypes, two sizes, file and live
    assert len(result["checks"]) == fixtures * (1 + len(TARGETS)) + 8 + health + 1 and all(result["checks"].values())
    assert result["checks"]["gguf F16 + Q8_0 scales"] is True
    assert sum(name.startswith("health live") for name in result["checks"]) == 8
    assert [row["what"].split(" (")[0] for row in result["speed"][:4]] == ["file scan clean"] * 2 + ["file scan nanall"] * 2
    assert len(result["speed"]) == 10 and all(row["gbps"] > 0 for row in result["speed"])
    assert "scan_state_dict" in result["speed"][-1]["what"] and "copy" in result["speed"][-2]["what"]
    assert "| file scan nanall (torch kernel on cpu) |" in (tmp_path / "out" / "gpu_results.md").read_text()
    assert not (tmp_path / "data").exists()  # the synthetic checkpoint is deleted afterwards
