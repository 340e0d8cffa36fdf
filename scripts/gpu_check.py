#!/usr/bin/env python
"""One prepared GPU run: parity and latency of the reference models on CUDA (and TensorRT where present).

For each model: export (unfolded, the deployment baseline), fold, then
``check`` the folded model on the GPU provider against the unfolded one on
CPU, and ``bench`` folded vs unfolded on the GPU. Writes gpu_check.md and
gpu_check.json to --out. Without a CUDA provider it says it skipped and exits 0 (as gpu_half_check does);
``--provider cpu`` runs the same script on the CPU (for testing the script).

    python scripts/gpu_check.py --out OUT [--provider cuda] [--models all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reference_models() -> dict[str, tuple[str, str]]:
    """name -> (MODULE:FACTORY, checkpoint) of every trained reference network."""
    from normonnx.zoo import ZOO

    return {name: (f"normonnx.zoo:{name}", str(entry.checkpoint)) for name, entry in ZOO.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--provider", default="cuda", choices=("cuda", "tensorrt", "cpu"))
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--models", default="all", help="comma-separated names, or all")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from normonnx.errors import NormonnxError
    from normonnx.pipelines.bench import bench
    from normonnx.pipelines.check import check
    from normonnx.pipelines.export import export_file
    from normonnx.pipelines.fold import fold_file
    from normonnx.validate.runner import PROVIDERS

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers {available}", flush=True)
    if PROVIDERS[args.provider] not in available:
        print(
            f"skipped: {PROVIDERS[args.provider]} is not available (install onnxruntime-gpu built for this CUDA)",
            flush=True,
        )
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "models"
    work.mkdir(exist_ok=True)
    models = reference_models()
    if args.models != "all":
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    rows, start = [], time.perf_counter()
    for name, (spec, checkpoint) in models.items():
        row = {"model": name}
        try:
            plain, folded = work / f"{name}.onnx", work / f"{name}.folded.onnx"
            export_file(spec, plain, checkpoint=checkpoint, opset=args.opset, norm_style="auto")
            fold_file(plain, folded)
            result = check(folded, against=plain, provider=args.provider)
            worst = result.parity.worst()
            row.update(passed=result.passed, max_abs=worst.max_abs, threshold=worst.threshold)
            speed = bench(folded, plain, provider=args.provider, runs=args.runs, warmup=10)
            row.update(
                speedup=speed.speedup.median,
                p10=speed.speedup.p10,
                p90=speed.speedup.p90,
                folded_ms=speed.stats[speed.speedup.candidate].median_ms,
                plain_ms=speed.stats[speed.speedup.baseline].median_ms,
            )
        except NormonnxError as e:
            row.update(passed=False, error=str(e))
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        f"# GPU check on {args.provider.upper()} (onnxruntime {ort.__version__})",
        "",
        "| model | parity | max abs | threshold | plain ms | folded ms | speed-up [p10, p90] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | ERROR: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {'PASSED' if r['passed'] else 'FAILED'} | {r['max_abs']:.3g} | {r['threshold']:.3g} |"
            f" {r['plain_ms']:.3f} | {r['folded_ms']:.3f} | {r['speedup']:.3f} [{r['p10']:.3f}, {r['p90']:.3f}] |"
        )
    lines.append(f"\n{time.perf_counter() - start:.0f} s")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    ok = all(r.get("passed") for r in rows)
    print("PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
