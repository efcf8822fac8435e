#!/usr/bin/env bash
# GPU check for nandoctor, for a machine with a CUDA GPU (about 3-6 minutes):
#   1. agreement: every fixture and random planted data give identical answers on cuda and cpu
#      (file scans, --target-dtype overflow, and live CUDA tensors against the numpy kernel);
#   2. throughput: file scan cpu vs cuda on a synthetic bf16 checkpoint (warm cache, median of 3),
#      and live-tensor counting on the GPU against torch.isfinite(t).all().
# Results go to stdout and, as markdown + JSON, to $OUT (or bench-data/gpu-results/, git-ignored).
#
#   bash benchmarks/gpu_check.sh            # 2 GB checkpoint
#   SIZE_GB=4.3 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench-data/gpu-results}"
mkdir -p "$OUT_DIR"
SIZE_GB="${SIZE_GB:-2}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv || true
python - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU: install a CUDA build of torch (pip install torch==2.13.0) and rerun")
print("gpu", torch.cuda.get_device_name(0))
EOF
python -c "import nandoctor" 2>/dev/null || pip install -q -e . --no-deps

python - "$OUT_DIR" "$SIZE_GB" <<'EOF'
import json, os, statistics, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
import bench_scan  # the synthetic checkpoints and the cache warming of the CPU benchmark

from fixtures.builders import SPECIALS, finite_bits
from nandoctor.dtypes import DTYPES
from nandoctor.kernels.cpu import CpuKernel
from nandoctor.kernels.cuda import CudaKernel
from nandoctor.kernels.live import count_tensor, overflow_tensor
from nandoctor.kernels.targets import TARGETS
from nandoctor.engine import scan

out, size_gb = Path(sys.argv[1]), float(sys.argv[2])
results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checks": {}, "speed": []}
failures = []


def same(a, b):
    key = lambda r: [(t.name, t.nan, t.posinf, t.neginf, t.first_bad, t.overflow, t.max_abs) for t in r.tensors]
    return key(a) == key(b) and a.complete == b.complete


# -- 1. agreement -------------------------------------------------------------------------
fixtures = [Path("fixtures/dtype-zoo.safetensors")] + sorted(Path("fixtures/demo-run").glob("checkpoint-*"))
for path in fixtures:
    for tgt in (None, *TARGETS):
        ok = same(scan(path, device="cpu", target_dtype=tgt), scan(path, device="cuda", target_dtype=tgt))
        results["checks"][f"scan {path.name} target={tgt}"] = ok
        if not ok:
            failures.append(f"scan {path} target={tgt}")

cpu, gpu = CpuKernel(), CudaKernel()
rng = np.random.default_rng(0)
for trial in range(40):
    dtype = ["BF16", "F16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ"][trial % 8]
    spec = DTYPES[dtype]
    n = int(rng.integers(1, (9 << 20) // spec.itemsize))
    bits = finite_bits(dtype, n, rng, scale=float(rng.choice([0.02, 5.0, 1e4])))
    specials = [c for k, c in SPECIALS[dtype].items() if c is not None and k != "max"]
    where = rng.choice(n, size=min(n, int(rng.integers(0, 30))), replace=False)
    bits[where] = rng.choice(np.array(specials, bits.dtype), where.size)
    raw = bits.view(np.uint8)
    ok = cpu.count(raw, spec) == gpu.count(raw, spec) == gpu.check(raw, spec)
    ia, ka = cpu.classify(raw, spec)
    ib, kb = gpu.classify(raw, spec)
    ok = ok and (ia == ib).all() and (ka == kb).all()
    for tgt in TARGETS:
        from nandoctor.kernels.targets import threshold_bits
        th = threshold_bits(spec, TARGETS[tgt])
        ok = ok and cpu.overflow(raw, spec, th) == gpu.overflow(raw, spec, th)
    # live: the same bytes as a CUDA tensor, counted on the GPU, against the numpy kernel
    if dtype in ("BF16", "F16", "F32", "F64"):
        t = torch.from_numpy(raw.copy()).cuda().view({"BF16": torch.bfloat16, "F16": torch.float16,
                                                      "F32": torch.float32, "F64": torch.float64}[dtype])
        ok = ok and count_tensor(t) == cpu.count(raw, spec)
        ok = ok and count_tensor(t.view(-1)[::3]) == count_tensor(t.view(-1)[::3].cpu())
    results["checks"][f"random {trial} {dtype}"] = bool(ok)
    if not ok:
        failures.append(f"random trial {trial} {dtype}")
print(f"agreement: {sum(results['checks'].values())}/{len(results['checks'])} checks identical")

# -- 2. throughput: file scans ------------------------------------------------------------
manifest = bench_scan.generate(size_gb, 2.0, want_bin=False)
gb = manifest["bytes"] / 1e9
for variant in ("clean", "nanall"):
    folder = bench_scan.DATA / variant
    for device in ("cpu", "cuda"):
        times = []
        for _ in range(3):
            bench_scan.warm(folder)
            torch.cuda.synchronize()
            started = time.perf_counter()
            report = scan(folder, device=device)
            times.append(time.perf_counter() - started)
        want = sum(c.get("nan", 0) for c in manifest["planted"].get(variant, {}).values())
        if report.nan != want:
            failures.append(f"{device} {variant}: {report.nan} NaN, planted {want}")
        med = statistics.median(times)
        results["speed"].append({"what": f"file scan {variant} ({device})", "gb": gb, "seconds": med, "gbps": gb / med})

# -- 3. throughput: live tensors on the GPU ------------------------------------------------
free = torch.cuda.mem_get_info()[0]
numel = int(min(8e9, free * 0.3) // 2)
t = torch.randn(numel // 1024, 1024, device="cuda", dtype=torch.bfloat16)
t.view(-1)[12345] = float("nan")
for name, fn in (("count_tensor (nandoctor)", lambda: count_tensor(t)),
                 ("overflow_tensor fp16", lambda: overflow_tensor(t, "fp16")),
                 ("torch.isfinite(t).all()", lambda: bool(torch.isfinite(t).all())),
                 ("isnan+isposinf+isneginf sums", lambda: [int(f(t).sum()) for f in (torch.isnan, torch.isposinf, torch.isneginf)])):
    fn()
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    med = statistics.median(times)
    results["speed"].append({"what": f"live {numel * 2 / 1e9:.1f} GB bf16: {name}", "gb": numel * 2 / 1e9,
                             "seconds": med, "gbps": numel * 2 / 1e9 / med})
if count_tensor(t).nan != 1:
    failures.append("live count_tensor missed the planted NaN")

lines = [f"GPU check on {results['device']} (torch {results['torch']}); "
         f"agreement {sum(results['checks'].values())}/{len(results['checks'])}", "",
         "| what | GB | s | GB/s |", "|---|---|---|---|"]
lines += [f"| {r['what']} | {r['gb']:.2f} | {r['seconds']:.3f} | {r['gbps']:.1f} |" for r in results["speed"]]
print("\n".join(lines))
(out / "gpu_results.md").write_text("\n".join(lines) + "\n")
results["failures"] = failures
(out / "gpu_results.json").write_text(json.dumps(results, indent=1))
import shutil
shutil.rmtree(bench_scan.DATA, ignore_errors=True)
if failures:
    sys.exit("DISAGREEMENT: " + "; ".join(failures))
print("all checks identical")
EOF
