#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo_fold.py "$@"
