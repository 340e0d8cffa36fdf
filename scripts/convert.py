#!/usr/bin/env python
"""Convert a trained model end to end: export, fold, check against torch, bench, report.

The same arguments as `normonnx convert` (run `python scripts/convert.py -h`), for scripts and
schedulers that call a file rather than a console entry point:

    python scripts/convert.py normonnx.zoo:resnet_bn \\
        --checkpoint models/checkpoints/resnet_bn.safetensors -o out/resnet
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from normonnx.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
