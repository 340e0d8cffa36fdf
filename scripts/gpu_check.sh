#!/usr/bin/env bash
# The prepared GPU run (device tool): parity and latency on CUDA for the reference models, < 8 minutes.
#   bash scripts/gpu_check.sh [OUT]        (OUT defaults to $OUT, then out/gpu)
# On the device, python3 holds torch and onnx; onnx-graphsurgeon and onnxruntime-gpu travel as wheels in .whl/
# (see the device tool's README); without a CUDA provider the script says it skipped and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-out/gpu}}"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec timeout 470 "$PY" scripts/gpu_check.py --out "$OUTDIR" "${@:2}"
