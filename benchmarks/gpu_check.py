#!/usr/bin/env python3
"""GPU check: the CUDA backend gives the CPU kernel's answers, and how fast it is.

    python benchmarks/gpu_check.py                     # on a machine with a CUDA GPU (3-6 minutes)
    python benchmarks/gpu_check.py --size-gb 4.3 --out results/
    python benchmarks/gpu_check.py --simulate-on-cpu   # a dry run of this script without a GPU

1. **Agreement**: every fixture is scanned with the CPU kernel and the CUDA one,
   without and with each ``--target-dtype``; random buffers of every float
   dtype with planted NaN/Inf are counted, classified and overflow-checked by
   both kernels; the same bytes as live CUDA tensors (contiguous and strided)
   are counted on the GPU by ``count_tensor``; planted health files (spikes, zeroed
   tensors) give the same census with both kernels, and the live quick census on
   the device equals the exact census on the host; a GGUF file's F16 values and Q8_0 block
   scales are counted alike. Every answer must be identical.
2. **File-scan throughput**: a synthetic LLaMA-shaped bf16 checkpoint (clean,
   and with a NaN in every MiB), warm cache, CPU against CUDA, median of
   ``--runs``.
3. **Live-tensor throughput**: ``count_tensor`` and ``overflow_tensor`` on a
   large bf16 CUDA tensor against ``torch.isfinite(t).all()`` and the
   ``isnan``/``isposinf``/``isneginf`` sums people write by hand; ``scan_state_dict``
   (counts and health census) of a multi-GB set of weights on the device against
   the device's own copy bandwidth (issue target: at least 0.5 of it).

Writes ``gpu_results.md`` and ``gpu_results.json`` to ``--out`` (default
``$OUT``, else ``bench-data/gpu-results/``) and exits 1 on any disagreement.

``--simulate-on-cpu`` runs every step with the torch kernel on CPU tensors in
place of the GPU (the CUDA backend's code path, at CPU speed), on a small
checkpoint: the test suite runs it so that this script is known to work before
a GPU session spends its minutes on it. Its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import bench_scan  # noqa: E402  (the synthetic checkpoints and the cache warming of the CPU benchmark)

from fixtures.builders import SPECIALS, finite_bits  # noqa: E402
from nandoctor.dtypes import DTYPES  # noqa: E402
from nandoctor.engine import scan  # noqa: E402
from nandoctor.kernels.cpu import CpuKernel  # noqa: E402
from nandoctor.kernels.live import count_tensor, overflow_tensor  # noqa: E402
from nandoctor.kernels.targets import TARGETS, threshold_bits  # noqa: E402

FLOAT_DTYPES = ["BF16", "F16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ"]
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


class Device:
    """The accelerator under test: a CUDA GPU, or (simulated) the torch kernel on CPU tensors."""

    def __init__(self, simulate: bool):
        self.simulate = simulate
        if simulate:
            from nandoctor.kernels.cuda import CHUNK_BYTES, WORKERS
            from nandoctor.kernels.torch_kernel import TorchKernel

            self.name = "CPU (simulated: torch kernel on CPU tensors)"
            self.kernel = TorchKernel("cpu", chunk_bytes=CHUNK_BYTES, workers=WORKERS)
            self.torch_device = "cpu"
            self.label = "torch kernel on cpu"
            self.backend = "torch"  # count_tensor on CPU tensors takes the GPU's torch code path
        else:
            if not torch.cuda.is_available():
                sys.exit("torch sees no CUDA GPU: install a CUDA build of torch, or use --simulate-on-cpu")
            from nandoctor.kernels.cuda import CudaKernel

            self.name = torch.cuda.get_device_name(0)
            self.kernel = CudaKernel()
            self.torch_device = "cuda"
            self.label = "cuda"
            self.backend = "auto"

    def sync(self) -> None:
        if not self.simulate:
            torch.cuda.synchronize()

    def free_bytes(self) -> int:
        return 1 << 30 if self.simulate else torch.cuda.mem_get_info()[0]


def same(a, b) -> bool:
    def key(report):
        return [
            (t.name, t.nan, t.posinf, t.neginf, t.first_bad, t.overflow, t.max_abs, t.zeros, t.exploded, t.outliers,
             t.findings)
            for t in report.tensors
        ]

    return key(a) == key(b) and a.complete == b.complete


def check_fixtures(dev: Device, checks: dict[str, bool]) -> None:
    fixtures = [ROOT / "fixtures" / "dtype-zoo.safetensors", *sorted((ROOT / "fixtures" / "demo-run").glob("checkpoint-*"))]
    for path in fixtures:
        for tgt in (None, *TARGETS):
            on_cpu = scan(path, device="cpu", target_dtype=tgt)
            on_dev = scan(path, kernel=dev.kernel, target_dtype=tgt)
            checks[f"scan {path.name} target={tgt}"] = same(on_cpu, on_dev)


def check_health(dev: Device, data: Path, checks: dict[str, bool]) -> None:
    """The health census (largest magnitude, zeros, exploded, outliers, findings) of planted files and of
    live tensors: the CUDA kernel's file scan against the CPU one, the live quick census on the device
    against the exact census on the host."""
    from fixtures.builders import RawTensor, write_safetensors
    from nandoctor.kernels.live import _exact_census, census_tensor, quick_stats

    data.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(11)
    for name, torch_dtype in TORCH_DTYPES.items():
        for n in (4096, 3 << 20):
            spiky = (torch.randn(n, generator=gen) * 0.02).to(torch_dtype)
            spiky[[n // 3, n // 3 + 7, n - 5]] = torch.tensor([6e4, -3e3, 5.0]).to(torch_dtype)
            tensors = {
                "model.layers.0.mlp.down_proj.weight": spiky,
                "model.layers.1.mlp.down_proj.weight": (torch.randn(n, generator=gen) * 0.02).to(torch_dtype),
                "model.layers.2.mlp.down_proj.weight": torch.zeros(n, dtype=torch_dtype),
            }
            path = data / f"health-{name}-{n}.safetensors"
            write_safetensors(path, {k: RawTensor(name, (n,), v.view(torch.uint8).numpy().tobytes()) for k, v in tensors.items()})
            checks[f"health file {name} n={n}"] = same(scan(path, device="cpu"), scan(path, kernel=dev.kernel))
            on_dev = [v.to(dev.torch_device) for v in tensors.values()]
            ok = True
            for t, stats in zip(on_dev, quick_stats(on_dev)):
                ok = ok and census_tensor(t, 1e5, 2.0**10, stats) == _exact_census(t.cpu(), 1e5, 2.0**10)
            checks[f"health live {name} n={n}"] = bool(ok)


def _gguf(path: Path, rng: np.random.Generator) -> tuple[int, int]:
    """A little-endian GGUF v3 file (struct-packed, no gguf package needed on the GPU machine): an F16
    tensor and a Q8_0 tensor whose block scales hold planted NaN/Inf; (bad F16 values, bad Q8_0 scales)."""
    import struct

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value)) + value.encode()

    f16 = (rng.standard_normal(4096) * 0.02).astype("<f2")
    f16[[3, 1000, 4000]] = [np.inf, np.nan, -np.inf]
    n_blocks = 4096
    q8 = rng.integers(-128, 128, (n_blocks, 34), dtype=np.int16).astype(np.int8).view(np.uint8)
    scales = (rng.random(n_blocks) * 0.02 + 0.001).astype("<f2")
    scales[[0, 17, 4095]] = [np.nan, np.inf, np.nan]
    q8[:, :2] = scales.view(np.uint8).reshape(n_blocks, 2)
    payloads = [("blk.0.attn_q.weight", (4096,), 1, f16.tobytes()), ("blk.1.ffn_down.weight", (n_blocks * 32,), 8, q8.tobytes())]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(payloads), 1) + text("general.architecture") + struct.pack("<I", 8) + text("llama")
    offset, data = 0, b""
    for name, dims, kind, payload in payloads:
        head += text(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", kind, offset)
        data += payload + b"\0" * (-len(payload) % 32)
        offset = len(data)
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + data)
    return 3, 3


def check_gguf(dev: Device, data: Path, checks: dict[str, bool]) -> None:
    """GGUF: F16 values and Q8_0 block scales counted alike by the CPU and the CUDA kernel."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / "planted.gguf"
    want_f16, want_scales = _gguf(path, np.random.default_rng(3))
    on_cpu, on_dev = scan(path, device="cpu"), scan(path, kernel=dev.kernel)
    counts = sorted(t.nonfinite for t in on_cpu.tensors)
    checks["gguf F16 + Q8_0 scales"] = same(on_cpu, on_dev) and counts == sorted([want_f16, want_scales])


