#!/usr/bin/env python
"""Export a network with every foldable pattern twice (dynamo raw, TorchScript opset 11), then inspect and fold both.

python scripts/demo_fold.py [--out out/demo]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = parser.parse_args(argv)
    import torch

    from models.patterns import build
    from normonnx.cli import main as cli

    args.out.mkdir(parents=True, exist_ok=True)
    model, x = build("patterns")
    exports = {
        "patterns-dynamo-raw.onnx": dict(dynamo=True, opset_version=18, optimize=False),
        "patterns-torchscript-11.onnx": dict(dynamo=False, opset_version=11),
    }
    worst = 0
    for name, kwargs in exports.items():
        path = args.out / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), verbose=False, **kwargs)
        print(f"\n=== {name}")
        worst = max(worst, cli(["inspect", str(path)]))
        worst = max(worst, cli(["fold", str(path), "-o", str(path.with_suffix(".folded.onnx"))]))
    print("\nPASSED" if worst == 0 else "\nFAILED")
    return worst


if __name__ == "__main__":
    sys.exit(main())
