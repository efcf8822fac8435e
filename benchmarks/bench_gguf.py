#!/usr/bin/env python3
"""Benchmark: a GGUF scan of a Q4_K_M-shaped file against the read floor.

    python benchmarks/bench_gguf.py                   # 1.5 GB, best of 3, warm cache
    python benchmarks/bench_gguf.py --size-gb 4 --runs 5
    python benchmarks/bench_gguf.py --keep            # keep bench-data/gguf/ for another run

Writes bench-data/gguf/model-Q4_K_M.gguf (git-ignored): LLaMA-shaped layers
quantized like llama.cpp's Q4_K_M (Q4_K attention and gate/up, Q6_K attn_v and
ffn_down, F32 norms), raw blocks with a random payload and valid fp16 scales
(nothing is really quantized: only the block layout matters here). After one
sequential read puts the file in the page cache, each way runs --runs times in
this process and the best time counts:

  floor-mmap   mmap + an OR-reduction over every byte, 2 threads (bench_scan.py's)
  floor-read   os.preadv into reused 4 MiB buffers, 2 threads (bench_scan.py's)
  nandoctor    nandoctor.scan(path, device="cpu"): every block read, only its scale fields tested

and prints each one's GB/s and nandoctor's ratio to the faster floor.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import floor_mmap, floor_read
from timing import best

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data" / "gguf"  # only this benchmark's own folder is ever deleted
MiB = 1 << 20
HIDDEN, FFN, VOCAB = 3072, 8192, 32000
ALIGN = 32
# type id, elements per block, bytes per block (ggml-common.h)
F32, Q4_K, Q6_K = (0, 1, 4), (12, 256, 144), (14, 256, 210)


def tensors(target_bytes: int) -> list[tuple[str, tuple[int, ...], tuple[int, int, int]]]:
    def nbytes(ne: tuple[int, ...], kind: tuple[int, int, int]) -> int:
        return int(np.prod(ne)) // kind[1] * kind[2]

    layer = [("attn_norm.weight", (HIDDEN,), F32), ("attn_q.weight", (HIDDEN, HIDDEN), Q4_K),
             ("attn_k.weight", (HIDDEN, HIDDEN), Q4_K), ("attn_v.weight", (HIDDEN, HIDDEN), Q6_K),
             ("attn_output.weight", (HIDDEN, HIDDEN), Q4_K), ("ffn_norm.weight", (HIDDEN,), F32),
             ("ffn_gate.weight", (HIDDEN, FFN), Q4_K), ("ffn_up.weight", (HIDDEN, FFN), Q4_K),
             ("ffn_down.weight", (FFN, HIDDEN), Q6_K)]
    outside = [("token_embd.weight", (HIDDEN, VOCAB), Q4_K), ("output_norm.weight", (HIDDEN,), F32),
               ("output.weight", (HIDDEN, VOCAB), Q6_K)]
    per_layer = sum(nbytes(ne, k) for _, ne, k in layer)
    layers = max(1, (target_bytes - sum(nbytes(ne, k) for _, ne, k in outside)) // per_layer)
    out = outside[:1] + [(f"blk.{i}.{n}", ne, k) for i in range(layers) for n, ne, k in layer] + outside[1:]
    return [(name, ne, kind) for name, ne, kind in out]


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def generate(path: Path, target_bytes: int) -> int:
    """Stream the file: header, then each tensor from a reused random pool with fp16 scales stamped in."""
    specs = tensors(target_bytes)
    kv = _string("general.architecture") + struct.pack("<I", 8) + _string("llama")
    kv += _string("llama.block_count") + struct.pack("<II", 4, (len(specs) - 3) // 9)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(specs), 2) + kv
    offset, sizes = 0, []
    for name, ne, (type_id, elems, size) in specs:
        head += _string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        head += struct.pack("<IQ", type_id, offset)
        nbytes = int(np.prod(ne)) // elems * size
        sizes.append(nbytes)
        offset += -(-nbytes // ALIGN) * ALIGN
    head += b"\0" * (-len(head) % ALIGN)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, 64 * MiB, dtype=np.uint8)
    scales = (rng.random(64 * MiB // 64) * 0.02 + 0.001).astype("<f2").view(np.uint8)  # enough for every row
    with open(path, "wb") as fh:
        fh.write(head)
        for (_, _, (type_id, _, size)), nbytes in zip(specs, sizes):
            done = 0
            while done < nbytes:
                n = min(nbytes - done, len(pool) // size * size)
                chunk = pool[:n].copy()
                if type_id == F32[0]:
                    chunk = np.full(n // 4, 1.0, np.float32).view(np.uint8)
                else:
                    rows = chunk.reshape(-1, size)
                    where = 0 if type_id == Q4_K[0] else 208  # Q4_K: d, dmin first; Q6_K: d last
                    width = 4 if type_id == Q4_K[0] else 2
                    rows[:, where : where + width] = scales[: rows.shape[0] * width].reshape(-1, width)
                fh.write(chunk.tobytes())
                done += n
            fh.write(b"\0" * (-nbytes % ALIGN))
    return path.stat().st_size



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from nandoctor.engine import scan

    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / "model-Q4_K_M.gguf"
    if not path.exists() or abs(path.stat().st_size - args.size_gb * 1e9) > 0.2e9:
        print(f"writing {path} …", flush=True)
        generate(path, int(args.size_gb * 1e9))
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as fh:  # warm: one sequential read
        while fh.read(8 * MiB):
            pass
    report = scan(path, device="cpu")
    assert report.exit_code == 0 and report.complete, report.verdict
    rows = {
        "floor-mmap": best(lambda: floor_mmap([path]), args.runs),
        "floor-read": best(lambda: floor_read([path]), args.runs),
        "nandoctor": best(lambda: scan(path, device="cpu"), args.runs),
    }
    print(f"{size / 1e9:.2f} GB, {len(report.tensors)} tensors (Q4_K / Q6_K / F32), best of {args.runs}, warm cache")
    for name, seconds in rows.items():
        print(f"  {name:<11} {seconds:7.3f} s  {size / seconds / 1e9:6.2f} GB/s")
    floor = min(rows["floor-mmap"], rows["floor-read"])
    print(f"  nandoctor / floor: {floor / rows['nandoctor']:.2f}")
    if not args.keep:
        shutil.rmtree(DATA)


if __name__ == "__main__":
    main()
