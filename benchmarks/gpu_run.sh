#!/usr/bin/env bash
# The device call: kernel tests on the GPU (no interpreter), then the kernel benchmarks.
# Usage (on the device machine, repo root): bash benchmarks/gpu_run.sh [--quick]
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/ddq-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest tests/kernels -q -x -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.log" | tail -25
python3 benchmarks/bench_kernels.py --out "$OUT/kernels-h100.md" "$@" 2>&1 | tee "$OUT/bench.log"