def check_random(dev: Device, trials: int, checks: dict[str, bool]) -> None:
    cpu = CpuKernel()
    rng = np.random.default_rng(0)
    for trial in range(trials):
        dtype = FLOAT_DTYPES[trial % len(FLOAT_DTYPES)]
        spec = DTYPES[dtype]
        n = int(rng.integers(1, (9 << 20) // spec.itemsize))
        bits = finite_bits(dtype, n, rng, scale=float(rng.choice([0.02, 5.0, 1e4])))
        specials = [code for kind, code in SPECIALS[dtype].items() if code is not None and kind != "max"]
        where = rng.choice(n, size=min(n, int(rng.integers(0, 30))), replace=False)
        bits[where] = rng.choice(np.array(specials, bits.dtype), where.size)
        raw = bits.view(np.uint8)
        want = cpu.count(raw, spec)
        ok = want == dev.kernel.count(raw, spec) == dev.kernel.check(raw, spec)
        cpu_where, cpu_kind = cpu.classify(raw, spec)
        dev_where, dev_kind = dev.kernel.classify(raw, spec)
        ok = ok and np.array_equal(cpu_where, dev_where) and np.array_equal(cpu_kind, dev_kind)
        for tgt in TARGETS:
            threshold = threshold_bits(spec, TARGETS[tgt])
            ok = ok and cpu.overflow(raw, spec, threshold) == dev.kernel.overflow(raw, spec, threshold)
        if dtype in TORCH_DTYPES:  # the same bytes as a live tensor on the device
            t = torch.from_numpy(raw.copy()).to(dev.torch_device).view(TORCH_DTYPES[dtype])
            strided = t[::3]
            ok = ok and count_tensor(t, backend=dev.backend) == want
            ok = ok and count_tensor(strided, backend=dev.backend) == count_tensor(strided.cpu().contiguous())
            for tgt in ("fp16", "fp8_e4m3"):
                ok = ok and overflow_tensor(t, tgt, backend=dev.backend) == overflow_tensor(t.cpu(), tgt)
        checks[f"random {trial} {dtype} n={n} planted={where.size}"] = bool(ok)


def file_speed(dev: Device, size_gb: float, runs: int, data: Path, small: bool) -> list[dict]:
    widths = {"hidden": 256, "ffn": 704, "vocab": 4000} if small else {}
    shapes = bench_scan.llama_shapes(int(size_gb * 1e9), **widths)
    gb = sum(int(np.prod(s)) * 2 for s in shapes.values()) / 1e9
    rows = []
    for variant, plant in (("clean", bench_scan.no_plant), ("nanall", bench_scan.all_plant)):
        folder = data / variant
        planted = bench_scan.write_checkpoint(folder, shapes, int(2e9), plant)
        want = sum(counts.get("nan", 0) for counts in planted.values())
        for label, kernel in (("cpu", None), ("device", dev.kernel)):
            times = []
            for _ in range(runs):
                bench_scan.warm(folder)
                dev.sync()
                started = time.perf_counter()
                report = scan(folder, device="cpu", kernel=kernel)
                times.append(time.perf_counter() - started)
            if report.nan != want or not report.complete:
                raise SystemExit(f"{label} scan of {variant}: {report.nan} NaN, planted {want}")
            seconds = statistics.median(times)
            what = f"file scan {variant} ({'cpu' if kernel is None else dev.label})"
            rows.append({"what": what, "gb": gb, "seconds": seconds, "gbps": gb / seconds})
        shutil.rmtree(folder)
    return rows


def timed(dev: Device, fn, runs: int) -> float:
    """Median seconds of ``runs`` calls of ``fn`` after one warm-up (kernels compiled, allocator primed)."""
    fn()
    times = []
    for _ in range(runs):
        dev.sync()
        started = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def live_speed(dev: Device, runs: int, small: bool) -> list[dict]:
    nbytes = int(64e6 if small else min(8e9, dev.free_bytes() * 0.3))
    t = torch.randn(nbytes // 2 // 1024, 1024, device=dev.torch_device, dtype=torch.bfloat16)
    t.view(-1)[12345] = float("nan")
    gb = t.numel() * 2 / 1e9
    ways = {
        "count_tensor (nandoctor)": lambda: count_tensor(t, backend=dev.backend),
        "overflow_tensor fp16 (nandoctor)": lambda: overflow_tensor(t, "fp16", backend=dev.backend),
        "torch.isfinite(t).all()": lambda: bool(torch.isfinite(t).all()),
        "isnan + isposinf + isneginf sums": lambda: [int(f(t).sum()) for f in (torch.isnan, torch.isposinf, torch.isneginf)],
    }
    rows = []
    for name, fn in ways.items():
        seconds = timed(dev, fn, runs)
        rows.append({"what": f"live {gb:.2f} GB bf16 tensor: {name}", "gb": gb, "seconds": seconds, "gbps": gb / seconds})
    found = count_tensor(t, backend=dev.backend)
    if (found.nan, found.first_bad) != (1, 12345):
        raise SystemExit(f"live count_tensor found {found}, planted one NaN at 12345")
    t = None  # free the device memory for the set below (the lambdas above hold the same cell)
    return rows + live_set_speed(dev, nbytes, runs)


def live_set_speed(dev: Device, nbytes: int, runs: int) -> list[dict]:
    """``scan_state_dict`` (NaN/Inf counts and the health census) of a multi-GB set of bf16 weights already
    on the device, against the device's own copy bandwidth (bytes copied per second, ``dst.copy_(src)``)."""
    from nandoctor.live import scan_state_dict

    gen = torch.Generator(device=dev.torch_device).manual_seed(5)
    per = nbytes // 32 // 2 // 4096 * 4096
    state = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(per // 4096, 4096, device=dev.torch_device, generator=gen,
                                                             dtype=torch.bfloat16).mul_(0.02)
        for i in range(32)
    }
    gb = sum(t.numel() * 2 for t in state.values()) / 1e9
    src = next(iter(state.values()))
    dst = torch.empty_like(src)

    copy_gbps = src.numel() * 2 / 1e9 / timed(dev, lambda: dst.copy_(src), runs)
    seconds = timed(dev, lambda: scan_state_dict(state), runs)
    report = scan_state_dict(state)
    if not report.ok or report.health != "healthy":
        raise SystemExit(f"live set scan: {report.verdict}, expected clean and healthy")
    scan_gbps = gb / seconds
    return [
        {"what": "device copy bandwidth (dst.copy_(src), bytes copied)", "gb": src.numel() * 2 / 1e9,
         "seconds": src.numel() * 2 / 1e9 / copy_gbps, "gbps": copy_gbps},
        {"what": f"live set of 32 bf16 tensors: scan_state_dict (nandoctor, census on); {scan_gbps / copy_gbps:.2f} of copy",
         "gb": gb, "seconds": seconds, "gbps": scan_gbps},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="synthetic checkpoint size (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement; the median is kept")
    parser.add_argument("--trials", type=int, default=40, help="random planted buffers to compare")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench-data" / "gpu-results"))
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "gpu-check", help="where the synthetic checkpoint goes (deleted after)")
    parser.add_argument("--simulate-on-cpu", action="store_true", help="dry run without a GPU: torch kernel on CPU tensors, small data")
    args = parser.parse_args()

    dev = Device(args.simulate_on_cpu)
    print(f"device: {dev.name}; torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
    checks: dict[str, bool] = {}
    check_fixtures(dev, checks)
    check_random(dev, args.trials, checks)
    try:
        check_health(dev, args.data, checks)
        check_gguf(dev, args.data, checks)
    finally:
        shutil.rmtree(args.data, ignore_errors=True)
    failed = [name for name, ok in checks.items() if not ok]
    print(f"agreement: {len(checks) - len(failed)}/{len(checks)} checks identical", flush=True)

    try:
        rows = file_speed(dev, args.size_gb, args.runs, args.data, small=args.simulate_on_cpu)
    finally:
        shutil.rmtree(args.data, ignore_errors=True)
    rows += live_speed(dev, args.runs, small=args.simulate_on_cpu)

    lines = [
        f"GPU check on {dev.name} (torch {torch.__version__}, CUDA {torch.version.cuda}); "
        f"agreement {len(checks) - len(failed)}/{len(checks)}",
        "",
        "| what | GB | s | GB/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['what']} | {r['gb']:.2f} | {r['seconds']:.3f} | {r['gbps']:.1f} |" for r in rows]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_results.md").write_text("\n".join(lines) + "\n")
    result = {"device": dev.name, "simulated": dev.simulate, "torch": torch.__version__, "checks": checks, "speed": rows, "failures": failed}
    (args.out / "gpu_results.json").write_text(json.dumps(result, indent=1))
    if failed:
        sys.exit("DISAGREEMENT: " + "; ".join(failed))
    print("all checks identical")


if __name__ == "__main__":
    main()
