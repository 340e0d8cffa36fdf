"""Markdown for report files: what a reviewer pastes. Tables go through ``reports.table``."""

from __future__ import annotations

from pathlib import Path

from normonnx.reports.table import table
from normonnx.reports.text import bisection_lines, convert_rows, gate_text, localization_lines
from normonnx.results import BenchReport, CheckReport, ConvertReport


def check_markdown(report: CheckReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# check: {verdict}",
        "",
        f"Candidate `{report.candidate}` against {report.reference_kind} reference `{report.reference}` on"
        f" {report.provider.upper()}, {report.parity.samples} input sets ({report.inputs}).",
        "",
    ]
    rows = [
        (o.name, o.shape, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.9f}", f"{o.p99_abs:.3g}",
         gate_text(o), o.judged_by, "pass" if o.passed else "FAIL: " + o.reason)
        for o in report.parity.outputs
    ]  # fmt: skip
    head = ("output", "shape", "max abs", "max rel", "cosine", "p99 abs", "threshold", "judged by", "result")
    lines.append(table(head, rows, markdown=True))
    if report.bisection is not None:
        lines += ["", "## Bisection", "", *bisection_lines(report.bisection)]
    loc = report.localization
    if loc is not None:
        lines += ["", "## Localization", "", *localization_lines(loc)]
        if loc.diverging:
            rows = [
                (f"`{d.node}`", d.op, d.module or "-", f"`{d.tensor}`", f"{d.max_abs:.3g}", f"{d.relative:.3g}")
                for d in loc.diverging
            ]
            head = ("node", "op", "module", "tensor", "max abs", "relative")
            lines += ["", "First persistent divergences, in graph order:", "", table(head, rows, markdown=True)]
    lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def bench_markdown(report: BenchReport) -> str:
    lines = [
        f"# bench on {report.provider.upper()}" + (f", {report.threads} threads" if report.threads else ""),
        "",
        f"Inputs {report.input_shapes}; ORT_ENABLE_ALL; runs interleaved after warm-up.",
        "",
    ]
    rows = [
        (name, s.runs, f"{s.median_ms:.3f}", f"{s.p10_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.throughput:.1f}")
        for name, s in report.stats.items()
    ]
    lines.append(table(("model", "runs", "median ms", "p10 ms", "p90 ms", "throughput /s"), rows, markdown=True))
    if report.speedup:
        sp = report.speedup
        lines += [
            "",
            f"Speed-up of `{sp.candidate}` over `{sp.baseline}`: **{sp.median:.3f}x**"
            f" (per-round ratio p10 {sp.p10:.3f}, p90 {sp.p90:.3f}).",
        ]
    return "\n".join(lines) + "\n"


def convert_markdown(r: ConvertReport) -> str:
    verdict = "PASSED" if r.passed else "FAILED"
    rows = convert_rows(r)
    norms = [(n.family, n.form, f"`{n.anchor}`", "folded " + n.why if n.folded else "kept: " + n.why) for n in r.norms]
    lines = [
        f"# {r.name}: {verdict}",
        "",
        f"`{r.spec}`" + (f" with `{r.checkpoint}`" if r.checkpoint else "") + f", {r.exporter}, style {r.style}.",
        "",
        table(("", ""), rows, markdown=True),
        "",
        table(("normalization", "form", "node", "result"), norms, markdown=True),
    ]
    lines += [f"- {n}" for n in r.notes]
    if (Path(r.files.get("model", ".")).parent / "latency.png").exists():
        lines += ["", "![latency](latency.png)"]
    return "\n".join(lines) + "\n"


def demo_markdown(summary: str, reports: list[ConvertReport], failures: list[str], opset: int, style: str) -> str:
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
        summary,
        "```",
        "",
        *(f"- [{r.name}]({r.name}/report.md)" for r in reports),
        *(f"- FAILED {f}" for f in failures),
    ]
    if reports:
        lines += ["", "![summary](summary.png)"]
    return "\n".join(lines) + "\n"
