#!/usr/bin/env python3
"""Benchmark: `nandoctor scan` against the read floor and the ways people check weights today.

    python benchmarks/bench_scan.py                      # 4.3 GB bf16, 5 runs each, warm cache
    python benchmarks/bench_scan.py --size-gb 1 --runs 3 # quicker
    python benchmarks/bench_scan.py --cold               # drop the page cache before each run (root)
    python benchmarks/bench_scan.py --keep               # keep bench-data/scan/ for another run

Generates synthetic LLaMA-shaped bf16 checkpoints under bench-data/scan/ (git-ignored):
``clean`` (sharded safetensors + index), ``fewnan`` (a few NaN/Inf in three tensors),
``nanall`` (a NaN in every MiB of every tensor: every chunk the scan reads is flagged
and counted — the worst case), and ``bin`` (the clean weights re-saved with
torch.save as sharded pytorch_model-*.bin). Then, in one run, each way of
checking runs in its own fresh process (median of --runs), after the files were
read once with plain sequential reads so the page cache holds them the same way
for every run:

  floor-mmap     mmap + np.bitwise_or.reduce over uint64 views, 2 threads (reads every byte, checks nothing)
  floor-read     os.preadv into two reused 4 MiB buffers, 2 threads
                 (both on every variant a nandoctor row reads: "× floor" is against the floor of the same files)
  nandoctor      `nandoctor scan DIR --json` run in-process (the CLI, report included), CPU kernel
  nandoctor-mmap / nandoctor-read  the same with NANDOCTOR_IO=mmap / read: the two read paths, warm
  c-ref          a compiled single-pass reference (pread 4 MiB + bf16 exponent test, 2 threads; compiled_ref.py)
  nandoctor-cuda the same with --device cuda, when torch sees a GPU
  load_file      safetensors.torch.load_file + torch.isfinite(t).all() per tensor
  safe_open      safe_open per tensor + isnan/isposinf/isneginf(...).sum()
  torch.load     torch.load(mmap=True, weights_only=True) + isfinite, on the .bin
  nandoctor-bin  `nandoctor scan` on the .bin folder (when nandoctor has a .bin reader)
  nandoctor-bin-twopass  the same with NANDOCTOR_NATIVE=0: the CRC-32 (ISA-L) and the census's ORs (numpy) as two
                 passes over each chunk instead of the compiled one-pass loop (the same row where it is not built)
  nandoctor-bin-nocrc  the same with NANDOCTOR_SKIP_CRC=1: without the storages' zip CRC-32 checks

Throughput uses the time of the work itself, measured inside each process after
its imports (start-up subtracted); "whole process" compares wall-clock times of
the complete commands, start-up included. Peak memory is sampled from
/proc/self/status every 2 ms (RssAnon: the process's own memory; RssFile:
mapped file pages it holds) plus VmHWM, the kernel's exact peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import compiled_ref  # (benchmarks/ is on sys.path when this runs as a script)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data" / "scan"  # only this benchmark's own folder is ever deleted
DEMO = ROOT / "fixtures" / "demo-run" / "checkpoint-300"  # the README's quick start (start-up row)
MiB = 1 << 20

# -------------------------------------------------------------------------------------------
# Synthetic checkpoints
# -------------------------------------------------------------------------------------------

HIDDEN, FFN, VOCAB = 2048, 5632, 32000  # TinyLlama-like widths; depth is picked to reach the size


def llama_shapes(target_bytes: int, hidden: int = HIDDEN, ffn: int = FFN, vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    per_layer = (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) * 2
    outside = (2 * vocab * hidden + hidden) * 2
    layers = max(1, math.ceil((target_bytes - outside) / per_layer))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[p + "mlp.up_proj.weight"] = (ffn, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, ffn)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def bf16_pool(n: int, seed: int = 0) -> np.ndarray:
    """n finite bf16 bit patterns (normal * 0.02, rounded to nearest even)."""
    values = np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * 0.02
    u = values.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


NAN_BF16, POSINF_BF16, NEGINF_BF16 = 0x7FC0, 0x7F80, 0xFF80


def write_checkpoint(folder: Path, shapes: dict[str, tuple[int, ...]], shard_bytes: int, plant) -> dict:
    """Stream a sharded bf16 safetensors checkpoint; ``plant(name, bits)`` may poison a tensor's copy.

    Returns the planted counts per tensor.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pool = bf16_pool(32 * MiB)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, planted, total, cursor = {}, {}, 0, 0
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            nbytes = math.prod(shapes[name]) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / file, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)) + text)
            for name in names:
                n = math.prod(shapes[name])
                idx = (np.arange(n, dtype=np.int64) + cursor) % pool.size if n < pool.size else None
                bits = pool[idx] if idx is not None else np.resize(np.roll(pool, -cursor), n)
                cursor = (cursor + 7919) % pool.size  # each tensor starts elsewhere in the pool
                counts = plant(name, bits)
                if counts:
                    planted[name] = counts
                fh.write(bits.tobytes())
                weight_map[name] = file
                total += n * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return planted


