"""The PNG plots of the reports (matplotlib on the Agg backend, written atomically).

Plots need matplotlib (``pip install normonnx[report]``); without it every
plot function returns False and the reports say the plots are missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normonnx.pipelines.convert import ConvertReport
    from normonnx.validate.benchmark import BenchReport
    from normonnx.validate.check import CheckReport
    from normonnx.validate.latency import LatencyStats


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


def plot_output_errors(report: CheckReport, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    outs = report.parity.outputs
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(outs) + 2), 3.8))
    xs = range(len(outs))
    ax.bar(
        xs,
        [max(o.max_abs, 1e-12) for o in outs],
        color=["tab:green" if o.passed else "tab:red" for o in outs],
        label="max |diff|",
    )
    ax.scatter(xs, [max(o.threshold, 1e-12) for o in outs], marker="_", s=600, color="black", label="threshold")
    ax.set_xticks(list(xs), [o.name for o in outs], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("absolute error")
    ax.set_title(f"{Path(report.candidate).name} vs {Path(report.reference).name}: per-output error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_stats(stats: dict[str, LatencyStats], path: Path, title: str) -> bool:
    """Latency distributions, one box per model."""
    plt = pyplot()
    if plt is None or not stats:
        return False
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(stats)))
    names = list(stats)
    ax.boxplot([stats[n].times_ms for n in names], orientation="horizontal", showfliers=True)
    ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_xlabel("latency per run (ms)")
    ax.set_title(title, fontsize=10)
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
    """Speed-up over the unfolded export and latency over the floor, one pair of bars per model."""
    plt = pyplot()
    if plt is None or not reports:
        return False
    names = [r.name for r in reports]
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = range(len(names))
    speed = [r.speedup or 0 for r in reports]
    floor = [r.floor_ratio or 0 for r in reports]
    ax.bar([x - 0.2 for x in xs], speed, width=0.4, label="speed-up vs unfolded export")
    ax.bar([x + 0.2 for x in xs], floor, width=0.4, label="latency / no-normalization floor")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set_title("onnxruntime CPU, interleaved runs (median of per-round ratios)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
