#!/usr/bin/env python3
"""Benchmark: a DCP checkpoint scanned whole and in parts, the per-process rate behind the scale-out projection.

    python benchmarks/bench_parts.py                  # 2 GB bf16 DCP checkpoint, median of 3 runs
    python benchmarks/bench_parts.py --size-gb 4 --parts 4 --runs 5 --keep

Writes a ``torch.distributed.checkpoint`` checkpoint (``dcp.save`` in one process, the default
``torch.save`` serialisation, so every item's zip CRC-32 is checked) of LLaMA-shaped bf16 tensors under
bench-data/parts/ (git-ignored), reads it once so the page cache holds it, then measures in this
process, after one warm-up scan:

* the floor: every byte of the ``.distcp`` files read once (mmap + OR-reduce, one thread per core);
* ``nandoctor.scan`` of the whole checkpoint (what a single process delivers);
* ``--part I/N`` for each I (``engine.parts.scan_part``, what each rank of ``--distributed`` or each task of
  a Slurm array does), one after the other: per-part seconds and bytes, and the part's own rate.

It prints the per-process rate and the projection for an 810 GB checkpoint on 1-8 nodes of 8 ranks
(docs/benchmarks.md, "Scale out"): T = 810 GB / (ranks × per-rank rate) + start-up, as long as storage
delivers that aggregate bandwidth. Rates are for warm files on this machine's cores: a rank's rate on a
cluster node is bounded by its cores and, cold, by the filesystem.
"""

from __future__ import annotations

import argparse
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
DATA = ROOT / "bench-data" / "parts"  # only this benchmark's own folder is ever deleted
HIDDEN, FFN = 2048, 5632
STARTUP_S = 10.0  # torchrun + gloo start-up measured for --distributed (docs/benchmarks.md)


def write_dcp(folder: Path, size_gb: float) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    total, layer = 0, 0
    while total < size_gb * 1e9:
        for name, shape in (("q_proj", (HIDDEN, HIDDEN)), ("up_proj", (FFN, HIDDEN)), ("down_proj", (HIDDEN, FFN))):
            state[f"model.layers.{layer}.{name}.weight"] = (torch.randn(shape) * 0.02).to(torch.bfloat16)
            total += 2 * shape[0] * shape[1]
        layer += 1
    folder.mkdir(parents=True, exist_ok=True)
    dcp.save(state, checkpoint_id=str(folder))  # one process: no process group needed


def data_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.distcp"))


def floor(paths: list[Path]) -> float:
    """Seconds to read every byte once through a mapping, 4 MiB at a time, one thread per core."""
    blocks = []
    for path in paths:
        size = path.stat().st_size
        blocks += [(path, start, min(4 << 20, size - start)) for start in range(0, size, 4 << 20)]

    def one(block: tuple[Path, int, int]) -> int:
        path, start, length = block
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = np.frombuffer(m, dtype=np.uint8, count=length - length % 8, offset=start)
            value = int(np.bitwise_or.reduce(view.view(np.uint64))) if len(view) else 0
            del view
            return value

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, blocks))
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep bench-data/parts/ afterwards")
    args = ap.parse_args()

    from nandoctor import scan
    from nandoctor.engine.parts import PartSpec, scan_part

    folder = DATA / f"dcp-{args.size_gb:g}gb"
    if not (folder / ".metadata").is_file():
        print(f"writing a {args.size_gb:g} GB DCP checkpoint under {folder} …", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        write_dcp(folder, args.size_gb)
    paths = data_files(folder)
    nbytes = sum(p.stat().st_size for p in paths)
    os.environ["NANDOCTOR_NO_PROGRESS"] = "1"
    warm(paths)
    scan(folder, device="cpu")  # warm-up: lazily imported modules, thread pools

    floors, wholes, parts = [], [], {i: [] for i in range(args.parts)}
    part_bytes = {}
    for _ in range(args.runs):  # round-robin: the machine's drift hits every measurement alike
        warm(paths)
        floors.append(floor(paths))
        started = time.perf_counter()
        report = scan(folder, device="cpu")
        wholes.append(time.perf_counter() - started)
        assert report.complete and not report.bad_tensors, "the benchmark's checkpoint must scan clean"
        for i in range(args.parts):
            started = time.perf_counter()
            part = scan_part(folder, PartSpec(i, args.parts), device="cpu")
            parts[i].append(time.perf_counter() - started)
            part_bytes[i] = part["bytes_scanned"]

    gb = nbytes / 1e9
    floor_s, whole_s = statistics.median(floors), statistics.median(wholes)
    print(f"{gb:.2f} GB DCP checkpoint ({len(paths)} .distcp file(s)), warm cache, {os.cpu_count()} CPUs, "
          f"median of {args.runs}\n")
    print("| what | seconds | GB | GB/s | × floor |\n|---|---|---|---|---|")
    print(f"| floor (read every byte once) | {floor_s:.3f} | {gb:.2f} | {gb / floor_s:.2f} | 1.00 |")
    print(f"| nandoctor scan, whole | {whole_s:.3f} | {gb:.2f} | {gb / whole_s:.2f} | {floor_s / whole_s:.2f} |")
    rates = []
    for i in range(args.parts):
        seconds, share = statistics.median(parts[i]), part_bytes[i] / 1e9
        rates.append(share / seconds)
        print(f"| --part {i}/{args.parts} | {seconds:.3f} | {share:.2f} | {share / seconds:.2f} | - |")
    rate = min(gb / whole_s, min(rates))  # the slower of a whole process and its parts: what a rank delivers
    print(f"\nper-process rate: {rate:.2f} GB/s (the slower of the whole scan and its parts)")
    print("\n| nodes × 8 ranks | 810 GB takes | storage must deliver |\n|---|---|---|")
    for nodes in (1, 2, 4, 8):
        ranks = nodes * 8
        print(f"| {nodes} | {810 / (ranks * rate) + STARTUP_S:.0f} s | {ranks * rate:.0f} GB/s |")
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