def no_plant(name: str, bits: np.ndarray) -> dict | None:
    return None


def few_plant(name: str, bits: np.ndarray) -> dict | None:
    where = {"model.layers.1.self_attn.q_proj.weight": (NAN_BF16, [5, 77, 4_000_000]),
             "model.layers.2.mlp.up_proj.weight": (POSINF_BF16, [123_456]),
             "lm_head.weight": (NEGINF_BF16, [1, 2, 3])}
    if name not in where:
        return None
    code, positions = where[name]
    bits[positions] = code
    kind = {NAN_BF16: "nan", POSINF_BF16: "posinf", NEGINF_BF16: "neginf"}[code]
    return {kind: len(positions)}


def all_plant(name: str, bits: np.ndarray) -> dict | None:
    positions = np.arange(17, bits.size, MiB // 2)  # one NaN per MiB of bytes, in every tensor
    bits[positions] = NAN_BF16
    return {"nan": int(positions.size)}


def write_bin(src: Path, dst: Path) -> None:
    """Re-save the clean safetensors shards as torch.save'd sharded .bin (one shard in memory at a time)."""
    import torch  # (only the generator and the naive ways need torch)
    from safetensors.torch import load_file

    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    mapping = {}
    for shard in sorted(set(index["weight_map"].values())):
        out = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        state = load_file(src / shard)
        torch.save(state, dst / out)
        mapping.update({name: out for name in state})
        del state
    (dst / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": index["metadata"]["total_size"]}, "weight_map": mapping}, indent=1)
    )


def generate(size_gb: float, shard_gb: float, want_bin: bool) -> dict:
    manifest_path = DATA / "manifest.json"
    key = {"size_gb": size_gb, "shard_gb": shard_gb}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == key and (not want_bin or (DATA / "bin").exists()):
            return manifest
    shutil.rmtree(DATA, ignore_errors=True)
    shapes = llama_shapes(int(size_gb * 1e9))
    shard = int(shard_gb * 1e9)
    manifest = {"key": key, "planted": {}}
    for variant, plant in (("clean", no_plant), ("fewnan", few_plant), ("nanall", all_plant)):
        print(f"generating {variant} ...", file=sys.stderr, flush=True)
        manifest["planted"][variant] = write_checkpoint(DATA / variant, shapes, shard, plant)
    if want_bin:
        print("generating bin (torch.save) ...", file=sys.stderr, flush=True)
        write_bin(DATA / "clean", DATA / "bin")
    manifest["bytes"] = sum(math.prod(s) * 2 for s in shapes.values())
    manifest["tensors"] = len(shapes)
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


# -------------------------------------------------------------------------------------------
# The ways of checking; each runs in a fresh child process (see child())
# -------------------------------------------------------------------------------------------


class MemorySampler(threading.Thread):
    """Peak RssAnon / RssFile of this process, sampled from /proc/self/status."""

    def __init__(self, every: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.every, self.stop, self.anon, self.file = every, threading.Event(), 0, 0

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon", "RssFile", "VmHWM", "RssShmem")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            now = self.read()
            self.anon, self.file = max(self.anon, now["RssAnon"]), max(self.file, now["RssFile"])
            time.sleep(self.every)


def floor_mmap(files: list[Path]) -> dict:
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    def block(args) -> int:
        mapped, start, length = args
        view = np.frombuffer(mapped, dtype=np.uint64, count=length // 8, offset=start)
        value = int(np.bitwise_or.reduce(view))
        del view
        return value

    acc, step = 0, 4 * MiB
    with ThreadPoolExecutor(2) as pool:
        for f in files:
            with open(f, "rb") as fh:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            size = len(mapped) - len(mapped) % 8
            jobs = [(mapped, s, min(step, size - s)) for s in range(0, size, step)]
            for value in pool.map(block, jobs):
                acc |= value
            del jobs
            mapped.close()
    return {"acc": acc}


def floor_read(files: list[Path]) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def block(args) -> int:
        fd, start, length = args
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(4 * MiB)
        return os.preadv(fd, [memoryview(buf)[:length]], start)

    total, step = 0, 4 * MiB
    with ThreadPoolExecutor(2) as pool:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            size = os.fstat(fd).st_size
            total += sum(pool.map(block, [(fd, s, min(step, size - s)) for s in range(0, size, step)]))
            os.close(fd)
    return {"read": total}


def run_nandoctor(folder: Path, device: str) -> dict:
    import contextlib
    import io

    from nandoctor.cli import main

    sink = io.StringIO()
    sys.argv = ["nandoctor", "scan", str(folder), "--json", "--no-progress", "--device", device]
    with contextlib.redirect_stdout(sink):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    report = json.loads(sink.getvalue())
    return {"exit": code, "report": report}


def naive_load_file(files: list[Path]) -> dict:
    import torch
    from safetensors.torch import load_file

    bad = 0
    for f in files:
        state = load_file(f)
        for t in state.values():
            bad += int(not torch.isfinite(t).all())
        del state
    return {"bad_tensors": bad}


def naive_safe_open(files: list[Path]) -> dict:
    import torch
    from safetensors import safe_open

    nan = posinf = neginf = 0
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                t = fh.get_tensor(key)
                nan += int(torch.isnan(t).sum())
                posinf += int(torch.isposinf(t).sum())
                neginf += int(torch.isneginf(t).sum())
                del t
    return {"nan": nan, "posinf": posinf, "neginf": neginf}


def naive_torch_load(files: list[Path]) -> dict:
    import torch

    bad = 0
    for f in files:
        state = torch.load(f, mmap=True, weights_only=True)
        for t in state.values():
            bad += int(not torch.isfinite(t).all())
        del state
    return {"bad_tensors": bad}


IMPORTS = {  # done before the clock starts: start-up is not the work
    "load_file": "import torch, safetensors.torch",
    "safe_open": "import torch, safetensors",
    "torch.load": "import torch",
    "nandoctor": "import nandoctor.cli, nandoctor.engine, nandoctor.kernels.cpu, nandoctor.report.json_report",
    # the torch reader too: the warm-up's demo checkpoint is safetensors, and readers are imported when needed
    "nandoctor-bin": "import nandoctor.cli, nandoctor.engine, nandoctor.kernels.cpu, nandoctor.report.json_report, "
                     "nandoctor.readers.torch.file",
    "nandoctor-bin-nocrc": "import nandoctor.cli, nandoctor.engine, nandoctor.kernels.cpu, nandoctor.report.json_report, "
                           "nandoctor.readers.torch.file",
    "nandoctor-cuda": "import torch, nandoctor.cli, nandoctor.engine, nandoctor.kernels.cuda",
}
IMPORTS["nandoctor-mmap"] = IMPORTS["nandoctor-read"] = IMPORTS["nandoctor"]
IMPORTS["nandoctor-bin-twopass"] = IMPORTS["nandoctor-bin"]
IO_MODES = {"nandoctor-mmap": "mmap", "nandoctor-read": "read"}  # NANDOCTOR_IO forced: the read paths side by side


def child(method: str, folder: Path) -> None:
    for statement in IMPORTS.get(method, "").split(";"):
        if statement:
            exec(statement)
    files = weight_files(folder)
    if method.startswith("nandoctor"):
        # Start-up is not the work: one scan of a tiny checkpoint first loads every lazily
        # imported module of the command (rich, the readers, the report).
        run_nandoctor(ROOT / "fixtures" / "demo-run" / "checkpoint-100", "cuda" if "cuda" in method else "cpu")
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    if method == "floor-mmap":
        result = floor_mmap(files)
    elif method == "floor-read":
        result = floor_read(files)
    elif method in ("nandoctor", "nandoctor-bin"):
        result = run_nandoctor(folder, "cpu")
    elif method in IO_MODES:
        os.environ["NANDOCTOR_IO"] = IO_MODES[method]
        result = run_nandoctor(folder, "cpu")
    elif method == "nandoctor-bin-twopass":
        os.environ["NANDOCTOR_NATIVE"] = "0"  # kernels/fused.py: the CRC-32 and the census's ORs as two passes
        result = run_nandoctor(folder, "cpu")
    elif method == "nandoctor-bin-nocrc":
        os.environ["NANDOCTOR_SKIP_CRC"] = "1"  # the storages' CRC-32 checks off: the scan alone
        result = run_nandoctor(folder, "cpu")
    elif method == "nandoctor-cuda":
        result = run_nandoctor(folder, "cuda")
    elif method == "load_file":
        result = naive_load_file(files)
    elif method == "safe_open":
        result = naive_safe_open(files)
    elif method == "torch.load":
        result = naive_torch_load(files)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    final = MemorySampler.read()
    print(json.dumps({"seconds": seconds, "anon": max(sampler.anon, final["RssAnon"]),
                      "file": max(sampler.file, final["RssFile"]), "hwm": final["VmHWM"], "result": result}))


# -------------------------------------------------------------------------------------------
# The parent: cache state, runs, medians, the table
# -------------------------------------------------------------------------------------------


def warm(folder: Path) -> None:
    """Put the files in the page cache the same way before every run: one sequential read."""
    for f in weight_files(folder):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 * MiB):
                pass


def drop_cache(folder: Path) -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:  # not root: evict just these files
        for f in weight_files(folder):
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def run_child(method: str, folder: Path, cold: bool) -> dict:
    (drop_cache if cold else warm)(folder)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", method, str(folder)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{method} on {folder} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["wall"] = wall
    return row


def run_cref(binary: Path, folder: Path, cold: bool) -> dict:
    """The compiled reference over the same files, after the same cache preparation as every way."""
    (drop_cache if cold else warm)(folder)
    started = time.perf_counter()
    proc = subprocess.Popen([str(binary), "2", *map(str, weight_files(folder))], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # (Its ru_maxrss would include this parent's, inherited across fork and exec: not reported.)
    proc.returncode = proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"c-ref on {folder} failed (exit {proc.returncode})")
    result = json.loads(out)
    return {"seconds": result["seconds"], "anon": 0, "file": 0, "hwm": 0, "result": result,
            "wall": time.perf_counter() - started}


def run_cli(folder: Path, cold: bool, device: str = "cpu") -> tuple[float, int]:
    """Wall time of the real command, start-up included (what a CI gate pays)."""
    (drop_cache if cold else warm)(folder)
    started = time.perf_counter()
    out = subprocess.run(["nandoctor", "scan", str(folder), "--json", "--no-progress", "--device", device],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started, out.returncode


def startup(runs: int) -> dict[str, float]:
    import compileall

    import nandoctor

    # (as an installed package runs: its bytecode written. Where PYTHONDONTWRITEBYTECODE is set, as on this machine, a
    # module edited since its .pyc was written is compiled again at every start: 5 ms for configvalues.py alone)
    compileall.compile_dir(str(Path(nandoctor.__file__).parent), quiet=1)

    def best(cmd: list[str]) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)  # the demo scan exits 1: it finds NaN
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return {"python -c pass": best([sys.executable, "-c", "pass"]), "nandoctor --help": best(["nandoctor", "--help"]),
            "nandoctor scan DEMO -q": best(["nandoctor", "scan", str(DEMO), "--quiet"]),
            "python -c 'import torch'": best([sys.executable, "-c", "import torch"])}


def check_answer(method: str, variant: str, result: dict, planted: dict) -> str:
    """Each way must find what was planted: a fast wrong answer is no answer."""
    bad_names = set(planted)
    want = {k: sum(c.get(k, 0) for c in planted.values()) for k in ("nan", "posinf", "neginf")}
    if method.startswith("nandoctor"):
        report = result["report"]
        got = {k: report["summary"][k] for k in ("nan", "posinf", "neginf")} if "summary" in report else None
        if got is None:
            got = {k: report.get(k) for k in ("nan", "posinf", "neginf")}
        ok = got == want and result["exit"] == (1 if bad_names else 0)
        return "ok" if ok else f"WRONG {got} want {want} exit {result['exit']}"
    if method == "safe_open":
        return "ok" if result == want else f"WRONG {result} want {want}"
    if "bad_tensors" in result:
        return "ok" if result["bad_tensors"] == len(bad_names) else f"WRONG {result} want {len(bad_names)}"
    return "-"


def have_bin_reader() -> bool:
    try:
        from nandoctor.readers import supported_suffixes

        return ".bin" in supported_suffixes()
    except ImportError:
        return False


def have_cuda() -> bool:
    from nandoctor.kernels import cuda_available

    return cuda_available()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=4.3)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--naive-runs", type=int, default=None, help="runs of the slow naive ways (default: --runs)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run instead of warming it")
    ap.add_argument("--only", default="", help="comma-separated methods to run (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep bench-data/scan/ afterwards")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args.child[0], Path(args.child[1]))
        return

    bin_reader, cuda = have_bin_reader(), have_cuda()
    manifest = generate(args.size_gb, args.shard_gb, want_bin=True)
    gb = manifest["bytes"] / 1e9
    cref = compiled_ref.build(Path(tempfile.mkdtemp(prefix="nandoctor-cref-")))
    plan = [("floor-mmap", "clean"), ("floor-read", "clean")] + ([("c-ref", "clean")] if cref else [])
    plan += [("nandoctor", "clean"), ("nandoctor-mmap", "clean"), ("nandoctor-read", "clean"), ("nandoctor", "fewnan"),
             ("nandoctor", "nanall")]
    if cuda:
        plan += [("nandoctor-cuda", "clean"), ("nandoctor-cuda", "nanall")]
    plan += [("load_file", "clean"), ("safe_open", "clean"), ("torch.load", "bin")]
    if bin_reader:
        plan += [("nandoctor-bin", "bin"), ("nandoctor-bin-twopass", "bin"), ("nandoctor-bin-nocrc", "bin")]
    if args.only:
        keep = set(args.only.split(","))
        plan = [p for p in plan if p[0] in keep]
    # Each variant's own floor: files written at different times sit differently in the page cache (re-read after
    # eviction, their folios are smaller), so one variant's floor can be half another's in the same run; a way of
    # checking is measured against the floor of the very files it read.
    floors = [m for m in ("floor-mmap", "floor-read") if (m, "clean") in plan]
    for variant in dict.fromkeys(v for m, v in plan if m.startswith("nandoctor") and v != "clean"):
        plan += [(m, variant) for m in floors]

    print(f"{gb:.2f} GB bf16, {manifest['tensors']} tensors, {'cold' if args.cold else 'warm'} cache, "
          f"{os.cpu_count()} CPUs; median of {args.runs} runs", flush=True)
    # Round-robin: each round runs every way once, so the machine's drift hits all of them alike.
    samples: dict[tuple[str, str], list[dict]] = {key: [] for key in plan}
    walls: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    slow = {"load_file", "safe_open", "torch.load"}
    for round_ in range(args.runs):
        for method, variant in plan:
            if method in slow and round_ >= (args.naive_runs or args.runs):
                continue
            if method == "c-ref":
                assert cref is not None
                samples[(method, variant)].append(run_cref(cref, DATA / variant, args.cold))
                continue
            samples[(method, variant)].append(run_child(method, DATA / variant, args.cold))
            if method.startswith("nandoctor") and not method.startswith("nandoctor-bin") and method not in IO_MODES:
                wall, _ = run_cli(DATA / variant, args.cold, "cuda" if "cuda" in method else "cpu")
                walls[(method, variant)].append(wall)
        print(f"  round {round_ + 1}/{args.runs} done", file=sys.stderr, flush=True)
    rows = []
    for method, variant in plan:
        runs = samples[(method, variant)]
        med = statistics.median(s["seconds"] for s in runs)
        row = {"method": method, "variant": variant, "seconds": med, "gbps": gb / med, "runs": len(runs),
               "wall": statistics.median(s["wall"] for s in runs),
               "anon_mb": max(s["anon"] for s in runs) / MiB, "file_mb": max(s["file"] for s in runs) / MiB,
               "hwm_mb": max(s["hwm"] for s in runs) / MiB,
               "check": check_answer(method, variant, runs[-1]["result"], manifest["planted"].get(variant, {}))}
        if walls[(method, variant)]:
            row["cli_wall"] = statistics.median(walls[(method, variant)])
        rows.append(row)

    report(rows, startup(10), gb, args)
    if not args.keep:
        shutil.rmtree(DATA, ignore_errors=True)


