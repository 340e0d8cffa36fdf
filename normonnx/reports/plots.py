"""Reports a reviewer can paste: report.md, report.json and PNG plots in one folder.

Plots need matplotlib (``pip install normonnx[report]``); without it the
markdown and JSON are still written and the markdown says the plots are
missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from normonnx.fileio import write_json_atomic, write_text_atomic
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


def check_markdown(report: CheckReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# check: {verdict}",
        "",
        f"Candidate `{report.candidate}` against {report.reference_kind} reference `{report.reference}` on"
        f" {report.provider.upper()}, {report.parity.samples} input sets ({report.inputs}).",
        "",
        "| output | shape | max abs | max rel | cosine | p99 abs | threshold | judged by | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in report.parity.outputs:
        lines.append(
            f"| {o.name} | {o.shape} | {o.max_abs:.3g} | {o.max_rel:.3g} | {o.cosine:.9f} | {o.p99_abs:.3g} |"
            f" {o.threshold:.3g} | {o.judged_by} | {'pass' if o.passed else 'FAIL: ' + o.reason} |"
        )
    loc = report.localization
    if loc is not None:
        lines += ["", f"Localization over {loc.compared} shared intermediate tensors:"]
        if loc.first:
            d = loc.first
            lines.append(
                f"first divergence at node `{d.node}` ({d.op}), tensor `{d.tensor}`:"
                f" max|diff| {d.max_abs:.3g} > {d.threshold:.3g}"
            )
        else:
            lines.append(loc.note or "no intermediate tensor diverges")
    lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def bench_markdown(report: BenchReport) -> str:
    lines = [
        f"# bench on {report.provider.upper()}" + (f", {report.threads} threads" if report.threads else ""),
        "",
        f"Inputs {report.input_shapes}; ORT_ENABLE_ALL; runs interleaved after warm-up.",
        "",
        "| model | runs | median ms | p10 ms | p90 ms | throughput /s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report.stats.items():
        lines.append(
            f"| {name} | {s.runs} | {s.median_ms:.3f} | {s.p10_ms:.3f} | {s.p90_ms:.3f} | {s.throughput:.1f} |"
        )
    if report.speedup:
        sp = report.speedup
        lines += [
            "",
            f"Speed-up of `{sp.candidate}` over `{sp.baseline}`: **{sp.median:.3f}x**"
            f" (per-round ratio p10 {sp.p10:.3f}, p90 {sp.p90:.3f}).",
        ]
    return "\n".join(lines) + "\n"


def write_report(folder: str | os.PathLike, check: CheckReport | None = None, bench: BenchReport | None = None) -> Path:
    """report.md, report.json and the plots of a check and/or a bench run."""
    from normonnx.errors import OutputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot make the report folder ({e.strerror})") from None
    parts, data, plots = [], {}, []
    if check is not None:
        parts.append(check_markdown(check))
        data["check"] = check.to_dict()
        if plot_output_errors(check, folder / "output_errors.png"):
            plots.append("output_errors.png")
    if bench is not None:
        parts.append(bench_markdown(bench))
        data["bench"] = bench.to_dict(with_times=True)
        if plot_latency(bench, folder / "latency.png"):
            plots.append("latency.png")
    if plots:
        parts.append("\n".join(f"![{p}]({p})" for p in plots) + "\n")
    elif check is not None or bench is not None:
        parts.append("(plots not drawn: matplotlib is not installed)\n")
    write_text_atomic(folder / "report.md", "\n".join(parts))
    write_json_atomic(folder / "report.json", data)
    return folder
