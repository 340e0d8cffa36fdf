#!/usr/bin/env bash
# Set up (scripts/setup.sh), then convert every bundled reference model: `normonnx demo`.
# The summary table and the combined report land in out/demo/ (report.md, report.json, summary.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/normonnx demo "$@"
