"""A scan split into parts (--part I/N + merge, torchrun --distributed) gives the single-process report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
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
    # a gate reads one line (-q) or one JSON object (--json), as from scan: a trial's merge -q printed nothing
    quiet = run_cli("merge", str(files[0]), "-q")
    assert quiet.exit_code == 3 and quiet.stdout.startswith("FAIL ") and "part(s) 1/2 missing" in quiet.stdout
    as_json = run_cli("merge", str(files[0]), "--json")
    assert as_json.exit_code == 3 and json.loads(as_json.stdout)["summary"]["exit_code"] == 3
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


@pytest.mark.parametrize("damage", ["truncated shard", "trailing bytes"])
def test_every_part_of_a_checkpoint_with_something_unreadable_exits_3(checkpoint: Path, tmp_path: Path,
                                                                      damage: str) -> None:
    """What opening the checkpoint finds unreadable (a truncated .distcp; bytes after the last tensor of a
    safetensors file) exits every part 3 and names it, not only the merge: a job array gating on each part."""
    import shutil

    from safetensors.numpy import save_file

    if damage == "truncated shard":
        target = tmp_path / "dcp"
        shutil.copytree(checkpoint, target)
        shard = target / "__0_0.distcp"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        target = tmp_path / "model.safetensors"
        save_file({"a": np.ones((64, 64), np.float32), "b": np.ones(8, np.float32)}, target)
        with open(target, "ab") as fh:
            fh.write(b"\0" * 4096)
    for i in range(2):
        result = run_cli("scan", str(target), "--part", f"{i}/2", "--json")
        assert result.exit_code == 3, (i, result.output)
        data = json.loads(result.stdout)
        assert data["checkpoint_problems"] and "error: part" in result.stderr
        (tmp_path / f"p{i}.json").write_text(result.stdout)
    merged = run_cli("merge", str(tmp_path / "p0.json"), str(tmp_path / "p1.json"), "--json")
    assert merged.exit_code == 3 and json.loads(merged.stdout)["errors"]


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
    refused = run_cli("scan", str(checkpoint), "--part", "0/2", "--json", "--html", "x.html")
    assert refused.exit_code == 2 and "give --html/--markdown to merge" in refused.output


def test_merge_prints_markdown_and_writes_html_as_scan_does(checkpoint: Path, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"part-{i}.json")
        files[-1].write_text(run_cli("scan", str(checkpoint), "--part", f"{i}/2", "--json").output)
    merged = run_cli("merge", *map(str, files), "--markdown", "--html", str(tmp_path / "merged.html"))
    single = run_cli("scan", str(checkpoint), "--markdown", "--html", str(tmp_path / "single.html"), "--no-progress")
    assert merged.exit_code == single.exit_code == 1
    timing = re.compile(r"[\d.]+ (?:s|ms|GB/s|MB/s)\b")  # the only thing a merge may say differently
    assert timing.sub("T", merged.output) == timing.sub("T", single.output)
    assert "m.a" in merged.output and "m.c" in merged.output
    page = (tmp_path / "merged.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "m.a" in page and "m.c" in page
    assert run_cli("merge", *map(str, files), "--markdown", "--json").exit_code == 2


def _torchrun(folder: Path, *extra: str, env: dict | None = None, output: str = "--json") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nandoctor", "scan", str(folder), "--distributed", output, "--no-progress", *extra]
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
    # rank 0 prints Markdown and writes the HTML report as a single scan does
    page = tmp_path.parent / f"{tmp_path.name}.html"
    done = _torchrun(tmp_path, "--html", str(page), output="--markdown")
    single = run_cli("scan", str(tmp_path), "--markdown", "--no-progress")
    timing = re.compile(r"[\d.]+ (?:s|ms|GB/s|MB/s)\b")
    assert done.returncode == 1 and timing.sub("T", done.stdout) == timing.sub("T", single.output), done.stderr[-3000:]
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["1", "1:hang"])
def test_torchrun_failing_or_hung_rank_is_exit_3_naming_it(checkpoint: Path, fault: str) -> None:
    done = _torchrun(checkpoint, "--rank-timeout", "5", env={"NANDOCTOR_FAULT_RANK": fault})
    data = json.loads(done.stdout)
    assert data["gate"]["exit_code"] == 3
    # what rank 0 read is reported (not "0 tensors read"), without a verdict on the whole
    read = [t["name"] for t in scan_part(checkpoint, PartSpec(0, 2))["tensors"]]
    assert [t["name"] for t in data["tensors"]] == read == ["m.a"] and data["summary"]["tensors"] == 1
    assert data["summary"]["nan"] == 1  # m.a's NaN, found by rank 0
    (error,) = data["errors"]
    assert error["message"].startswith("rank 1 failed" if fault == "1" else "rank 1 sent no part within")
    assert "exitcode: 3" in done.stderr


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """Two runs of three saves, a DCP one (``step-N``) and a Trainer-style one (``checkpoint-N`` safetensors):
    1 healthy, 2 with every weight ×1000 (finite, below the exploded ceiling: diverged by growth alone, which
    only the run shows), 3 healthy again but for one NaN (poisoned)."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("runs")
    gen = torch.Generator().manual_seed(0)
    healthy = {f"layers.{i}.weight": torch.randn(256, 256, generator=gen) * 0.02 for i in range(8)}
    poisoned = {k: v.clone() for k, v in healthy.items()}
    poisoned["layers.5.weight"][7, 9] = float("nan")
    saves = [healthy, {k: v * 1000 for k, v in healthy.items()}, poisoned]
    for step, weights in enumerate(saves, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": weights}, checkpoint_id=str(root / "dcp" / f"step-{step}"))
        (root / "st" / f"checkpoint-{step}").mkdir(parents=True)
        save_file(weights, str(root / "st" / f"checkpoint-{step}" / "model.safetensors"))
    return root


def _same_scan(data: dict) -> dict:
    """A JSON report less what differs between two scans of the same bytes: timings, and how it was split."""
    summary = {k: v for k, v in data["summary"].items() if k not in ("seconds", "gb_per_s")}
    return {**{k: v for k, v in data.items() if k != "parts"}, "summary": summary}


# the single scan's health, verdict and run context of each save: what merge and --distributed must give too
# (step 2's weights x1000 = 2^9.97: its 256 KiB tensors are their own bulk sample, so the power of two is 1024)
JUDGED = {"2": ("diverged", "DIVERGED", 1024.0), "3": ("poisoned", "NON-FINITE", 1.0)}


def _judged_as(data: dict, step: str) -> None:
    health, verdict, grown = JUDGED[step]
    assert (data["summary"]["health"], data["summary"]["verdict"], data["gate"]["exit_code"]) == (health, verdict, 1)
    assert data["run"]["growth"]["factor"] == grown and data["run"]["auto"] is True


@pytest.mark.parametrize("name", ["dcp/step-2", "dcp/step-3", "st/checkpoint-2", "st/checkpoint-3"])
def test_merge_judges_a_checkpoint_within_its_run_as_a_single_scan(runs_root: Path, name: str, tmp_path: Path) -> None:
    target = runs_root / name
    files = []
    for i in range(2):
        part = run_cli("scan", target, "--part", f"{i}/2", "--json")
        assert part.exit_code == 0 and json.loads(part.output)["regions"] == 4, part.output
        files.append(tmp_path / f"part-{i}.json")
        files[-1].write_text(part.output)
    single, merged = run_cli("scan", target, "--json", "--no-progress"), run_cli("merge", *files, "--json")
    assert merged.exit_code == single.exit_code == 1
    expected = json.loads(single.output)
    _judged_as(expected, name[-1])
    assert _same_scan(json.loads(merged.output)) == _same_scan(expected)  # run, notes, gate, tensors, summary
    one_line = run_cli("scan", target, "-q").output
    assert run_cli("merge", *files, "-q").output == one_line and one_line.startswith(f"FAIL {JUDGED[name[-1]][1]} ")


@pytest.mark.integration
@pytest.mark.parametrize("step", ["2", "3"])
def test_torchrun_judges_a_checkpoint_within_its_run_as_a_single_scan(runs_root: Path, step: str) -> None:
    target = runs_root / "dcp" / f"step-{step}"
    done = _torchrun(target)
    expected = json.loads(run_cli("scan", target, "--json", "--no-progress").output)
    _judged_as(expected, step)
    assert done.returncode == 1  # torchrun's: some rank exited non-zero (each rank exited 1)
    assert _same_scan(json.loads(done.stdout)) == _same_scan(expected)


@pytest.mark.integration
def test_torchrun_on_a_run_folder_says_once_what_to_split(runs_root: Path) -> None:
    """A trial: under torchrun both ranks printed the FAIL line, and the hint spoke of --part."""
    done = _torchrun(runs_root / "dcp", output="--quiet")
    lines = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert done.returncode != 0 and len(lines) == 1 and "a run cannot be split" in lines[0], done.stdout + done.stderr
    hint = " ".join(done.stderr.split())
    assert f"nandoctor scan {runs_root / 'dcp' / 'step-3'} --distributed" in hint and "--part" not in hint


def test_run_json_carries_the_gate_and_target_dtype(runs_root: Path) -> None:
    result = run_cli("scan", runs_root / "st", "--json", "--target-dtype", "fp16", "--fail-on", "nonfinite,overflow")
    data = json.loads(result.output)
    assert result.exit_code == data["summary"]["exit_code"] == 1 and data["summary"]["decided_by"] == "checkpoint-3"
    assert data["gate"] == {"fail_on": ["nonfinite", "overflow"], "exit_code": 1, "passed": False}
    assert data["target_dtype"] == "fp16"


def test_merge_and_part_messages_name_what_to_do(runs_root: Path, tmp_path: Path) -> None:
    target = runs_root / "dcp" / "step-2"
    p0, p1 = tmp_path / "p0.json", tmp_path / "p1.json"
    p0.write_text(run_cli("scan", target, "--part", "0/2", "--json", "--target-dtype", "fp16").output)
    p1.write_text(run_cli("scan", target, "--part", "1/2", "--json", "--max-abs", "1e4").output)
    other = run_cli("merge", p0, p1)
    assert other.exit_code == 3
    assert f"{p1}: scanned with --max-abs 10000, where {p0} was scanned without --max-abs" in other.output
    missing = run_cli("merge", p0)
    assert missing.exit_code == 3
    assert f"run: nandoctor scan {target} --target-dtype fp16 --part 1/2 --json > part-1.json" in missing.output
    run_folder = run_cli("scan", runs_root / "dcp", "--part", "0/2", "--json")
    assert run_folder.exit_code == 3
    out = " ".join(run_folder.output.split())
    assert "a run cannot be split into parts, only one checkpoint" in out
    assert f"split its newest checkpoint: nandoctor scan {runs_root / 'dcp' / 'step-3'} --part I/N --json" in out


def test_parts_scanned_from_different_folders_merge_from_anywhere(checkpoint: Path, tmp_path: Path) -> None:
    """`st` from one folder and `../st` from another are one checkpoint: the parts record it absolutely, so merge
    joins them, run from a third folder."""
    here, there, elsewhere = tmp_path / "a", tmp_path / "a" / "b", tmp_path / "c"
    there.mkdir(parents=True)
    elsewhere.mkdir()
    relative = [os.path.relpath(checkpoint, here), os.path.relpath(checkpoint, there)]
    for i, (cwd, given) in enumerate(zip((here, there), relative)):
        done = subprocess.run([sys.executable, "-m", "nandoctor", "scan", given, "--part", f"{i}/2", "--json"],
                              cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        (tmp_path / f"p{i}.json").write_text(done.stdout)
    merged = subprocess.run([sys.executable, "-m", "nandoctor", "merge", str(tmp_path / "p0.json"),
                             str(tmp_path / "p1.json"), "--json"], cwd=elsewhere, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert merged.returncode == 1 and json.loads(merged.stdout)["summary"]["nan"] == 1, merged.stderr


def test_merge_refuses_parts_that_lost_tensors(checkpoint: Path, tmp_path: Path) -> None:
    """A part file cut short or edited (its tensors gone) must not make a smaller checkpoint look clean."""
    files, dropped = [], []
    for i in range(2):
        data = json.loads(run_cli("scan", str(checkpoint), "--part", f"{i}/2", "--json").stdout)
        if data["tensors"]:
            dropped.append(data["tensors"].pop()["name"])
        files.append(tmp_path / f"p{i}.json")
        files[-1].write_text(json.dumps(data))
    merged = run_cli("merge", *map(str, files))
    assert merged.exit_code == 3 and "a part file is incomplete or was edited" in merged.output
    assert f"no result for {len(dropped)} tensor(s) ({sorted(dropped)[0]!r}" in merged.output


def test_distributed_without_torch_says_what_to_do(checkpoint: Path, monkeypatch) -> None:
    """A fresh user's trial: `srun nandoctor scan … --distributed` in a scan-only install (no torch) was "internal
    error: ModuleNotFoundError … report it as a nandoctor bug". It says torch is needed, and the way without it."""
    monkeypatch.setitem(sys.modules, "torch.distributed", None)  # (an import of it raises ImportError, as without torch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    result = run_cli("scan", str(checkpoint), "--distributed", "--json")
    said = " ".join(result.output.split())
    assert result.exit_code == 3 and "--distributed needs torch" in said and "internal error" not in said, said
    assert "--part I/N --json" in said
