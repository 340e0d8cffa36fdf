#!/usr/bin/env python
"""Benchmark: normonnx fold against onnxsim, onnxslim and the onnxscript optimizer on files nobody here wrote.

For every file of the corpus (``python scripts/fetch_corpus.py`` builds it), each tool
runs as its own process with no options, as a new user would run it. Each output is
then judged the same way: does onnx's checker pass it, how many foldable
normalizations (BatchNorm ops, constant per-channel Mul/Add, weight standardization and
weight_norm subgraphs) are left, its max error against the original (normalized by
max(1, max|ref|)) at shapes the original runs at (validate.probe), and its latency at
ORT_ENABLE_ALL, every output timed interleaved in one process with a byte-identical
copy of the original as the noise floor. Results: benchmarks/real_world.{md,json,png}.

    python scripts/bench_real_world.py [--corpus corpus] [--max-seconds 6] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import missing_note, require, save_figure, start, write

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
PY = sys.executable
FOLDABLE = {"batchnorm", "affine", "weightstd", "weightnorm"}

TOOLS = {
    "normonnx": (None, [PY, "-m", "normonnx", "fold", "{src}", "-o", "{dst}"]),
    "onnxsim": ("onnxsim", [PY, "-m", "onnxsim", "{src}", "{dst}"]),
    "onnxslim": ("onnxslim", [PY, "-m", "onnxslim", "{src}", "{dst}"]),
    "onnxscript": (
        "onnxscript",
        [PY, "-c", "import onnx, onnxscript.optimizer as o; onnx.save(o.optimize(onnx.load('{src}')), '{dst}')"],
    ),
}


# Exporters whose files are torch.onnx exports of CNNs, transformers and detectors (silero's recurrent
# models with If bodies are summarized on their own).
TORCH_EXPORTS = frozenset({"torchscript", "torch-dynamo", "ultralytics"})


def corpus_files(folder: Path) -> list[tuple[str, Path]]:
    """(exporter, file) for the corpus: from its manifest when there is one, else its sub-folders."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        return [(e["exporter"], folder / e["file"]) for e in entries if (folder / e["file"]).is_file()]
    return sorted((p.parent.name, p) for p in folder.rglob("*.onnx"))


def run_tool(name: str, src: Path, dst: Path, timeout: float) -> dict:
    command = [part.format(src=src, dst=dst) for part in TOOLS[name][1]]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, tail = proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1][:160]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", f"no result within {timeout:.0f} s"
    ok = code == 0 and dst.is_file()
    return {"exit": code, "seconds": round(time.perf_counter() - start, 2), "ok": ok, "message": "" if ok else tail}


def judge(path: Path) -> dict:
    """Checker verdict and the foldable normalizations left in a tool's output."""
    import onnx

    from normonnx.graph.bridge import prepare_graph
    from normonnx.graph.modelio import check_path
    from normonnx.recognize.scan import scan

    try:
        check_path(path, full_check=False)
        checker = True
    except Exception:
        checker = False
    try:
        found = scan(prepare_graph(onnx.load(str(path))))
        left = sum(f.family in FOLDABLE and f.form != "onnxruntime op" for f in found)
    except Exception:
        left = None
    return {"checker": checker, "foldable_left": left}


def outputs_and_latency(original: Path, outputs: dict[str, Path], max_seconds: float) -> dict:
    """Max normalized error of each output against the original, and interleaved latency (ms)."""
    import onnx

    from normonnx.validate.inputs import input_specs
    from normonnx.validate.parity import compare
    from normonnx.validate.probe import probe_shapes, probed_feeds
    from normonnx.validate.runner import SessionConfig
    from normonnx.validate.runners import RunOptions, measure_interleaved

    options = RunOptions()  # every run in a child process
    proto = onnx.load(str(original), load_external_data=False)
    reference = options.runner(str(original))
    probed = probe_shapes(proto, reference)
    feeds = probed_feeds(input_specs(proto), probed, 2)
    refs = reference.infer(feeds)
    result: dict = {"shapes": probed.describe(), "error": {}, "latency_ms": {}, "ratios": {}}
    timed = {}
    for tool, path in outputs.items():
        try:
            got = options.runner(str(path), label=f"{tool} output").infer(feeds)
            parity = compare(refs, got)
            result["error"][tool] = max(o.max_abs / max(1.0, o.ref_max) for o in parity.outputs)
            timed[tool] = str(path)
        except Exception as e:
            result["error"][tool] = f"does not run: {str(e)[:120]}"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.onnx"
        shutil.copyfile(original, copy)
        models = {"original": str(original), "copy": str(copy), **timed}
        per_model = []
        for path in models.values():
            specs = {s.name: s.dtype for s in input_specs(onnx.load(path, load_external_data=False))}
            per_model.append({k: np.asarray(v).astype(specs[k]) for k, v in feeds[0].items() if k in specs})
        deployed = SessionConfig(optimize=True, spin=False)
        runners = {name: options.runner(path, deployed, label=name) for name, path in models.items()}
        stats = measure_interleaved(
            runners, per_model, warmup=3, runs=400, max_seconds=max_seconds, label=f"latency of {original.name}"
        )
    times = {k: np.asarray(v.times_ms) for k, v in stats.items()}
    result["latency_ms"] = {k: float(np.median(v)) for k, v in times.items()}
    result["noise_floor"] = float(np.median(times["original"] / times["copy"]))
    for tool in timed:
        if tool != "normonnx" and "normonnx" in timed:
            # > 1: normonnx's output is slower than this tool's (per interleaved round, median).
            result["ratios"][tool] = float(np.median(times["normonnx"] / times[tool]))
    return result


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and math.isfinite(v)]
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else None


