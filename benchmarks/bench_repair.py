#!/usr/bin/env python3
"""Benchmark: `nandoctor repair` against `cp -r` of the same files plus one scan.

    python benchmarks/bench_repair.py                       # 3 GB bf16, 3 runs each, warm cache
    python benchmarks/bench_repair.py --size-gb 1 --runs 2  # quicker
    python benchmarks/bench_repair.py --keep                # keep bench-data/repair-* for another run
    python benchmarks/bench_repair.py --hash-all --both     # plain and --hash-all in the same run
    python benchmarks/bench_repair.py --both --baseline /tmp/old-checkout   # the same, and an older nandoctor

Generates (under bench-data/, git-ignored) a sharded bf16 checkpoint with a few
NaN/Inf in three tensors and a clean donor of the same shapes, reads both once
so the page cache holds them, then times, each in a fresh process and from the same
state (earlier writes synced; as root the page cache dropped and the inputs read
back in sequentially):

  cp        cp -r of the target folder (no fsync: cp does not sync)
  scan      `nandoctor scan` of the target, in-process, CPU kernel
  repair    `nandoctor repair --from donor --out new`, in-process: copy, patch, fsync, re-scan,
            sha256 of the patched shards (of every shard with --hash-all), proof, rename

Each repair also reports where its time went (the writer's phases: plan = the
scan of the target and the choice of donors; write = copy, patch and hashing while
copying; verify = the re-scan of the output and the proof's comparisons; then the
hashes still running, the proof, fsync and rename). ``--baseline DIR`` times the
nandoctor checked out in DIR the same way, interleaved, so before/after share the
machine's load.

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
marks = {}
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
    on_phase = lambda name: marks.setdefault(name, time.perf_counter() - start)
    import nandoctor.restore.writer as writer
    if hasattr(writer, "_diffs"):  # the whole-checkpoint diffs of the proof (before item 4 of issue 18)
        whole = writer._diffs
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return whole(*a, **k)
            finally:
                marks["diffs_s"] = time.perf_counter() - t
        writer._diffs = timed
    result = repair(target, [donor], out, hash_all=method == "repair-hash-all", on_phase=on_phase)
    seconds = time.perf_counter() - start
    ok = result.ok
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime - cpu0, "peak": hwm, "ok": ok,
                  "marks": marks}))
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


def run_child(method: str, target: Path, donor: Path, out: Path, code: Path = ROOT) -> dict:
    """One timed command in a fresh process, importing nandoctor from ``code`` (``python -c`` puts the
    working directory first on sys.path)."""
    shutil.rmtree(out, ignore_errors=True)
    reset([target, donor] if method.startswith("repair") else [target])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(target), str(donor), str(out)],
        cwd=code, capture_output=True, text=True, check=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


PHASES = (("plan", "temp"), ("write", "copied"), ("verify", "verified"), ("hashes", "hashed"),
          ("proof+sync", "synced"), ("rename", "renamed"))


def breakdown(runs: list[dict]) -> str:
    """Median seconds between the writer's phases (see the module docstring)."""
    parts, before = [], None
    for label, mark in PHASES:
        spans = [r["marks"][mark] - (r["marks"][before] if before else 0.0) for r in runs
                 if mark in r.get("marks", {}) and (before is None or before in r["marks"])]
        if spans:
            parts.append(f"{label} {statistics.median(spans):.2f}")
        before = mark
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=3.0)
    parser.add_argument("--shard-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--hash-all", action="store_true", help="time `repair --hash-all` (sha256 of every shard)")
    parser.add_argument("--both", action="store_true", help="time the plain repair and --hash-all")
    parser.add_argument("--baseline", type=Path, help="also time the nandoctor checked out in this folder")
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

    modes = ["repair", "repair-hash-all"] if args.both else ["repair-hash-all" if args.hash_all else "repair"]
    codes = {"": ROOT, **({" (baseline)": args.baseline.resolve()} if args.baseline else {})}
    variants = [(mode, suffix) for mode in modes for suffix in codes]
    rows: dict[str, list[dict]] = {"cp": [], "scan": [], **{m + s: [] for m, s in variants}}
    for i in range(args.runs):
        # Alternate the order, so neither side always inherits the other's page-cache churn.
        order = ["cp", "scan", *variants]
        for method in order if i % 2 == 0 else order[::-1]:
            if method == "cp":
                rows["cp"].append(time_cp(target, out, [target]))
            elif method == "scan":
                rows["scan"].append(run_child("scan", target, donor, out))
            else:
                mode, suffix = method
                rows[mode + suffix].append(run_child(mode, target, donor, out, codes[suffix]))
        assert all(r["ok"] for m, s in variants for r in rows[m + s]), "repair did not verify clean"
    med = {m: statistics.median(r["seconds"] for r in runs) for m, runs in rows.items()}
    cpu = {m: statistics.median(r["cpu"] for r in runs) for m, runs in rows.items()}
    gb = size / 1e9
    yard, yard_cpu = med["cp"] + med["scan"], cpu["cp"] + cpu["scan"]
    print(f"checkpoint: {gb:.2f} GB in {len(list(target.glob('*.safetensors')))} shards; median of {args.runs} runs "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"  {'':28s} {'wall s':>7s} {'GB/s':>6s} {'CPU s':>7s}")
    for m in ("cp", "scan"):
        print(f"  {m:28s} {med[m]:7.2f} {gb / med[m]:6.2f} {cpu[m]:7.2f}")
    print(f"  {'cp + scan (yardstick)':28s} {yard:7.2f} {'':6s} {yard_cpu:7.2f}")
    for mode, suffix in variants:
        key = mode + suffix
        label = ("repair --hash-all" if mode == "repair-hash-all" else "repair") + suffix
        peak = max(r["peak"] for r in rows[key])
        print(f"  {label:28s} {med[key]:7.2f} {gb / med[key]:6.2f} {cpu[key]:7.2f}   "
              f"{yard / med[key]:.2f} of the yardstick (CPU {yard_cpu / cpu[key]:.2f}), peak RSS {peak / 2**20:.0f} MiB")
        diffs = [r["marks"]["diffs_s"] for r in rows[key] if "diffs_s" in r.get("marks", {})]
        extra = f" (of which the proof's whole-checkpoint diffs {statistics.median(diffs):.2f})" if diffs else ""
        print(f"  {'':28s} {breakdown(rows[key])}{extra}")
    print("  requirement: repair ≥ 0.5 of the yardstick's speed; --hash-all ≤ repair + sha256 of the written bytes")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
