#!/usr/bin/env python3
"""Benchmark: `nandoctor repair` against `cp -r` of the same files plus one scan.

    python benchmarks/bench_repair.py                       # 3 GB bf16, 3 runs each, warm cache
    python benchmarks/bench_repair.py --size-gb 1 --runs 2  # quicker
    python benchmarks/bench_repair.py --keep                # keep bench-data/repair-* for another run

Generates (under bench-data/, git-ignored) a sharded bf16 checkpoint with a few
NaN/Inf in three tensors and a clean donor of the same shapes, reads both once
so the page cache holds them, then times, each in a fresh process and after a
`sync` so earlier writes do not overlap:

  cp        cp -r of the target folder (no fsync: cp does not sync)
  scan      `nandoctor scan` of the target, in-process, CPU kernel
  repair    `nandoctor repair --from donor --out new`, in-process: copy, patch, fsync, re-scan,
            sha256 of every shard, proof, rename

The requirement: repair runs at ≥ 0.5 of the speed of (cp + scan), i.e.
t_repair ≤ 2 × (t_cp + t_scan), with peak memory (VmHWM) ≤ 512 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scan import few_plant, llama_shapes, no_plant, write_checkpoint  # noqa: E402

DATA = ROOT / "bench-data"

CHILD = """
import json, sys, time
from pathlib import Path
method, target, donor, out = sys.argv[1:5]
if method == "scan":
    from nandoctor.scan import scan
    start = time.perf_counter()
    report = scan(target, device="cpu")
    seconds = time.perf_counter() - start
    ok = report.nonfinite > 0
else:
    from nandoctor.repair import repair
    start = time.perf_counter()
    result = repair(target, [donor], out)
    seconds = time.perf_counter() - start
    ok = result.ok
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "peak": hwm, "ok": ok}))
"""


def warm(folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def sync() -> None:
    subprocess.run(["sync"], check=True)


def time_cp(target: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    sync()
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(target), str(out)], check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def run_child(method: str, target: Path, donor: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    sync()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(target), str(donor), str(out)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=3.0)
    parser.add_argument("--shard-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    base = DATA / f"repair-{args.size_gb:g}gb"
    target, donor, out = base / "checkpoint-300", base / "checkpoint-200", base / "checkpoint-300-repaired"
    if not (target.is_dir() and donor.is_dir()):
        shutil.rmtree(base, ignore_errors=True)
        shapes = llama_shapes(int(args.size_gb * 1e9))
        print(f"generating {args.size_gb:g} GB target and donor in {base} …", flush=True)
        write_checkpoint(target, shapes, int(args.shard_gb * 1e9), few_plant)
        write_checkpoint(donor, shapes, int(args.shard_gb * 1e9), no_plant)
        (target / "config.json").write_text("{}\n")
    size = sum(f.stat().st_size for f in target.iterdir())
    warm(target)
    warm(donor)

    cps, scans, repairs, peaks = [], [], [], []
    for _ in range(args.runs):
        cps.append(time_cp(target, out))
        s = run_child("scan", target, donor, out)
        scans.append(s["seconds"])
        r = run_child("repair", target, donor, out)
        assert r["ok"], "repair did not verify clean"
        repairs.append(r["seconds"])
        peaks.append(r["peak"])
    cp, scan, rep = statistics.median(cps), statistics.median(scans), statistics.median(repairs)
    gb = size / 1e9
    print(f"checkpoint: {gb:.2f} GB in {len(list(target.glob('*.safetensors')))} shards; median of {args.runs} runs")
    print(f"  cp -r        {cp:6.2f} s  ({gb / cp:5.2f} GB/s)")
    print(f"  scan         {scan:6.2f} s  ({gb / scan:5.2f} GB/s)")
    print(f"  cp + scan    {cp + scan:6.2f} s")
    print(f"  repair       {rep:6.2f} s  ({gb / rep:5.2f} GB/s)   peak RSS {max(peaks) / 2**20:.0f} MiB")
    print(f"  speed vs cp + scan: {(cp + scan) / rep:.2f} (requirement ≥ 0.5)")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