def report(rows: list[dict], starts: dict[str, float], gb: float, args) -> None:
    by = {(r["method"], r["variant"]): r for r in rows}

    def floor_of(variant: str) -> float | None:
        """The faster of the mmap and read floors measured on ``variant``'s own files (else on clean's)."""
        found = [by[(m, v)]["gbps"] for v in (variant, "clean") for m in ("floor-mmap", "floor-read") if (m, v) in by]
        mine = [by[(m, variant)]["gbps"] for m in ("floor-mmap", "floor-read") if (m, variant) in by]
        return max(mine) if mine else max(found) if found else None

    floor = floor_of("clean")
    cref = by.get(("c-ref", "clean"), {}).get("gbps")
    print("\n| way of checking | checkpoint | GB/s | × floor | × C ref | peak RSS MB | anon MB | file MB | whole process s | answer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        own = floor_of(r["variant"])
        ratio = f"{r['gbps'] / own:.2f}" if own else "-"
        to_cref = f"{r['gbps'] / cref:.2f}" if cref else "-"
        whole = r.get("cli_wall", r["wall"])
        print(f"| {r['method']} | {r['variant']} | {r['gbps']:.2f} | {ratio} | {to_cref} | {r['hwm_mb']:.0f} | "
              f"{r['anon_mb']:.0f} | {r['file_mb']:.0f} | {whole:.2f} | {r['check']} |")
    print()
    pairs = [("nandoctor", "clean", "load_file", "clean", 20), ("nandoctor", "clean", "safe_open", "clean", 20),
             ("nandoctor-bin", "bin", "torch.load", "bin", 10), ("nandoctor-bin-nocrc", "bin", "torch.load", "bin", 10)]
    for mine_key, mine_variant, naive, variant, target in pairs:
        if (mine_key, mine_variant) in by and (naive, variant) in by:
            mine, other = by[(mine_key, mine_variant)], by[(naive, variant)]
            print(f"{mine_key} vs {naive}: {other['seconds'] / mine['seconds']:.1f}x on throughput, "
                  f"{other['wall'] / mine.get('cli_wall', mine['wall']):.1f}x whole process (target >= {target}x)")
    if floor:
        for method, variant, target in (("nandoctor", "clean", 0.75), ("nandoctor", "fewnan", 0.75),
                                        ("nandoctor", "nanall", 0.35), ("nandoctor-bin", "bin", 0.65)):
            if (method, variant) in by:
                mine, own = by[(method, variant)]["gbps"], floor_of(variant) or floor
                print(f"{method} {variant} (census on): {mine / own:.2f} of its files' floor (target >= {target})"
                      + (f", {mine / cref:.2f} of the compiled reference" if cref else ""))
        modes = {m: by[(m, "clean")]["gbps"] for m in IO_MODES if (m, "clean") in by}
        if len(modes) == 2:
            print(f"read paths, warm: mmap {modes['nandoctor-mmap']:.2f} GB/s, read {modes['nandoctor-read']:.2f} GB/s "
                  f"(faster: {max(modes, key=lambda m: modes[m]).removeprefix('nandoctor-')})")
    print(f"start-up: {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in starts.items())}; "
          f"nandoctor --help costs {1000 * (starts['nandoctor --help'] - starts['python -c pass']):.0f} ms over Python "
          f"(target <= 60 ms); the README's demo scan with --quiet takes {1000 * starts['nandoctor scan DEMO -q']:.0f} ms "
          f"(target <= 150 ms)")
    if args.json_out:
        args.json_out.write_text(json.dumps({"gb": gb, "rows": rows, "startup": starts, "floor_gbps": floor}, indent=1))


if __name__ == "__main__":
    main()
