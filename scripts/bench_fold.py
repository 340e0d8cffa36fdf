#!/usr/bin/env python
"""Benchmark: whole-process fold time on Conv+BN+ReLU chains, normonnx vs the usual tools.

Each tool runs as its own process on the same file (what a user waits for),
side by side in one run, for chains of 250, 1000 and 4000 blocks (32 channels,
3x3). A peer that is not installed stops the run before it starts (--allow-missing runs without it and
lists it as skipped in the results); install them with
``pip install -e .[bench]``. Results: benchmarks/fold_speed.{md,json,png}.

    python scripts/bench_fold.py [--blocks 250 1000 4000] [--timeout 600]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import require, start, write, write_with

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
PY = sys.executable

TOOLS = {
    "normonnx": (None, [PY, "-m", "normonnx", "fold", "{src}", "-o", "{dst}"]),
    "normonnx --no-verify": (None, [PY, "-m", "normonnx", "fold", "{src}", "-o", "{dst}", "--no-verify"]),
    "onnxsim": ("onnxsim", [PY, "-m", "onnxsim", "{src}", "{dst}"]),
    "onnxslim": ("onnxslim", [PY, "-m", "onnxslim", "{src}", "{dst}"]),
    "onnxscript optimizer": (
        "onnxscript",
        [PY, "-c", "import onnx, onnxscript.optimizer as o; onnx.save(o.optimize(onnx.load('{src}')), '{dst}')"],
    ),
    "onnxoptimizer": (
        "onnxoptimizer",
        [
            PY,
            "-c",
            "import onnx, onnxoptimizer as o; "
            "onnx.save(o.optimize(onnx.load('{src}'), ['fuse_bn_into_conv']), '{dst}')",
        ],
    ),
}


def _conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[C, H, W] * [O, C, 3, 3] with zero padding 1, as one matrix product."""
    c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # [C, H, W, 3, 3]
    cols = patches.transpose(1, 2, 0, 3, 4).reshape(h * wd, c * 9)
    return (cols @ w.reshape(w.shape[0], -1).T).T.reshape(w.shape[0], h, wd)


