"""``normonnx demo``: convert over the bundled reference zoo, one summary table, one verdict.

The zoo (``normonnx.zoo``, its trained checkpoints as package data) and its
held-out data (``normonnx.zoo.data``, generated from a fixed seed) ship
inside the package, so the demo runs wherever normonnx is installed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from normonnx.errors import NormonnxError, OutputError, UnusableInputError
from normonnx.pipelines.convert import convert
from normonnx.reports.folder import write_demo_report
from normonnx.reports.progress import Progress
from normonnx.reports.text import render_demo
from normonnx.results import ConvertReport
from normonnx.torchfront import require_torch

log = logging.getLogger(__name__)


def _zoo():
    """The zoo ships inside the package: it needs torch (the export extra), not the repository."""
    require_torch()
    from normonnx.zoo import ZOO
    from normonnx.zoo.data import heldout_set

    return ZOO, heldout_set


def run_demo(
    output: str | os.PathLike = "out/demo",
    *,
    opset: int | None = None,
    norm_style: str = "auto",
    target: str | None = None,
    only: list[str] | None = None,
    runs: int = 200,
) -> tuple[list[ConvertReport], list[str]]:
    """Convert every zoo model; returns the reports and the failures (name: reason)."""
    from normonnx.pipelines.emit import check_opset, check_style
    from normonnx.pipelines.export import export_opset

    opset = export_opset(opset, target)
    check_opset(opset)
    check_style(norm_style)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; the demo writes a report folder")
    zoo, heldout_set = _zoo()
    names = list(zoo) if only is None else only
    unknown = sorted(set(names) - set(zoo))
    if unknown:
        raise UnusableInputError(f"unknown zoo models: {', '.join(unknown)}; known: {', '.join(zoo)}")
    data = heldout_set().images
    out = Path(output)
    reports, failures = [], []
    with Progress(len(names), "demo") as bar:
        for name in names:
            entry = zoo[name]

            def step(what: str, name: str = name) -> None:
                bar.update(note=f"{name}: {what}")  # convert logs the step itself

            try:
                report = convert(
                    f"normonnx.zoo:{name}",
                    out / name,
                    checkpoint=str(entry.checkpoint),
                    opset=opset,
                    norm_style=norm_style,
                    target=target,
                    data=data,
                    runs=runs,
                    name=name,
                    progress=step,
                    dynamic_batch=True,  # top-1 agreement then runs in batches
                    precision="int8",
                    require_int8=False,  # shown where it holds, not a failure of the demo where it does not
                )
                reports.append(report)
                if not report.passed:
                    failures.append(f"{name}: parity or top-1 agreement failed")
            except NormonnxError as e:
                failures.append(f"{name}: {e}")
            bar.advance()
    summary = render_demo(reports, {n: zoo[n].families for n in names})
    write_demo_report(out, summary, reports, failures, opset, norm_style)
    return reports, failures
