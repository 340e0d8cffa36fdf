#!/usr/bin/env bash
# Create .venv (if missing) and install normonnx with everything the demo and the tests need.
# The CPU build of torch is pinned through constraints.txt; pyproject.toml keeps ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[export,report,test,openvino]"
