#!/usr/bin/env python3
"""Benchmark: `nandoctor diff` of two identical checkpoints against the read floor, and
`--verify-hashes` against cores x single-core sha256, both measured in the same run.

    python benchmarks/bench_diff.py                  # 1 GB per side, 2 shards, 3 runs each (median)
    python benchmarks/bench_diff.py --size-gb 4      # the issue's 4 GB

Writes two byte-identical sharded bf16 safetensors checkpoints under bench-data/diff/
(git-ignored; the second is a copy, so both sides are real, separate files), reads
both once so the page cache holds them, then times:

  floor         mmap both sides + np.bitwise_or.reduce over uint64 views, one thread per core
                (reads every byte of both, checks nothing)
  diff          nandoctor.diff(A, B) in-process (open, pair, memcmp every chunk, report)
  sha256-1core  hashlib.sha256 of one shard in one thread (the single-core throughput)
  verify        nandoctor.verify_hashes(B, manifest=...) (every shard hashed, files in parallel)

and prints diff/floor (requirement >= 0.5) and verify / (cores x sha256-1core)
(requirement >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from timing import warm  # (benchmarks/ is on sys.path when this runs as a script)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench-data" / "diff"


def write_side(folder: Path, total: int, shards: int) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard, tensor = total // shards, 64 << 20
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for t in range(per_shard // tensor):
            key = f"model.layers.{s * 100 + t}.mlp.weight"
            tensors[key] = rng.integers(0x3C00, 0x3C80, size=tensor // 2, dtype=np.uint16).view(np.float16)
            weight_map[key] = name
        save_file(tensors, str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def floor(paths: list[Path]) -> float:
    def one(path: Path) -> int:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = np.frombuffer(m, dtype=np.uint8)
            acc = 0
            for start in range(0, len(view) - len(view) % 8, 4 << 20):
                acc |= int(np.bitwise_or.reduce(view[start:start + (4 << 20)].view(np.uint64)))
            del view
            return acc

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - started


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import hashlib

    import nandoctor

    a, b = DATA / "a", DATA / "b"
    total = int(args.size_gb * 1e9)
    if not (a.exists() and sum(p.stat().st_size for p in files(a)) >= total * 0.9):
        shutil.rmtree(DATA, ignore_errors=True)
        write_side(a, total, args.shards)
        shutil.copytree(a, b)
    both = files(a) + files(b)
    size = sum(p.stat().st_size for p in both)
    manifest = DATA / "manifest.json"
    manifest.write_text(json.dumps(nandoctor.manifest(b)))
    warm(both)
    cores = os.cpu_count() or 1

    def sha(path: Path) -> str:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    def raw_parallel() -> None:  # the control: plain hashlib, one thread per shard, nothing of nandoctor
        with ThreadPoolExecutor(min(cores, args.shards)) as pool:
            list(pool.map(sha, files(b)))

    floors, diffs, singles, verifies, raws = [], [], [], [], []
    for _ in range(args.runs):
        floors.append(floor(both))
        report_holder: dict = {}
        diffs.append(timed(lambda: report_holder.setdefault("r", nandoctor.diff(a, b))))  # noqa: B023  (called at once)
        assert report_holder["r"].exit_code == 0, report_holder["r"].verdict
        one = files(b)[0]
        singles.append(timed(lambda: sha(one)) / one.stat().st_size)  # noqa: B023  (called at once)
        raws.append(timed(raw_parallel))
        check_holder: dict = {}
        verifies.append(timed(lambda: check_holder.setdefault("c", nandoctor.verify_hashes(b, manifest=manifest))))  # noqa: B023
        assert not check_holder["c"].problems and len(check_holder["c"].verified) == args.shards
    f, d = statistics.median(floors), statistics.median(diffs)
    per_byte = statistics.median(singles)
    hashed = sum(p.stat().st_size for p in files(b))
    v = statistics.median(verifies)
    ideal = hashed * per_byte / min(cores, args.shards)
    print(f"{size / 1e9:.2f} GB read by diff (both sides), {cores} cores, median of {args.runs}")
    print(f"floor (mmap + OR, {cores} threads): {f:.3f} s  {size / f / 1e9:.2f} GB/s")
    print(f"nandoctor diff:                  {d:.3f} s  {size / d / 1e9:.2f} GB/s   ratio {f / d:.2f} (need >= 0.5)")
    print(f"sha256 one core:                 {1 / per_byte / 1e9:.2f} GB/s ({per_byte * 1e9:.2f} s/GB)")
    print(f"verify-hashes {args.shards} shards:          {v:.3f} s  {hashed / v / 1e9:.2f} GB/s   "
          f"ratio {ideal / v:.2f} of {min(cores, args.shards)} x one core (need >= 0.8)")
    r = statistics.median(raws)
    print(f"control: raw hashlib, {min(cores, args.shards)} threads: {r:.3f} s   ratio {ideal / r:.2f} "
          "(what this machine allows right now; a loaded machine drags both)")
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
