#!/usr/bin/env python3
"""Benchmark: `nandoctor repair` against `cp -r` of the same files plus one scan.

    python benchmarks/bench_repair.py                       # 3 GB bf16, 3 runs each, warm cache
    python benchmarks/bench_repair.py --size-gb 1 --runs 2  # quicker
    python benchmarks/bench_repair.py --keep                # keep bench-data/repair-* for another run

Generates (under bench-data/, git-ignored) a sharded bf16 checkpoint with a few
NaN/Inf in three tensors and a clean donor of the same shapes, reads both once
so the page cache holds them, then times, each in a fresh process and from the same
state (earlier writes synced; as root the page cache dropped and the inputs read
back in sequentially):

  cp        cp -r of the target folder (no fsync: cp does not sync)
  scan      `nandoctor scan` of the target, in-process, CPU kernel
  repair    `nandoctor repair --from donor --out new`, in-process: copy, patch, fsync, re-scan,
            sha256 of the patched shards (of every shard with --hash-all), proof, rename

The requirement: repair runs at ≥ 0.5 of the speed of (cp + scan), i.e.
t_repair ≤ 2 × (t_cp + t_scan), with peak memory (VmHWM) ≤ 512 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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
import json, resource, sys, time
from pathlib import Path
method, target, donor, out = sys.argv[1:5]
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = usage.ru_utime + usage.ru_stime
if method == "scan":
    from nandoctor.engine import scan
    start = time.perf_counter()
    report = scan(target, device="cpu")
    seconds = time.perf_counter() - start
    ok = report.nonfinite > 0
else:
    from nandoctor.restore import repair
    start = time.perf_counter()
    result = repair(target, [donor], out, hash_all=method == "repair-hash-all")
    seconds = time.perf_counter() - start
    ok = result.ok
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime - cpu0, "peak": hwm, "ok": ok}))
"""


def warm(folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def sync() -> None:
    subprocess.run(["sync"], check=True)


def reset(folders: list[Path]) -> None:
    """The same starting state before every timed command: earlier writes on disk, and (as root) the
    page cache dropped and refilled with the inputs by sequential reads. Without it, whichever
    command runs first after a quiet spell pays for reclaiming memory (measured: 2-4x its sys time)."""
    sync()
    with contextlib.suppress(OSError):  # not root: at least the writes are synced
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for folder in folders:
        warm(folder)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_cp(target: Path, out: Path, inputs: list[Path]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    reset(inputs)
    cpu = _children_cpu()
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(target), str(out)], check=True)
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    shutil.rmtree(out)
    return {"seconds": seconds, "cpu": cpu}


def run_child(method: str, target: Path, donor: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    reset([target, donor] if method.startswith("repair") else [target])
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
    parser.add_argument("--hash-all", action="store_true", help="time `repair --hash-all` (sha256 of every shard)")
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

    rows: dict[str, list[dict]] = {"cp": [], "scan": [], "repair": []}
    for i in range(args.runs):
        # Alternate the order, so neither side always inherits the other's page-cache churn.
        order = ["cp", "scan", "repair"] if i % 2 == 0 else ["repair", "scan", "cp"]
        for method in order:
            if method == "cp":
                rows["cp"].append(time_cp(target, out, [target]))
            else:
                child = "repair-hash-all" if method == "repair" and args.hash_all else method
                rows[method].append(run_child(child, target, donor, out))
        assert all(r["ok"] for r in rows["repair"]), "repair did not verify clean"
    med = {m: statistics.median(r["seconds"] for r in runs) for m, runs in rows.items()}
    cpu = {m: statistics.median(r["cpu"] for r in runs) for m, runs in rows.items()}
    peak = max(r["peak"] for r in rows["repair"])
    gb = size / 1e9
    print(f"checkpoint: {gb:.2f} GB in {len(list(target.glob('*.safetensors')))} shards; median of {args.runs} runs "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"  {'':10s} {'wall s':>7s} {'GB/s':>6s} {'CPU s':>7s}")
    for m in ("cp", "scan"):
        print(f"  {m:10s} {med[m]:7.2f} {gb / med[m]:6.2f} {cpu[m]:7.2f}")
    print(f"  {'cp + scan':10s} {med['cp'] + med['scan']:7.2f} {'':6s} {cpu['cp'] + cpu['scan']:7.2f}")
    print(f"  {'repair' + (' --hash-all' if args.hash_all else ''):10s} {med['repair']:7.2f} {gb / med['repair']:6.2f} {cpu['repair']:7.2f}   peak RSS {peak / 2**20:.0f} MiB")
    print(f"  speed vs cp + scan: {(med['cp'] + med['scan']) / med['repair']:.2f} wall "
          f"(requirement ≥ 0.5); CPU time ratio {(cpu['cp'] + cpu['scan']) / cpu['repair']:.2f}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
