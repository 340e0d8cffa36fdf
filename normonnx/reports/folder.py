"""Every report file normonnx writes: report folders a reviewer can paste (report.md, report.json and PNG
plots side by side), a many-file run's summary.json, and one report's JSON document.

Without matplotlib the markdown and JSON are still written and the markdown
says the plots are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from normonnx.errors import OutputError
from normonnx.fileio import write_json_atomic, write_text_atomic
from normonnx.reports.markdown import bench_markdown, check_markdown, convert_markdown, demo_markdown
from normonnx.reports.plots import (
    plot_demo_summary,
    plot_divergence_path,
    plot_latency,
    plot_output_errors,
    plot_stats,
)
from normonnx.results import BatchReport, BenchReport, CheckReport, ConvertReport, DemoReport, Report


def _folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot make the report folder ({e.strerror})") from None
    return folder


def write_report(folder: str | os.PathLike, check: CheckReport | None = None, bench: BenchReport | None = None) -> Path:
    """report.md, report.json and the plots of a check and/or a bench run."""
    folder = _folder(folder)
    parts, data, plots = [], {}, []
    if check is not None:
        parts.append(check_markdown(check))
        data["check"] = check.to_dict()
        if plot_output_errors(check, folder / "output_errors.png"):
            plots.append("output_errors.png")
        if plot_divergence_path(check, folder / "divergence_path.png"):
            plots.append("divergence_path.png")
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


def write_convert_report(folder: Path, r: ConvertReport) -> None:
    """report.md, report.json and the latency plot of a convert run, beside the models it wrote."""
    plot_stats(r.latency, folder / "latency.png", f"{r.name}: ORT CPU latency")
    write_text_atomic(folder / "report.md", convert_markdown(r))
    write_json_atomic(folder / "report.json", r.to_dict())


def write_demo_report(
    folder: str | os.PathLike, summary: str, reports: list[ConvertReport], failures: list[str], opset: int, style: str
) -> None:
    folder = _folder(folder)
    write_text_atomic(folder / "report.md", demo_markdown(summary, reports, failures, opset, style))
    write_json_atomic(folder / "report.json", DemoReport(opset, style, reports, failures).to_dict())
    plot_demo_summary(reports, folder / "summary.png")


def write_summary(folder: str | os.PathLike, report: BatchReport) -> Path:
    """OUTDIR/summary.json of a many-file run (the folder holds the outputs and any per-file reports)."""
    path = Path(folder) / "summary.json"
    write_json_atomic(path, report.to_dict())
    return path


def write_document(path: str | os.PathLike, report: Report) -> Path:
    """One report's JSON document in a file: a many-file check's per-file report."""
    return write_json_atomic(path, report.to_dict())
