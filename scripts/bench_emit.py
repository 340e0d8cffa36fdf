#!/usr/bin/env python
"""Benchmark: standard op vs exact decomposed subgraph, per family, on onnxruntime CPU.

For each family and realistic activation size, the single-op model and its
lowered twin run interleaved with identical session options (ORT_ENABLE_ALL);
the ratio says which form is faster, and the table checks that
``--norm-style auto`` (normonnx.families) picks it. Results:
benchmarks/emit_forms.{md,json,png}.

    python scripts/bench_emit.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import start, write, write_with

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"

CASES = [  # family, op, shape
    ("batchnorm", "BatchNormalization", (8, 64, 56, 56)),
    ("instancenorm", "InstanceNormalization", (8, 64, 56, 56)),
    ("groupnorm", "GroupNormalization", (8, 64, 56, 56)),
    ("layernorm", "LayerNormalization", (8, 197, 384)),
    ("rmsnorm", "RMSNormalization", (8, 197, 384)),
    ("batchnorm", "BatchNormalization", (1, 256, 14, 14)),
    ("instancenorm", "InstanceNormalization", (1, 256, 14, 14)),
    ("groupnorm", "GroupNormalization", (1, 256, 14, 14)),
    ("layernorm", "LayerNormalization", (1, 50, 768)),
    ("rmsnorm", "RMSNormalization", (1, 50, 768)),
]
OPSET = 23


def op_model(op: str, shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c, last = shape[1], shape[-1]

    def init(name, values):
        return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)

    if op == "BatchNormalization":
        inits = [
            init("s", rng.uniform(0.5, 2, c)),
            init("b", rng.standard_normal(c)),
            init("m", rng.standard_normal(c)),
            init("v", rng.uniform(0.5, 2, c)),
        ]
        node = helper.make_node(op, ["x", "s", "b", "m", "v"], ["y"])
    elif op == "InstanceNormalization":
        inits = [init("s", rng.uniform(0.5, 2, c)), init("b", rng.standard_normal(c))]
        node = helper.make_node(op, ["x", "s", "b"], ["y"])
    elif op == "GroupNormalization":
        inits = [init("s", rng.uniform(0.5, 2, c)), init("b", rng.standard_normal(c))]
        node = helper.make_node(op, ["x", "s", "b"], ["y"], num_groups=32)
    elif op == "LayerNormalization":
        inits = [init("s", rng.uniform(0.5, 2, last)), init("b", rng.standard_normal(last))]
        node = helper.make_node(op, ["x", "s", "b"], ["y"], axis=-1)
    else:
        inits = [init("s", rng.uniform(0.5, 2, last))]
        node = helper.make_node(op, ["x", "s"], ["y"], axis=-1)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    start("bench_emit", 3)
    from normonnx.families import BY_KEY
    from normonnx.pipelines.emit import emit
    from normonnx.validate.latency import measure, speedup
    from normonnx.validate.verify import verify_parity

    rows = []
    for family, op, shape in CASES:
        model = op_model(op, shape)
        decomposed, _ = emit(model, OPSET, "decomposed")
        assert op not in [n.op_type for n in decomposed.graph.node]
        parity = verify_parity(model, decomposed, samples=1)
        feeds = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
        stats = measure({"op": model, "decomposed": decomposed}, feeds, runs=args.runs, max_seconds=60)
        ratio = speedup(stats, "decomposed", "op")  # > 1: the op is faster
        # A ratio whose p10-p90 spread straddles 1 is a tie: both forms run the same
        # (onnxruntime fuses our LayerNorm/RMSNorm subgraphs back into one kernel).
        faster = "op" if ratio.p10 > 1 else "decomposed" if ratio.p90 < 1 else "tie"
        auto = BY_KEY[family].auto_form
        rows.append(
            {
                "family": family,
                "op": op,
                "shape": list(shape),
                "op_ms": stats["op"].median_ms,
                "decomposed_ms": stats["decomposed"].median_ms,
                "decomposed_over_op": ratio.median,
                "ratio_p10": ratio.p10,
                "ratio_p90": ratio.p90,
                "faster": faster,
                "auto": auto,
                "auto_is_faster": faster in (auto, "tie"),
                "parity": parity.passed,
                "decomposed_ops": [n.op_type for n in decomposed.graph.node],
            }
        )
        r = rows[-1]
        verdict = "ok" if r["auto_is_faster"] else "WRONG"
        print(
            f"{family:<13} {shape!s:<18} op {r['op_ms']:8.3f} ms  decomposed {r['decomposed_ms']:8.3f} ms"
            f"  ratio {ratio.median:5.2f} [{ratio.p10:.2f}, {ratio.p90:.2f}]  auto={auto} {verdict}",
            flush=True,
        )
    import onnxruntime

    report = {
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "onnxruntime": onnxruntime.__version__,
        "opset": OPSET,
        "runs": args.runs,
        "rows": rows,
    }
    args.out.mkdir(exist_ok=True)
    write(args.out / "emit_forms.json", json.dumps(report, indent=2) + "\n")
    write(args.out / "emit_forms.md", _markdown(report))
    _plot(report, args.out / "emit_forms.png")
    print((args.out / "emit_forms.md").read_text())
    return 0 if all(r["auto_is_faster"] and r["parity"] for r in rows) else 1


def _markdown(report: dict) -> str:
    lines = [
        "# Standard op vs exact decomposed subgraph on onnxruntime CPU",
        "",
        f"onnxruntime {report['onnxruntime']}, ORT_ENABLE_ALL, {report['machine']['cpus']} CPUs,"
        f" opset {report['opset']};"
        f" median of {report['runs']} interleaved runs each. Ratio = decomposed time / op time per round"
        " (median [p10, p90]): above 1 the op is faster; a spread that straddles 1 is a tie."
        " `auto` is what `--norm-style auto` emits; it must be the faster form or tie with it.",
        "",
        "LayerNorm and RMSNorm tie because onnxruntime's LayerNormFusion and SimplifiedLayerNormFusion"
        " rewrite normonnx's decomposition back into one kernel; `auto` keeps the op, which other"
        " runtimes need to keep the statistics in fp32.",
        "",
        "| family | shape | op ms | decomposed ms | ratio | faster | auto | parity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        mark = "yes" if r["auto_is_faster"] else "**NO**"
        lines.append(
            f"| {r['family']} | {r['shape']} | {r['op_ms']:.3f} | {r['decomposed_ms']:.3f} |"
            f" {r['decomposed_over_op']:.2f} [{r['ratio_p10']:.2f}, {r['ratio_p90']:.2f}] | {r['faster']} |"
            f" {r['auto']} ({mark}) | {'passed' if r['parity'] else 'FAILED'} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    """Ratios as points with their p10-p90 spread on a log axis (a bar on a log axis starts at an arbitrary
    floor); a spread that straddles 1 is a tie and drawn grey."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    from normonnx.reports.plots import pyplot

    plt = pyplot()
    if plt is None:
        return
    rows = report["rows"]
    labels = [f"{r['family']}\n{'x'.join(map(str, r['shape']))}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for x, r in enumerate(rows):
        mid, lo, hi = r["decomposed_over_op"], r["ratio_p10"], r["ratio_p90"]
        color = "tab:blue" if lo > 1 else "tab:orange" if hi < 1 else "tab:gray"
        ax.errorbar(x, mid, yerr=[[mid - lo], [hi - mid]], fmt="o", color=color, capsize=4, markersize=7)
        ax.annotate(f"{mid:.2f}", (x, mid), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel("decomposed time / op time (log scale)")
    ax.set_title(
        "Above 1 the standard op is faster (blue), below 1 the decomposed subgraph (orange);"
        " grey: the p10-p90 spread includes 1 (a tie)",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


if __name__ == "__main__":
    sys.exit(main())
