#!/usr/bin/env bash
# The one device call for issue 10: kernel and loader tests on the GPU (compiled Triton, no interpreter), then
# every benchmark of the target table. Run from the repo root on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_run.sh            # ~4-6 min on an H100 (tests ~2-3, benchmarks ~2-3)
#     bash benchmarks/gpu_run.sh --quick    # 4096x4096 only, no tile sweep
#
# Writes under $OUT (default /tmp/ddq-out): gpu.txt, pytest-kernels.log, pytest-loaders.log, bench.log and
# kernels-<gpu>.md (the results file, naming the GPU; copy it to benchmarks/results/ and commit it). Every
# step has its own time limit and says when it is skipped; the script always runs every step.
set -o pipefail
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET DDQ_KERNEL_BACKEND
OUT=${OUT:-/tmp/ddq-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
say() { echo "[gpu_run $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu.txt"; }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  say "SKIPPED everything: no NVIDIA GPU visible (nvidia-smi)"; exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT/gpu.txt"
if ! $PY -c "import torch, triton, sys; assert torch.cuda.is_available(); print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0])" 2>&1 | tee -a "$OUT/gpu.txt"; then
  say "SKIPPED everything: $PY has no CUDA torch + triton"; exit 0
fi
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0))")
SLUG=$(echo "$GPU" | tr 'A-Z' 'a-z' | sed -E 's/nvidia //; s/[^a-z0-9]+/-/g; s/^-|-$//g')

# -- tests (GPU paths; the CPU-only AOT compile check is redundant here) --------------------------------------
PYTEST_ARGS=(-q -p no:cacheprovider -rs)
if $PY -c "import xdist" 2>/dev/null; then PYTEST_ARGS+=(-n 8); fi  # parallel Triton compiles
if ! $PY -c "import pytest" 2>/dev/null; then
  say "SKIPPED tests: pytest is not installed for $PY"
else
  CONF=()
  $PY -c "import hypothesis" 2>/dev/null || { CONF=(--confcutdir=tests/kernels); say "hypothesis missing: root conftest not loaded"; }
  say "tests/kernels on $GPU"
  timeout 300 $PY -m pytest tests/kernels "${PYTEST_ARGS[@]}" "${CONF[@]}" -k "not sm90" 2>&1 | tee "$OUT/pytest-kernels.log" | tail -15
  say "tests/kernels exit ${PIPESTATUS[0]} (124 = time limit)"
  CONF=()
  $PY -c "import hypothesis" 2>/dev/null || CONF=(--confcutdir=tests/loaders)
  if $PY -c "import transformers" 2>/dev/null; then
    say "tests/loaders on $GPU"
    timeout 200 $PY -m pytest tests/loaders/test_gpu.py tests/loaders/test_separate.py "${PYTEST_ARGS[@]}" "${CONF[@]}" 2>&1 \
      | tee "$OUT/pytest-loaders.log" | tail -10
    say "tests/loaders exit ${PIPESTATUS[0]}"
  else
    say "SKIPPED tests/loaders: transformers is not installed for $PY"
  fi
fi

# -- benchmarks ---------------------------------------------------------------------------------------------
say "benchmarks/bench_kernels.py $*"
timeout 420 $PY benchmarks/bench_kernels.py --out "$OUT/kernels-$SLUG.md" "$@" 2>&1 | tee "$OUT/bench.log" | grep -E "^\| |^#|since start|wrote|Error|error" | tail -80
say "bench exit ${PIPESTATUS[0]} (124 = time limit); results: $OUT/kernels-$SLUG.md"