def render(rows: list[dict], tools: list[str], meta: dict) -> str:
    from normonnx.reports.table import table

    def cell(row: dict, tool: str) -> str:
        run = row["tools"].get(tool)
        if run is None:
            return "-"
        if not run["ok"]:
            return f"exit {run['exit']}"
        err = row.get("error", {}).get(tool)
        err_text = f"{err:.1e}" if isinstance(err, float) else "no run"
        left = run.get("foldable_left")
        ms = row.get("latency_ms", {}).get(tool)
        checker = "" if run.get("checker") else " checker fails"
        return f"{left} left, err {err_text}, {ms:.2f} ms{checker}" if ms else f"{left} left, err {err_text}{checker}"

    body = []
    for row in rows:
        ratio = row.get("ratios", {})
        body.append(
            (
                row["exporter"],
                row["file"],
                row["tools"]["normonnx"].get("foldable_before", "?"),
                *(cell(row, t) for t in tools),
                f"{ratio['onnxsim']:.3f}" if "onnxsim" in ratio else "-",
                f"{max(ratio.values()):.3f}" if ratio else "-",
                f"{row['noise_floor']:.3f}" if "noise_floor" in row else "-",
            )
        )
    headers = ("exporter", "file", "foldable", *tools, "vs onnxsim", "vs fastest peer", "noise floor")
    summary = meta["summary"]
    lines = [
        "# normonnx fold on other people's files" + missing_note(meta.get("missing_peers", [])),
        "",
        f"{meta['files']} files from {meta['exporters']} exporters (`python scripts/fetch_corpus.py`), each tool run"
        " with no options. A cell: foldable normalizations left, max error against the original"
        " (normalized by max(1, max|ref|)) at the shapes the original runs at, median latency at ORT_ENABLE_ALL."
        " Ratios are normonnx's latency over the peer's, per interleaved round (median): below 1 normonnx's output is"
        " faster. The noise floor is the original against a byte-identical copy of itself.",
        "",
        table(headers, body, markdown=True),
        "",
        "## Summary",
        "",
        f"- normonnx finished on {summary['normonnx_ok']}/{meta['files']} files;"
        + "".join(f" {t} on {summary['ok'][t]}/{meta['files']};" for t in tools if t != "normonnx"),
        "- foldable normalizations left, in total: " + ", ".join(f"{t} {summary['left'][t]}" for t in tools),
        f"- geomean latency ratio vs onnxsim {summary['geomean_vs_onnxsim']}, worst {summary['worst_vs_onnxsim']};"
        f" vs the fastest peer {summary['geomean_vs_fastest']}, worst {summary['worst_vs_fastest']};"
        f" noise floor geomean {summary['geomean_noise_floor']}",
        f"- torch exports of common architectures ({summary['torch_files']} files: {', '.join(sorted(TORCH_EXPORTS))}):"
        f" vs the fastest peer geomean {summary['geomean_vs_fastest_torch']},"
        f" worst {summary['worst_vs_fastest_torch']}",
        f"- silero (TorchScript, recurrent with If bodies): vs the fastest peer geomean"
        f" {summary['geomean_vs_fastest_recurrent']}, worst {summary['worst_vs_fastest_recurrent']}",
        "",
        f"Machine: {meta['machine']}; onnxruntime {meta['onnxruntime']}; {meta['date']}. Run: `{meta['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("ratios")]
    if not rows:
        return
    names = [f"{r['exporter']}/{r['file']}" for r in rows]  # one file name can come from two exporters
    fig, ax = plt.subplots(figsize=(10, max(4, 0.28 * len(rows))))
    y = np.arange(len(rows))
    ax.scatter([r["ratios"].get("onnxsim", np.nan) for r in rows], y, label="vs onnxsim", marker="o")
    ax.scatter([max(r["ratios"].values()) for r in rows], y, label="vs fastest peer", marker="x")
    ax.scatter([r["noise_floor"] for r in rows], y, label="noise floor (copy)", marker=".", color="grey")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel("normonnx output latency / peer output latency (below 1: normonnx faster)")
    ax.set_title(
        "Latency of normonnx fold's output vs the peers' outputs, other exporters' files (ORT CPU)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    parser.add_argument("--max-seconds", type=float, default=6.0, help="timing budget per file")
    parser.add_argument("--timeout", type=float, default=600.0, help="per tool and file")
    parser.add_argument("--only", nargs="*", help="file names to run (default: all; not committed, written to out/)")
    parser.add_argument("--allow-missing", action="store_true", help="run without the peers not installed")
    parser.add_argument("--replot", action="store_true", help="only the plot again, from benchmarks/real_world.json")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((OUT / "real_world.json").read_text())["rows"], OUT / "real_world.png")
        return 0
    start("bench_real_world", 40 if not args.only else 2)
    missing = require([m for m, _ in TOOLS.values() if m], args.allow_missing)
    where = ROOT / "out" if args.only else OUT  # a subset never replaces the committed table
    files = corpus_files(args.corpus)
    if args.only:
        files = [(e, p) for e, p in files if p.name in args.only or p.stem in args.only]
    if not files:
        print(f"no .onnx files under {args.corpus}: run python scripts/fetch_corpus.py first", file=sys.stderr)
        return 2
    tools = [t for t, (module, _) in TOOLS.items() if module is None or importlib.util.find_spec(module)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (exporter, src) in enumerate(files, 1):
            row = {"exporter": exporter, "file": src.name, "tools": {}}
            outputs = {}
            for tool in tools:
                dst = Path(tmp) / f"{k}.{tool}.onnx"
                run = run_tool(tool, src, dst, args.timeout)
                if run["ok"]:
                    run.update(judge(dst))
                    outputs[tool] = dst
                row["tools"][tool] = run
            row["tools"]["normonnx"]["foldable_before"] = judge(src)["foldable_left"]
            try:
                row.update(outputs_and_latency(src, outputs, args.max_seconds))
            except Exception as e:
                row["error_message"] = str(e).splitlines()[0][:200]
            ratio = row.get("ratios", {})
            print(
                f"[{k}/{len(files)}] {exporter}/{src.name}: "
                + ", ".join(f"{t} {'ok' if r['ok'] else r['exit']}" for t, r in row["tools"].items())
                + (f"; vs onnxsim {ratio['onnxsim']:.3f}" if "onnxsim" in ratio else ""),
                flush=True,
            )
            rows.append(row)
            for path in outputs.values():
                path.unlink(missing_ok=True)
            write(ROOT / "out" / "real_world.partial.json", json.dumps(rows, indent=1, default=str) + "\n")
    write_results(rows, tools, where, missing)
    print(f"wrote {where / 'real_world.md'}")
    return 0


def write_results(rows: list[dict], tools: list[str], out: Path, missing: list[str]) -> None:
    ratios_sim = [r["ratios"]["onnxsim"] for r in rows if "onnxsim" in r.get("ratios", {})]
    ratios_fast = [max(r["ratios"].values()) for r in rows if r.get("ratios")]
    torch_fast = [max(r["ratios"].values()) for r in rows if r.get("ratios") and r["exporter"] in TORCH_EXPORTS]
    recurrent_fast = [max(r["ratios"].values()) for r in rows if r.get("ratios") and r["exporter"] == "silero"]
    summary = {
        "normonnx_ok": sum(r["tools"]["normonnx"]["ok"] for r in rows),
        "ok": {t: sum(r["tools"][t]["ok"] for r in rows) for t in tools},
        "left": {t: sum(r["tools"][t].get("foldable_left") or 0 for r in rows if r["tools"][t]["ok"]) for t in tools},
        "geomean_vs_onnxsim": _round(geomean(ratios_sim)),
        "worst_vs_onnxsim": _round(max(ratios_sim, default=None)),
        "geomean_vs_fastest": _round(geomean(ratios_fast)),
        "worst_vs_fastest": _round(max(ratios_fast, default=None)),
        "geomean_vs_fastest_torch": _round(geomean(torch_fast)),
        "worst_vs_fastest_torch": _round(max(torch_fast, default=None)),
        "torch_files": len(torch_fast),
        "geomean_vs_fastest_recurrent": _round(geomean(recurrent_fast)),
        "worst_vs_fastest_recurrent": _round(max(recurrent_fast, default=None)),
        "geomean_noise_floor": _round(geomean([r["noise_floor"] for r in rows if "noise_floor" in r])),
    }
    import onnxruntime

    meta = {
        "files": len(rows),
        "exporters": len({r["exporter"] for r in rows}),
        "machine": f"{platform.machine()}, {platform.system()}, {__import__('os').cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python scripts/bench_real_world.py", *sys.argv[1:]]),
        "summary": summary,
        "missing_peers": missing,
    }
    write(out / "real_world.json", json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    write(out / "real_world.md", render(rows, tools, meta))
    plot(rows, out / "real_world.png")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    sys.exit(main())
