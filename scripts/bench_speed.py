#!/usr/bin/env python
"""Benchmark: what a user waits for, whole commands as processes, side by side with the peers in one run.

On ResNet18/50 and a ViT-S/16 exported by torch.onnx (random weights, BatchNorm kept; built here) and on
the real-world corpus, each round runs, in a shuffled order, every command once:

- ``normonnx fold`` (with its parity proof) against onnxsim and onnxslim (neither checks anything);
- ``normonnx fold --no-verify`` against the load+save floor (``onnx.load`` then ``onnx.save``), and against that
  floor with the checks normonnx makes on the way (onnx's checker on the source, and its full check, shape
  inference included, on the output): the "checked floor", shown with no target;
- ``normonnx check A --against B`` (3 seeded input sets) against Polygraphy's two-run comparison at the same
  input count (``polygraphy run A --onnxrt --save-outputs``, then ``run B --onnxrt --load-outputs``);
- ``normonnx --version``.

Times are wall-clock seconds of the whole process, the median over rounds; ratios are per round, then the
median. normonnx's modules are compiled to bytecode first, as pip compiles every installed package (the
peers' included). Writes benchmarks/speed.{md,json,png} when it finishes.

    python scripts/bench_speed.py [--rounds 5] [--corpus corpus] [--allow-missing]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import missing_note, require, save_figure, start, write

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
PEERS = ["onnxsim", "onnxslim", "polygraphy"]
TARGETS = {"fold / onnxslim": 1.0, "fold / onnxsim": 0.6, "check / polygraphy": 1.5, "no-verify / floor": 1.5}
SHOWN = "no-verify / checked floor"  # a ratio shown beside the targets, with none of its own


def build_models(folder: Path) -> list[Path]:
    """ResNet18, ResNet50 and ViT-S/16 as torch.onnx (TorchScript, opset 17) writes them."""
    import warnings

    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from speed_nets import resnet18, resnet50, vit_s16

    paths = []
    for factory in (resnet18, resnet50, vit_s16):
        path = folder / f"{factory.__name__}.onnx"
        model, example = factory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, example, str(path), opset_version=17, dynamo=False, input_names=["x"],
                              output_names=["y"], training=torch.onnx.TrainingMode.PRESERVE)  # fmt: skip
        paths.append(path)
    return paths


def _timed(cmd: list[str], cwd: Path) -> tuple[float, int]:
    began = time.perf_counter()
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=900)
    return time.perf_counter() - began, run.returncode


# The load+save floor with the checks normonnx makes: onnx's checker on the source, the full one on the output.
_CHECKED_FLOOR = (
    "import onnx; src, out = {src!r}, {out!r}; onnx.checker.check_model(src);"
    " onnx.save(onnx.load(src), out); onnx.checker.check_model(out, full_check=True)"
)


def commands(src: Path, work: Path, missing: list[str]) -> dict[str, list[str]]:
    py = sys.executable
    out = {
        "fold": [str(BIN / "normonnx"), "fold", str(src), "-o", str(work / "fold.onnx")],
        "no-verify": [str(BIN / "normonnx"), "fold", str(src), "-o", str(work / "nv.onnx"), "--no-verify"],
        "floor": [py, "-c", f"import onnx; onnx.save(onnx.load({str(src)!r}), {str(work / 'floor.onnx')!r})"],
        "checked floor": [py, "-c", _CHECKED_FLOOR.format(src=str(src), out=str(work / "checked.onnx"))],
        "check": [str(BIN / "normonnx"), "check", str(work / "cand.onnx"), "--against", str(src)],
        "version": [str(BIN / "normonnx"), "--version"],
    }
    if "onnxsim" not in missing:
        out["onnxsim"] = [py, "-m", "onnxsim", str(src), str(work / "sim.onnx")]
    if "onnxslim" not in missing:
        out["onnxslim"] = [py, "-m", "onnxslim", str(src), str(work / "slim.onnx")]
    if "polygraphy" not in missing:
        poly = str(BIN / "polygraphy")
        out["polygraphy"] = [
            "bash", "-c",
            f"{poly} run {src} --onnxrt --iterations 3 --save-inputs {work}/in.json --save-outputs {work}/ref.json"
            f" -q && {poly} run {work}/cand.onnx --onnxrt --load-inputs {work}/in.json"
            f" --load-outputs {work}/ref.json -q",
        ]  # fmt: skip
    return out


def measure(src: Path, rounds: int, missing: list[str]) -> dict:
    """Every command ``rounds`` times, in a new shuffled order each round (the same machine state for all)."""
    with tempfile.TemporaryDirectory(prefix="normonnx-speed-") as tmp:
        work = Path(tmp)
        shutil.copy2(src, work / "cand.onnx")  # check's candidate: the model itself, whatever it holds
        cmds = commands(src, work, missing)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        failed: dict[str, int] = {}
        order = list(cmds)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                for leftover in ("fold.onnx", "nv.onnx"):
                    (work / leftover).unlink(missing_ok=True)
                seconds, code = _timed(cmds[name], work)
                times[name].append(seconds)
                if code:
                    failed[name] = code
    row = {"file": src.name, "mb": round(src.stat().st_size / 1e6, 1), "seconds": {}, "ratios": {}, "failed": failed}
    row["seconds"] = {name: statistics.median(t) for name, t in times.items()}
    pairs = {"fold / onnxslim": ("fold", "onnxslim"), "fold / onnxsim": ("fold", "onnxsim"),
             "check / polygraphy": ("check", "polygraphy"), "no-verify / floor": ("no-verify", "floor"),
             SHOWN: ("no-verify", "checked floor")}  # fmt: skip
    for label, (a, b) in pairs.items():
        if a in times and b in times and a not in failed and b not in failed:
            row["ratios"][label] = statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
    return row


def _versions() -> dict[str, str]:
    """The packages every command's time depends on (ml_dtypes: onnx imports it; 0.7.0 takes 1.1 s to)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnx", "onnxruntime", "ml_dtypes", "numpy", "onnxslim", "onnxsim", "polygraphy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# What a user waits for: whole commands, normonnx and its peers" + missing_note(meta["missing"]),
        "",
        f"`python scripts/bench_speed.py --rounds {meta['rounds']}` on {meta['machine']}; {meta['date']};"
        f" {meta['seconds']:.0f} s. Wall-clock seconds of each whole process (median over rounds, commands in a"
        " shuffled order each round); ratios per round, then the median. normonnx's modules are compiled to"
        " bytecode first, as pip compiles every installed package (the peers' are). Targets: "
        + ", ".join(f"{k} <= {v:g}" for k, v in TARGETS.items())
        + "; `normonnx --version` < 0.3 s. Packages: "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
        + " (ml_dtypes as constraints.txt pins it).",
        "",
        "| file | MB | fold | onnxslim | onnxsim | no-verify | floor | checked floor | check | polygraphy | --version |"
        + "".join(f" {k} |" for k in (*TARGETS, SHOWN)),
        "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (len(TARGETS) + 1),
    ]
    names = ("fold", "onnxslim", "onnxsim", "no-verify", "floor", "checked floor", "check", "polygraphy", "version")
    for r in rows:
        cells = [f"{r['seconds'][n]:.2f}" if n in r["seconds"] else "-" for n in names]
        cells += [f"{r['ratios'][k]:.2f}" if k in r["ratios"] else "-" for k in (*TARGETS, SHOWN)]
        lines.append(f"| {r['file']} | {r['mb']} | " + " | ".join(cells) + " |")
    lines += ["", "Geometric mean of the per-file ratios (the median of each file's rounds):", ""]
    for k, target in TARGETS.items():
        g = geomean([r["ratios"][k] for r in rows if k in r["ratios"]])
        worst = max((r["ratios"][k] for r in rows if k in r["ratios"]), default=None)
        if g is not None:
            verdict = "meets" if g <= target else "misses"
            lines.append(f"- {k}: geomean {g:.2f}, worst {worst:.2f} (target <= {target:g}: {verdict} it)")
    shown = [r["ratios"][SHOWN] for r in rows if SHOWN in r["ratios"]]
    if shown:
        lines.append(
            f"- {SHOWN}: geomean {geomean(shown):.2f}, worst {max(shown):.2f} (no target: the floor with onnx's"
            " checker on the source and its full check on the output, as normonnx makes them)"
        )
    versions = [r["seconds"]["version"] for r in rows if "version" in r["seconds"]]
    lines.append(f"- `normonnx --version`: median {statistics.median(versions):.3f} s")
    failed = [f"{r['file']}: {', '.join(r['failed'])}" for r in rows if r["failed"]]
    if failed:
        lines += ["", "Commands that exited non-zero (their times are not in the ratios): " + "; ".join(failed)]
    lines += ["", "![speed](speed.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.3 * len(rows) + 2))
    y = list(range(len(rows)))
    for k, marker in zip((*TARGETS, SHOWN), ("o", "x", "^", "s", "d"), strict=True):
        label = f"{k} (target {TARGETS[k]:g})" if k in TARGETS else f"{k} (no target)"
        ax.scatter([r["ratios"].get(k, float("nan")) for r in rows], y, marker=marker, label=label)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [r["file"] for r in rows], fontsize=7)
    ax.set_xscale("log")
    ticks = [0.1, 0.2, 0.3, 0.5, 0.6, 1.0, 1.5, 2.0, 3.0, 5.0]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("time ratio per round, median (log scale; below the target: met)")
    ax.set_title("normonnx commands against their peers, whole processes", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)  # below: no point hidden
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def installed_bytecode() -> None:
    """normonnx's modules compiled to bytecode, as pip compiles every package it installs (the peers' are):
    a checkout run under PYTHONDONTWRITEBYTECODE, as on this machine, would compile them at every start."""
    import compileall

    for package in ("normonnx", "models"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    parser.add_argument("--only-models", action="store_true", help="ResNet18/50 and the ViT only (no corpus)")
    parser.add_argument("--min-mb", type=float, default=5.0, help="corpus files from this size on (default 5 MB)")
    parser.add_argument("--allow-missing", action="store_true", help="run without the peers not installed")
    args = parser.parse_args()
    start("bench_speed", 20 if not args.only_models else 8)
    missing = require(PEERS, args.allow_missing)
    installed_bytecode()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="normonnx-speed-models-") as tmp:
        files = build_models(Path(tmp))
        if not args.only_models:
            files += sorted(p for p in args.corpus.rglob("*.onnx") if p.stat().st_size >= args.min_mb * 1e6)
        rows = []
        for k, src in enumerate(files, 1):
            row = measure(src, args.rounds, missing)
            rows.append(row)
            print(f"[{k}/{len(files)}] {src.name}: " + ", ".join(f"{n} {v:.2f}" for n, v in row["ratios"].items()),
                  flush=True)  # fmt: skip
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "missing": missing,
        "seconds": time.perf_counter() - began,
        "versions": _versions(),
    }
    write(OUT / "speed.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    write(OUT / "speed.md", markdown(rows, meta))
    plot(rows, OUT / "speed.png")
    print(f"wrote {OUT / 'speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