def chain(blocks: int, channels: int = 32, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Conv(3x3, no bias) -> BatchNormalization -> Relu, ``blocks`` times.

    BN's running statistics are those of the conv outputs on a random input,
    as training leaves them, so activations stay O(1) however deep the chain
    (random statistics would make a deep chain explode and its float32
    rounding with it).
    """
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    act = rng.standard_normal((channels, size, size))
    for i in range(blocks):
        w = rng.standard_normal((channels, channels, 3, 3)) * (2.0 / (9 * channels)) ** 0.5
        y = _conv3x3(act, w)
        mean, var = y.mean(axis=(1, 2)), y.var(axis=(1, 2)) + 1e-3
        gamma, beta = rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels) * 0.1
        act = np.maximum(
            gamma[:, None, None] * (y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) + beta[:, None, None],
            0,
        )
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"conv{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        names = []
        for key, value in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{key}{i}"))
            names.append(f"{key}{i}")
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *names], [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        f"chain{blocks}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, size, size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_tool(cmd: list[str], src: Path, dst: Path, timeout: float, repeat_below: float = 30.0) -> dict:
    """Best of two runs for tools that take under ``repeat_below`` seconds (this VM is noisy), else one."""
    argv = [a.format(src=src, dst=dst) for a in cmd]
    times = []
    for _ in range(2):
        dst.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"seconds": None, "status": f"timeout after {timeout:.0f} s"}
        times.append(time.perf_counter() - start)
        if proc.returncode != 0 or times[-1] >= repeat_below:
            break
    seconds = min(times)
    if proc.returncode != 0 or not dst.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return {"seconds": seconds, "status": f"exit {proc.returncode}: {tail[0][:120]}"}
    m = onnx.load(str(dst), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    return {"seconds": seconds, "status": "ok", "nodes": len(ops), "bn_left": ops.count("BatchNormalization")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="only rewrite the table and plot from the JSON")
    parser.add_argument("--allow-missing", action="store_true", help="run without the peers not installed")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((args.out / "fold_speed.json").read_text())
        write(args.out / "fold_speed.md", _markdown(report))
        _plot(report, args.out / "fold_speed.png")
        print((args.out / "fold_speed.md").read_text())
        return 0
    start("bench_fold", 5)
    require([v[0] for v in TOOLS.values() if v[0]], args.allow_missing)
    tools = {k: v for k, v in TOOLS.items() if v[0] is None or importlib.util.find_spec(v[0])}
    skipped = sorted(set(TOOLS) - set(tools))
    results: dict[str, dict[str, dict]] = {t: {} for t in tools}
    last: dict[str, tuple[int, float]] = {}  # tool -> (blocks, seconds) of its last run
    with tempfile.TemporaryDirectory() as tmp:
        for blocks in args.blocks:
            src = Path(tmp) / f"chain{blocks}.onnx"
            onnx.save(chain(blocks), src)
            for name, (_, cmd) in tools.items():
                prev = last.get(name)
                if prev is not None and (prev[1] is None or prev[1] * blocks / prev[0] > args.timeout):
                    results[name][str(blocks)] = {"seconds": None, "status": "skipped: would exceed the timeout"}
                    print(f"{blocks:>5} blocks  {name:<22} {'-':>10}  skipped: would exceed the timeout", flush=True)
                    continue
                dst = Path(tmp) / f"out-{blocks}-{name.replace(' ', '_')}.onnx"
                r = run_tool(cmd, src, dst, args.timeout)
                results[name][str(blocks)] = r
                last[name] = (blocks, r["seconds"])
                shown = f"{r['seconds']:.2f} s" if r["seconds"] is not None else "-"
                print(f"{blocks:>5} blocks  {name:<22} {shown:>10}  {r['status']}", flush=True)
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
        },
        "versions": _versions(list(tools)),
        "skipped": skipped,
        "blocks": args.blocks,
        "results": results,
    }
    args.out.mkdir(exist_ok=True)
    write(args.out / "fold_speed.json", json.dumps(report, indent=2) + "\n")
    write(args.out / "fold_speed.md", _markdown(report))
    _plot(report, args.out / "fold_speed.png")
    print((args.out / "fold_speed.md").read_text())
    return 0


def _versions(tools: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in [
        "normonnx",
        "onnx",
        "onnxruntime",
        "onnx-graphsurgeon",
        "onnxsim",
        "onnxslim",
        "onnxscript",
        "onnxoptimizer",
    ]:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _markdown(report: dict) -> str:
    blocks = [str(b) for b in report["blocks"]]
    base = report["results"]["normonnx"]
    lines = [
        "# Fold speed: Conv+BN+ReLU chains (32 channels, 3x3), whole process",
        "",
        "Wall time of one process per tool on the same file, measured side by side in one run"
        f" on {report['machine']['cpus']} CPUs; best of two runs for tools under 30 s."
        " Ratio: the tool's time / normonnx's (default, with parity check).",
        "",
        "| tool | " + " | ".join(f"{b} blocks" for b in blocks) + " | BN left | scaling x4 |",
        "|---|" + "---|" * (len(blocks) + 2),
    ]
    for name, per in report["results"].items():
        cells = []
        for b in blocks:
            r = per.get(b, {})
            if r.get("seconds") is None or r.get("status") != "ok":
                cells.append(r.get("status", "-"))
                continue
            ratio = r["seconds"] / base[b]["seconds"] if base.get(b, {}).get("seconds") else float("nan")
            cells.append(f"{r['seconds']:.2f} s ({ratio:.2f}x)")
        left = [str(per[b].get("bn_left", "-")) for b in blocks if b in per]
        scale = "-"
        if "1000" in per and "4000" in per and per["1000"].get("seconds") and per["4000"].get("seconds"):
            scale = f"{per['4000']['seconds'] / per['1000']['seconds']:.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'/'.join(left)} | {scale} |")
    fold_only = report["results"].get("normonnx --no-verify", {})
    notes = []
    for b in blocks:
        base_b = fold_only.get(b, {}).get("seconds")
        peers = [
            f"{name} {per[b]['seconds'] / base_b:.1f}x"
            for name, per in report["results"].items()
            if not name.startswith("normonnx") and base_b and per.get(b, {}).get("status") == "ok"
        ]
        if peers:
            notes.append(f"{b} blocks: " + ", ".join(peers))
    lines += [
        "",
        "The default `normonnx fold` also runs the original and the folded model on three seeded inputs,"
        " each in its own onnxruntime process (side by side under 1 GiB of weights), and writes nothing"
        " unless they agree; the other tools do not check by default (onnxsim's check_n and"
        " onnxslim's --model-check are opt-in). Fold work alone"
        " (`--no-verify`), the others' time over normonnx's: " + "; ".join(notes) + ".",
        "Deep chains without skip connections are chaotic in float32, so their parity is judged against"
        " onnxruntime's own optimizer noise where the plain gate cannot hold (see normonnx/validate/parity.py).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
    if report["skipped"]:
        lines.append("Not installed (skipped): " + ", ".join(report["skipped"]))
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    """Seconds per tool and size on log axes with plain tick labels; a run that timed out is an x at its
    time limit (it took longer), one skipped for that reason a hollow x, so a line that stops is not
    mistaken for a tool that was not measured."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from normonnx.reports.plots import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    limits = [float(m.group(1)) for per in report["results"].values() for r in per.values()
              if (m := re.match(r"timeout after (\d+)", r.get("status", "")))]  # fmt: skip
    limit = max(limits, default=None)
    for k, (name, per) in enumerate(report["results"].items()):
        pts = [(int(b), r["seconds"]) for b, r in per.items() if r.get("seconds") and r.get("status") == "ok"]
        (line,) = ax.plot(*zip(*pts, strict=False), marker="o", label=name) if pts else ax.plot([], [], label=name)
        timed_out = [int(b) for b, r in per.items() if r.get("status", "").startswith("timeout")]
        skipped = [int(b) for b, r in per.items() if r.get("status", "").startswith("skipped")]
        if limit and timed_out:
            ax.scatter(timed_out, [limit * 1.1**k] * len(timed_out), marker="x", s=70, color=line.get_color())
        if limit and skipped:
            ax.scatter(skipped, [limit * 1.1**k] * len(skipped), marker="x", s=70, color=line.get_color(), alpha=0.4)
    if limit:
        ax.axhline(limit, color="gray", linestyle=":", linewidth=1)
        ax.annotate(f"time limit {limit:g} s", (report["blocks"][0], limit), textcoords="offset points",
                    xytext=(0, 4), fontsize=7, color="gray")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xticks(report["blocks"])
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel("Conv+BN+ReLU blocks")
    ax.set_ylabel("whole-process seconds (log scale)")
    ax.set_title("Fold time, lower is better; x: timed out at the limit (faint x: skipped, would time out)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


if __name__ == "__main__":
    sys.exit(main())
