#!/usr/bin/env bash
# GPU check for nandoctor on a machine with a CUDA GPU (about 3-6 minutes): prints the device, then runs
# benchmarks/gpu_check.py (CPU/GPU agreement on every fixture and on random planted data, file-scan and
# live-tensor throughput), which writes gpu_results.md and gpu_results.json to $OUT
# (or bench-data/gpu-results/). Arguments go to gpu_check.py:
#
#   bash benchmarks/gpu_check.sh                  # 2 GB synthetic checkpoint
#   bash benchmarks/gpu_check.sh --size-gb 4.3
#   bash benchmarks/gpu_check.sh --simulate-on-cpu   # a dry run without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv 2>/dev/null \
  || echo "(no nvidia-smi)"
# nandoctor runs from this checkout (gpu_check.py puts it on sys.path): nothing is installed, so the
# script also works on a machine that reaches no package index, as long as its python3 has torch.
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, numpy, safetensors, rich, click" \
  || { echo "gpu_check needs torch (a CUDA build), numpy, safetensors, rich and click in $PYTHON"; exit 2; }
exec "$PYTHON" benchmarks/gpu_check.py "$@"
