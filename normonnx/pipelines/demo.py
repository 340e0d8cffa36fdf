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

from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.pipelines.convert import ConvertReport, convert
from normonnx.errors import NormonnxError, UnusableInputError
from normonnx.fileio import write_json_atomic, write_text_atomic


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


def _short_forms(forms: dict[str, int]) -> str:
    """{"groupnorm:Reshape/InstanceNormalization/Reshape": 7} -> "7 groupnorm (decomposed)"."""
    parts = []
    for key, n in sorted(forms.items()):
        family, _, form = key.partition(":")
        kind = "op" if form == "op" else "Mul/Add" if form == "Mul/Add per channel" else "decomposed"
        parts.append(f"{n} {family} ({kind})")
    return ", ".join(parts) or "0"


def summary_table(reports: list[ConvertReport], families: dict[str, tuple[str, ...]]) -> str:
    head = (
        "model",
        "families",
        "layers",
        "in export",
        "normonnx folded",
        "left in model (form)",
        "max error",
        "speed-up",
        "vs floor",
        "top-1",
        "",
    )
    rows = [
        (
            r.name,
            "+".join(families.get(r.name, ())),
            str(r.layer_count),
            str(len(r.norms)),
            str(r.folded),
            _short_forms(r.forms_after),
            f"{r.max_error:.2g}" if r.max_error is not None else "-",
            f"{r.speedup:.2f}x" if r.speedup is not None else "-",
            f"{r.floor_ratio:.2f}" if r.floor_ratio is not None else "-",
            f"{r.top1:.2%}" if r.top1 is not None else "-",
            "PASSED" if r.passed else "FAILED",
        )
        for r in reports
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


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
    families = {n: zoo[n].families for n in names}
    table = summary_table(reports, families)
    write_text_atomic(out / "report.md", _markdown(table, reports, failures, opset, style))
    write_json_atomic(
        out / "report.json",
        {"schema": SCHEMA_VERSION, "opset": opset, "style": style, "models": [r.to_dict() for r in reports], "failures": failures},
    )
    _plot(reports, out / "summary.png")
    return reports, failures


def _markdown(table: str, reports, failures, opset: int, style: str) -> str:
    lines = [
        f"# normonnx demo: {'PASSED' if not failures else 'FAILED'}",
        "",
        f"Every reference model converted at opset {opset}, style {style}: exported, folded, checked against torch"
        " eager, top-1 agreement on the held-out shapes, latency on onnxruntime CPU. Columns: normalization"
        " layers of the torch model; normalizations in the export (torch's exporter already folds Conv->BN);"
        " those normonnx folded; those left in the deployed model, and their form; max |error| against torch;"
        " speed-up = the unfolded export's time over the folded model's; vs floor = the folded model's time over"
        " the same network with its normalization layers removed (1.00 = nothing left to gain).",
        "",
        "```",
        table,
        "```",
        "",
        *(f"- [{r.name}]({r.name}/report.md)" for r in reports),
        *(f"- FAILED {f}" for f in failures),
    ]
    if reports:
        lines += ["", "![summary](summary.png)"]
    return "\n".join(lines) + "\n"


def _plot(reports: list[ConvertReport], path: Path) -> None:
    from normonnx.reports.plots import pyplot, save_figure

    plt = pyplot()
    if plt is None or not reports:
        return
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
