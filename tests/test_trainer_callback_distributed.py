"""NanDoctorCallback under torch.distributed: two real gloo ranks on this machine.

Only process zero writes a checkpoint, and the other ranks reach ``on_save`` while
it may still be writing. Every rank must take process zero's verdict, or one rank
stops alone and the others hang at their next collective.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_gloo

pytest.importorskip("transformers")
require_gloo()

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_callback_worker.py"
TRAINER_WORKER = ROOT / "tests" / "ddp_trainer_worker.py"
RUN = ROOT / "fixtures" / "demo-run"


def run_ranks(tmp_path: Path, source: str) -> list[dict]:
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(tmp_path / "rendezvous"), str(out), source, str(tmp_path / f"r{rank}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    return [json.loads((tmp_path / f"r{rank}.json").read_text()) for rank in (0, 1)]


def test_every_rank_stops_on_process_zeros_bad_checkpoint(tmp_path):
    zero, one = run_ranks(tmp_path, str(RUN / "checkpoint-300"))
    assert zero["stop"] is True and one["stop"] is True
    assert zero["scanned"] == [6] and one["scanned"] == []  # rank 1 never read the half-written folder
    assert zero["first_bad"] == one["first_bad"] == str(tmp_path / "out" / "checkpoint-6")
    assert json.loads((tmp_path / "out" / "checkpoint-6" / "nandoctor.json").read_text())["gate"]["passed"] is False


def test_every_rank_goes_on_after_a_clean_checkpoint(tmp_path):
    zero, one = run_ranks(tmp_path, str(RUN / "checkpoint-100"))
    assert zero["stop"] is False and one["stop"] is False
    assert zero["last_clean"] == one["last_clean"] == str(tmp_path / "out" / "checkpoint-6")


@pytest.mark.parametrize("source", ["empty", "none"])
def test_a_failed_scan_on_process_zero_neither_stops_nor_hangs_the_others(tmp_path, source):
    zero, one = run_ranks(tmp_path, source)
    assert zero["stop"] is False and one["stop"] is False
    assert zero["last_clean"] is None and one["last_clean"] is None


@pytest.mark.integration
def test_per_rank_dcp_files_are_checked_by_the_rank_that_wrote_them(tmp_path):
    zero, one = run_ranks(tmp_path, "dcp-nan1")
    assert zero["stop"] is True and one["stop"] is True  # rank 0's own half is clean: the verdict is agreed
    assert zero["first_bad"] == one["first_bad"] == str(tmp_path / "out" / "checkpoint-6")
    assert zero["read"] == {"6": ["__0_0.distcp"]} and one["read"] == {"6": ["__1_0.distcp"]}
    gate = json.loads((tmp_path / "out" / "checkpoint-6" / "nandoctor.json").read_text())["gate"]
    assert (gate["passed"], gate["exit_code"], gate["rank_exit_codes"]) == (False, 1, [0, 1])


@pytest.mark.integration
def test_per_rank_dcp_files_clean_on_every_rank(tmp_path):
    zero, one = run_ranks(tmp_path, "dcp-clean")
    assert zero["stop"] is False and one["stop"] is False
    assert zero["last_clean"] == one["last_clean"] == str(tmp_path / "out" / "checkpoint-6")
    assert zero["read"] == {"6": ["__0_0.distcp"]} and one["read"] == {"6": ["__1_0.distcp"]}


@pytest.mark.integration
def test_per_rank_dcp_files_are_checked_for_overflow_with_target_dtype(tmp_path):
    """7e4 in rank 1's half of an fp32 bias: each rank counts the overflow of its own files (no process-zero scan)."""
    zero, one = run_ranks(tmp_path, "dcp-big1@fp16")
    assert zero["stop"] is True and one["stop"] is True
    assert zero["read"] == {"6": ["__0_0.distcp"]} and one["read"] == {"6": ["__1_0.distcp"]}
    assert zero["overflow"] == {"6": {}} and one["overflow"] == {"6": {"model.bias": 1}}
    data = json.loads((tmp_path / "out" / "checkpoint-6" / "nandoctor.json").read_text())
    assert (data["gate"]["passed"], data["gate"]["exit_code"], data["gate"]["rank_exit_codes"]) == (False, 1, [0, 1])
    assert data["target_dtype"] == "fp16"


@pytest.mark.integration
def test_per_rank_dcp_files_above_fp16_pass_without_target_dtype(tmp_path):
    zero, one = run_ranks(tmp_path, "dcp-big1")
    assert zero["stop"] is False and one["stop"] is False
    assert zero["last_clean"] == one["last_clean"] == str(tmp_path / "out" / "checkpoint-6")
    assert zero["overflow"] == {"6": {}} and one["overflow"] == {"6": {}}


def test_a_real_ddp_trainer_stops_on_every_rank_at_the_bad_checkpoint(tmp_path):
    """Before process zero's verdict was shared, rank 1 found no checkpoint-6 yet, trained on
    alone and died at its next all-reduce (with NCCL it would have hung)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TRAINER_WORKER), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [6, 6] and [r["stopped_at"] for r in ranks] == [6, 6]
    assert ranks[0]["scanned"] == [2, 4, 6] and ranks[1]["scanned"] == []
    assert json.loads((tmp_path / "out" / "checkpoint-6" / "nandoctor.json").read_text())["gate"]["passed"] is False
