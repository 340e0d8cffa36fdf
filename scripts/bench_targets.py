#!/usr/bin/env python
"""Benchmark: each normalization form on two CPU runtimes, and the corpus down-converted to old opsets.

1. Per family and form (the standard op at opset 23, normonnx's exact decomposed subgraph), latency on
   onnxruntime CPU (ORT_ENABLE_ALL) and on OpenVINO CPU (float32 precision hint), all models of one
   runtime interleaved in one process, with an identity copy of the op model as the noise floor.
2. Every file of the real-world corpus (scripts/fetch_corpus.py) emitted at opsets 17, 13 and 11 by
   normonnx, each result run against its source on onnxruntime (3 seeded input sets, fold's gate).

Writes benchmarks/targets.{md,json,png} when it finishes (never half a table). Takes about 2 minutes.

    python scripts/bench_targets.py [--runs 200] [--corpus corpus]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT / "scripts"))

from bench_emit import CASES, op_model  # noqa: E402  (the same single-op models as emit_forms.md)
from benchmark_files import save_figure, start, write  # noqa: E402

OPSETS = (17, 13, 11)


def forms_on_runtimes(runs: int) -> list[dict]:
    from normonnx.pipelines.emit import emit
    from normonnx.validate.latency import measure
    from normonnx.validate.runner import SessionConfig

    rows = []
    runtimes = {"onnxruntime": SessionConfig(optimize=True, spin=False), "openvino": SessionConfig(runtime="openvino")}
    for family, op, shape in CASES:
        model = op_model(op, shape)
        decomposed, _ = emit(model, None, "decomposed")
        feeds = [{"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}] * 3
        twin = onnx.ModelProto()
        twin.CopyFrom(model)
        models = {"op": model, "op copy": twin, "decomposed": decomposed}
        row = {"family": family, "shape": list(shape)}
        for runtime, config in runtimes.items():
            stats = measure(models, feeds, config, warmup=10, runs=runs, max_seconds=60)
            op_ms = stats["op"].median_ms
            row[runtime] = {
                "op_ms": op_ms,
                "decomposed_ms": stats["decomposed"].median_ms,
                "decomposed_over_op": stats["decomposed"].median_ms / op_ms,
                "noise_floor": stats["op copy"].median_ms / op_ms,
            }
        print(f"{family} {shape}: " + ", ".join(f"{r} dec/op {row[r]['decomposed_over_op']:.2f}" for r in runtimes))
        rows.append(row)
    return rows


def corpus_down(corpus: Path) -> list[dict]:
    from normonnx.graph.modelio import load_model
    from normonnx.graph.opsets import runnable_copy
    from normonnx.pipelines.emit import emit
    from normonnx.validate.verify import verify_parity

    rows = []
    files = sorted(corpus.rglob("*.onnx"))
    for k, path in enumerate(files, 1):
        name = str(path.relative_to(corpus))
        row: dict = {"file": name}
        try:
            proto = load_model(path, load_weights=True)
            row["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        except Exception as e:  # a file this onnx cannot load is reported, not fatal
            row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
            continue
        for opset in OPSETS:
            try:
                converted, _ = emit(proto, opset, name=name)
                # Files older than opset 7 run on onnxruntime only as onnx's upgrade: that is the reference.
                parity = verify_parity(runnable_copy(proto) or proto, converted, isolated=True)
                row[str(opset)] = "parity" if parity.passed else f"FAILED: {parity.summary()[:160]}"
            except Exception as e:
                row[str(opset)] = f"refused: {str(e).splitlines()[0][:200]}"
        states = ", ".join(f"{o} {row[str(o)].split(':')[0]}" for o in OPSETS)
        print(f"[{k}/{len(files)}] {name}: {states}", flush=True)
        rows.append(row)
    return rows


def markdown(forms: list[dict], down: list[dict], meta: dict) -> str:
    lines = [
        "# Normalization forms on two CPU runtimes, and the corpus at old opsets",
        "",
        f"`python scripts/bench_targets.py` on {meta['machine']}, onnxruntime {meta['onnxruntime']},"
        f" OpenVINO {meta['openvino']}, {meta['runs']} interleaved runs per model, {meta['seconds']:.0f} s.",
        "",
        "## Standard op vs decomposed subgraph (median ms; ratio > 1: the op is faster)",
        "",
        "| family | shape | ORT op | ORT decomposed | ORT dec/op | ORT noise | OV op | OV decomposed | OV dec/op"
        " | OV noise |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in forms:
        o, v = r["onnxruntime"], r["openvino"]
        lines.append(
            f"| {r['family']} | {'x'.join(map(str, r['shape']))} | {o['op_ms']:.3f} | {o['decomposed_ms']:.3f}"
            f" | {o['decomposed_over_op']:.2f} | {o['noise_floor']:.2f} | {v['op_ms']:.3f} | {v['decomposed_ms']:.3f}"
            f" | {v['decomposed_over_op']:.2f} | {v['noise_floor']:.2f} |"
        )
    lines += ["", "Noise: the op model against an identical copy of itself, timed in the same turns.", ""]
    total = len(down)
    lines += ["## The real-world corpus emitted at older opsets (parity on onnxruntime, 3 seeded sets)", ""]
    lines += ["| opset | reached with parity | refused | failed parity |", "|---|---|---|---|"]
    for opset in OPSETS:
        states = [r.get(str(opset), "refused: not loaded") for r in down]
        ok = sum(s == "parity" for s in states)
        refused = sum(s.startswith("refused") for s in states)
        lines.append(f"| {opset} | {ok}/{total} | {refused} | {total - ok - refused} |")
    lines += ["", "Every file not reached, and why:", ""]
    for r in down:
        for opset in OPSETS:
            state = r.get(str(opset), r.get("error", ""))
            if state != "parity":
                lines.append(f"- {r['file']} at {opset}: {state}")
    return "\n".join(lines) + "\n"


def plot(forms: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['family']}\n{'x'.join(map(str, r['shape']))}" for r in forms]
    x = np.arange(len(forms))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for k, (runtime, color) in enumerate((("onnxruntime", "tab:blue"), ("openvino", "tab:purple"))):
        ax.bar(x + (k - 0.5) * 0.38, [r[runtime]["decomposed_over_op"] for r in forms], 0.38, label=runtime,
               color=color)  # fmt: skip
    ax.axhline(1.0, color="black", linewidth=0.8, label="equal speed")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("decomposed time / op time (>1: the op is faster)")
    ax.set_title("Normalization op vs normonnx's decomposed subgraph, CPU, median of interleaved runs")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime
    import openvino

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--corpus", default=str(ROOT / "corpus"))
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        print(f"{corpus}: no corpus; run scripts/fetch_corpus.py first", file=sys.stderr)
        return 2
    start("bench_targets", 2)
    began = time.perf_counter()
    forms = forms_on_runtimes(args.runs)
    with tempfile.TemporaryDirectory():
        down = corpus_down(corpus)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "onnx": onnx.__version__,
        "runs": args.runs,
        "seconds": time.perf_counter() - began,
    }
    write(OUT / "targets.json", json.dumps({"meta": meta, "forms": forms, "corpus": down}, indent=1) + "\n")
    write(OUT / "targets.md", markdown(forms, down, meta))
    plot(forms, OUT / "targets.png")
    print(f"wrote {OUT / 'targets.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
