#!/usr/bin/env python3
"""Benchmark: checkpoints of many small tensors, scanned end to end as the CLI does it.

    python benchmarks/bench_many.py                 # 100k and 1M tensors, median of 3 runs each
    python benchmarks/bench_many.py --runs 5 --only 100k
    python benchmarks/bench_many.py --keep          # keep bench-data/many/ for another run

Writes safetensors files of one-element F32 tensors with short layer-like names
(``layers.N.wK``, eight per layer; the million-tensor header is ~80 MB, under
the format's 100 MB limit) under bench-data/many/ (git-ignored), then runs
``python -m nandoctor scan FILE --json > /dev/null`` (and, for 100k tensors, the
rich report and a NaN in every 1,000th tensor) in fresh processes and reports the
median wall time, CPU time (user + sys) and the peak resident size (the child's
VmHWM). Everything per tensor is in it: the header, refs and roles, the
plan, the small-tensor batches, results, the verdict, layers and the output.

Targets (issue 18, item 3): 100k tensors ≤ 1.5 s and ≤ 256 MB with ``--json``;
1M tensors ≤ 15 s and ≤ 1 GB. The machine is shared: compare runs made together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data" / "many"  # only this benchmark's own folder is ever deleted
TARGETS = {"100k": (1.5, 256), "1M": (15.0, 1024)}  # (seconds, peak MB) for --json


def write_many(path: Path, count: int, nan_every: int = 0) -> None:
    """``count`` one-element F32 tensors named ``layers.N.wK``; a NaN in every ``nan_every``-th."""
    header = {
        f"layers.{i // 8}.w{i % 8}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i in range(count)
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    values = np.random.default_rng(0).standard_normal(count).astype(np.float32) * np.float32(0.02)
    if nan_every:
        values[::nan_every] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + values.tobytes())


def run_once(path: Path, args: list[str]) -> dict:
    """One ``python -m nandoctor scan`` in a fresh process: wall and CPU seconds, peak RSS, exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEAK_WRAPPER, "scan", str(path), "--no-progress", *args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    lines = err.decode(errors="replace").splitlines()
    if code not in (0, 1) or not lines or not lines[-1].startswith("VmHWM"):
        raise SystemExit(f"scan of {path} {' '.join(args)} exited {code}:\n{err[-2000:].decode(errors='replace')}")
    peak_mb = int(lines[-1].split()[1]) / 1024
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": peak_mb, "exit": code}


# ``python -m nandoctor`` that prints its VmHWM (peak RSS of its own memory map) on exit. ru_maxrss is not
# used: it keeps the parent's peak, inherited across fork and exec, and this parent built a 1M-entry header.
_PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
    "    sys.stderr.write('\\n' + ' '.join(hwm.split()) + '\\n')\n"
    "atexit.register(peak)\n"
    "sys.argv = ['nandoctor', *sys.argv[1:]]\n"
    "runpy.run_module('nandoctor', run_name='__main__', alter_sys=True)\n"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated cases: 100k, 1M (default: both)")
    ap.add_argument("--keep", action="store_true", help="keep bench-data/many/ afterwards")
    args = ap.parse_args()

    cases = [  # (label, tensors, NaN every, scan options, expected exit)
        ("100k", 100_000, 0, ["--json"], 0),
        ("100k", 100_000, 0, [], 0),
        ("100k", 100_000, 1000, ["--json"], 1),
        ("1M", 1_000_000, 0, ["--json"], 0),
    ]
    if args.only:
        cases = [c for c in cases if c[0] in args.only.split(",")]
    files: dict[tuple[int, int], Path] = {}
    for _, count, nan_every, _, _ in cases:
        path = DATA / f"many-{count}-nan{nan_every}.safetensors"
        if not path.exists():
            print(f"writing {path.name} ...", file=sys.stderr, flush=True)
            write_many(path, count, nan_every)
        files[(count, nan_every)] = path

    samples: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
    for round_ in range(args.runs):  # round-robin: the machine's drift hits every case alike
        for i, (_, count, nan_every, options, _) in enumerate(cases):
            path = files[(count, nan_every)]
            path.read_bytes()  # the page cache holds it the same way for every run
            samples[i].append(run_once(path, options))
        print(f"  round {round_ + 1}/{args.runs} done", file=sys.stderr, flush=True)

    print("\n| tensors | content | output | wall s | CPU s | peak RSS MB | exit | target |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (label, count, nan_every, options, expected) in enumerate(cases):
        runs = samples[i]
        wall, cpu = statistics.median(r["wall"] for r in runs), statistics.median(r["cpu"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        exits = {r["exit"] for r in runs}
        target = ""
        if options == ["--json"] and not nan_every:
            seconds, mb = TARGETS[label]
            met = wall <= seconds and rss <= mb and exits == {expected}
            target = f"≤ {seconds:g} s, ≤ {mb} MB: {'met' if met else 'not met'}"
        content = "clean" if not nan_every else f"NaN every {nan_every:,}th"
        exit_text = "ok" if exits == {expected} else f"WRONG {sorted(exits)} want {expected}"
        print(f"| {count:,} | {content} | {' '.join(options) or 'rich'} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | "
              f"{exit_text} | {target} |")
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
