#!/usr/bin/env bash
# The device check of issue 11, under 8 minutes: torch's CUDA fp16/bf16 kernels against normonnx's
# half-faithful evaluator on the large-activation models. Needs torch with CUDA and onnxruntime (CPU is
# enough); exits 0 without a GPU. Run from the repository root: bash scripts/gpu_half_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e . --no-deps >/dev/null 2>&1 || true
exec timeout 480 python scripts/gpu_half_check.py
