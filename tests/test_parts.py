"""A scan split into parts (--part I/N + merge, torchrun --distributed) gives the single-process report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import nandoctor
from nandoctor.engine.parts import PartSpec, merge_parts, scan_part
from tests.conftest import run_cli, same_report
from tests.dcp_writer import write_two_rank

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A single-process DCP save: 3 tensors, NaN at known places."""
    import torch.distributed.checkpoint as dcp

    folder = tmp_path_factory.mktemp("dcp")
    a, b, c = torch.randn(64, 32), torch.randn(128, dtype=torch.bfloat16), torch.randn(16, 16)
    a[10, 3] = float("nan")
    c[15, 15] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"m": {"a": a, "b": b, "c": c}}, checkpoint_id=str(folder))
    return folder


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_parts_merge_to_the_single_process_report(checkpoint: Path, count: int) -> None:
    parts = [(f"part-{i}", json.loads(json.dumps(scan_part(checkpoint, PartSpec(i, count))))) for i in range(count)]
    assert sum(p["regions"] for _, p in parts) == 3  # every region in exactly one part
    same_report(merge_parts(parts), nandoctor.scan(checkpoint))


def test_cli_parts_and_merge(checkpoint: Path, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        result = run_cli("scan", str(checkpoint), "--part", f"{i}/2", "--json")
        assert result.exit_code == 0, result.output
        files.append(tmp_path / f"part-{i}.json")
        files[-1].write_text(result.output)
    merged = run_cli("merge", *map(str, files), "--json")
    single = run_cli("scan", str(checkpoint), "--json", "--no-progress")
    assert merged.exit_code == single.exit_code == 1
    m, s = json.loads(merged.output), json.loads(single.output)
    assert m["tensors"] == s["tensors"] and (m["summary"]["nan"], m["summary"]["posinf"]) == (1, 1)

    missing = run_cli("merge", str(files[0]))
    assert missing.exit_code == 3 and "part(s) 1/2 missing" in missing.output
    twice = run_cli("merge", str(files[0]), str(files[0]), str(files[1]))
    assert twice.exit_code == 3 and "are both part 0/2" in twice.output
    other = run_cli("scan", str(checkpoint), "--part", "1/3", "--json")
    (tmp_path / "other.json").write_text(other.output)
    foreign_n = run_cli("merge", str(files[0]), str(tmp_path / "other.json"))
    assert foreign_n.exit_code == 3 and "a part of 3 where" in foreign_n.output
    report = tmp_path / "report.json"
    report.write_text(single.output)
    not_part = run_cli("merge", str(files[0]), str(report))
    assert not_part.exit_code == 3 and "not a nandoctor part" in not_part.output


def test_merge_refuses_a_checkpoint_that_changed(checkpoint: Path, tmp_path: Path) -> None:
    parts = [(f"p{i}", scan_part(checkpoint, PartSpec(i, 2))) for i in range(2)]
    shard = checkpoint / "__0_0.distcp"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        with pytest.raises(nandoctor.errors.NandoctorError, match="__0_0.distcp changed since"):
            merge_parts(parts)
    finally:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_part_option_errors(checkpoint: Path) -> None:
    assert run_cli("scan", str(checkpoint), "--part", "2/2", "--json").exit_code == 2
    assert run_cli("scan", str(checkpoint), "--part", "0/2").exit_code == 2  # no --json


def _torchrun(folder: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nandoctor", "scan", str(folder), "--distributed", "--json", "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.integration
def test_torchrun_two_ranks_print_the_single_process_report(tmp_path: Path) -> None:
    write_two_rank(str(tmp_path), "TORCH_SAVE")
    done = _torchrun(tmp_path)
    single = run_cli("scan", str(tmp_path), "--json", "--no-progress")
    assert done.returncode == 1  # torchrun's own mapping: any rank's non-zero exit is 1 (rank 0 said 1 here)
    merged = json.loads(done.stdout)  # printed once, by rank 0 only
    expected = json.loads(single.output)
    assert merged["tensors"] == expected["tensors"] and len(merged["tensors"]) == 12
    assert merged["gate"]["exit_code"] == 1 and (merged["summary"]["nan"], merged["summary"]["neginf"]) == (2, 1)


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["1", "1:hang"])
def test_torchrun_failing_or_hung_rank_is_exit_3_naming_it(checkpoint: Path, fault: str) -> None:
    done = _torchrun(checkpoint, "--rank-timeout", "5", env={"NANDOCTOR_FAULT_RANK": fault})
    data = json.loads(done.stdout)
    assert data["gate"]["exit_code"] == 3
    # what rank 0 read is reported (not "0 tensors read"), without a verdict on the whole
    read = [t["name"] for t in scan_part(checkpoint, PartSpec(0, 2))["tensors"]]
    assert [t["name"] for t in data["tensors"]] == read and len(read) == data["summary"]["tensors"] == 2
    (error,) = data["errors"]
    assert error["message"].startswith("rank 1 failed" if fault == "1" else "rank 1 sent no part within")
    assert "exitcode: 3" in done.stderr
