"""The PNG plots of the reports (matplotlib on the Agg backend, written atomically).

Plots need matplotlib (``pip install normonnx[report]``); without it every
plot function returns False and the reports say the plots are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from normonnx.results import BenchReport, CheckReport, ConvertReport, LatencyStats


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> None:
    """Save a figure atomically."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _wrapped(title: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) or title


def plot_output_errors(report: CheckReport, path: Path) -> bool:
    """Per output: max |diff| against its threshold, as points on a log axis (bars on a log axis
    would start at an arbitrary floor and exaggerate small errors)."""
    plt = pyplot()
    if plt is None:
        return False
    outs = report.parity.outputs
    floor = 1e-12
    fig, ax = plt.subplots(figsize=(max(5.5, 0.8 * len(outs) + 2.5), 4.2))
    xs = list(range(len(outs)))
    ok = [o.passed for o in outs]
    errors = [max(o.max_abs, floor) for o in outs]
    for passed, color, label in ((True, "tab:green", "max |diff|, passed"), (False, "tab:red", "max |diff|, failed")):
        pts = [(x, e) for x, e, k in zip(xs, errors, ok, strict=True) if k == passed]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, zorder=3, label=label)
    limits = [max(o.threshold or floor, floor) for o in outs]  # an SQNR gate has no max|diff| threshold
    ax.scatter(xs, limits, marker="_", s=700, color="black", label="threshold")
    ax.set_xticks(xs, [o.name for o in outs], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(outs) - 0.4)
    ax.set_yscale("log")
    ax.set_ylabel(f"max absolute error (log scale; 0 drawn at {floor:g})")
    ax.grid(axis="y", which="major", alpha=0.3)
    title = f"{Path(report.candidate).name} vs {Path(report.reference).name}: max error per output"
    ax.set_title(_wrapped(title), fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_divergence_path(report: CheckReport, path: Path) -> bool:
    """The relative error of each compared tensor from the first divergence to an output, node by node."""
    loc = report.localization
    plt = pyplot()
    if plt is None or loc is None or not loc.path:
        return False
    floor = 1e-12
    steps = loc.path
    fig, ax = plt.subplots(figsize=(max(5.5, 0.45 * len(steps) + 2.5), 4.2))
    xs = list(range(len(steps)))
    ax.plot(xs, [max(p["relative"], floor) for p in steps], marker="o", color="tab:red")
    ax.set_xticks(xs, [f"{p['op']} {p['tensor']}"[:40] for p in steps], rotation=40, ha="right", fontsize=7)
    ax.set_yscale("log")
    # 1, 2 and 5 of every decade labelled: a path within one decade otherwise gets a single tick label.
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.set_ylabel("max|diff| / max(1, max|ref|)  (log scale)")
    ax.grid(axis="y", which="major", alpha=0.3)
    where = loc.first.module or loc.first.node
    ax.set_title(_wrapped(f"error from the first divergence ({where}) to the output"), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_stats(stats: dict[str, LatencyStats], path: Path, title: str) -> bool:
    """Latency distributions, one box per model: whiskers at p5/p95 and the axis fitted to them, so a
    few stalls of the machine do not squash the boxes; how many runs fall outside is said."""
    import numpy as np

    plt = pyplot()
    if plt is None or not stats:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.6 * len(stats)))
    names = list(stats)
    data = [np.asarray(stats[n].times_ms) for n in names]
    ax.boxplot(data, orientation="horizontal", whis=(5, 95), showfliers=False)
    lo = min(float(np.percentile(d, 5)) for d in data)  # the whiskers' span: boxes stay comparable
    hi = max(float(np.percentile(d, 95)) for d in data)
    pad = 0.05 * (hi - lo or hi or 1.0)
    ax.set_xlim(max(0.0, lo - pad), hi + pad)
    outside = sum(int(((d < np.percentile(d, 5)) | (d > np.percentile(d, 95))).sum()) for d in data)
    ax.set_yticks(range(1, len(names) + 1), [f"{n} (median {stats[n].median_ms:.3g} ms)" for n in names], fontsize=8)
    ax.set_xlabel("latency per run (ms); the axis spans the whiskers (p5-p95), not zero")
    ax.set_title(
        f"{_wrapped(title)}\nboxes p25-p75, whiskers p5-p95; {outside} runs outside them not drawn", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_latency(report: BenchReport, path: Path) -> bool:
    title = f"{report.provider.upper()}"
    if report.speedup:
        title += f": speed-up {report.speedup.median:.2f}x [{report.speedup.p10:.2f}, {report.speedup.p90:.2f}]"
    return plot_stats(report.stats, path, title)


def plot_demo_summary(reports: list[ConvertReport], path: Path) -> bool:
    """Two panels, one direction each: speed-up over the unfolded export (higher is better) and
    latency over the no-normalization floor (lower is better, 1.00 = nothing left to gain)."""
    plt = pyplot()
    if plt is None or not reports:
        return False
    names = [r.name for r in reports]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    ys = list(range(len(names)))
    panels = (
        (left, [r.speedup or 0 for r in reports], "tab:blue", "speed-up vs the unfolded export (higher is better)"),
        (
            right,
            [r.floor_ratio or 0 for r in reports],
            "tab:orange",
            "latency / no-normalization floor (lower is better)",
        ),
    )
    for ax, values, color, title in panels:
        ax.barh(ys, values, color=color)
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, v in zip(ys, values, strict=True):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max([*values, 1.0]) * 1.18)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ratio of median latencies (interleaved runs, onnxruntime CPU)", fontsize=8)
    left.set_yticks(ys, names, fontsize=8)
    left.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
