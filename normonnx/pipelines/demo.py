"""``normonnx demo``: convert over the bundled reference zoo, one summary table, one verdict.

The zoo (models/zoo.py, trained checkpoints in models/checkpoints/) and its
held-out data (models/data.py, generated from a fixed seed) live in the
repository, so the demo runs from the repository root.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from normonnx.errors import NormonnxError, UnusableInputError
from normonnx.pipelines.convert import ConvertReport, convert
from normonnx.reports.folder import write_demo_report
from normonnx.reports.text import render_demo


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step elsewhere."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def show(self, name: str, step: str) -> None:
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {name}: {step}"
            f" ({time.perf_counter() - self.start:.0f} s)"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:100])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _zoo():
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from models.data import heldout_set
        from models.zoo import ZOO
    except ImportError as e:
        raise UnusableInputError(
            f"the reference zoo (models/zoo.py) is not importable here ({e}); run from the repository root"
        ) from None
    return ZOO, heldout_set


def run_demo(
    out_dir: str | os.PathLike = "out/demo",
    *,
    opset: int = 18,
    style: str = "auto",
    only: list[str] | None = None,
    bench_runs: int = 200,
) -> tuple[list[ConvertReport], list[str]]:
    """Convert every zoo model; returns the reports and the failures (name: reason)."""
    zoo, heldout_set = _zoo()
    names = only or list(zoo)
    unknown = sorted(set(names) - set(zoo))
    if unknown:
        raise UnusableInputError(f"unknown zoo models: {', '.join(unknown)}; known: {', '.join(zoo)}")
    data = heldout_set().images
    out = Path(out_dir)
    bar = Progress(len(names))
    reports, failures = [], []
    for name in names:
        entry = zoo[name]
        try:
            report = convert(
                f"models.zoo:{name}",
                out / name,
                checkpoint=str(entry.checkpoint),
                opset=opset,
                style=style,
                data=data,
                bench_runs=bench_runs,
                name=name,
                progress=lambda step, name=name: bar.show(name, step),
            )
            reports.append(report)
            if not report.passed:
                failures.append(f"{name}: parity or top-1 agreement failed")
        except NormonnxError as e:
            failures.append(f"{name}: {e}")
        bar.advance()
    bar.show("all", "done")
    bar.close()
    summary = render_demo(reports, {n: zoo[n].families for n in names})
    write_demo_report(out, summary, reports, failures, opset, style)
    return reports, failures
