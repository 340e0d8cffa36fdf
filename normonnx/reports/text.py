"""What each command prints on a terminal: plain text, tables through ``reports.table``.

Renderers take the result objects (``normonnx.results``) and never compute
anything the report does not hold, so ``--json`` and the terminal agree.
"""

from __future__ import annotations

from collections import Counter

from normonnx.reports.table import few, human_bytes, table
from normonnx.results import (
    BatchReport,
    BenchReport,
    Bisection,
    CheckReport,
    ConvertReport,
    EmitReport,
    ExportReport,
    FoldReport,
    HalfReport,
    Inspection,
    Localization,
    QuantizeReport,
)


def render_fold(report: FoldReport, max_rows: int = 40) -> str:
    """The fold summary: before/after table, folds, refusals, parity."""
    b, a = report.before, report.after
    keys = sorted(set(b.norms) | set(a.norms))
    rows = [("nodes", b.nodes, a.nodes)]
    rows += [(key, b.norms.get(key, 0), a.norms.get(key, 0)) for key in keys]
    rows.append(("tensor data", human_bytes(b.tensor_bytes), human_bytes(a.tensor_bytes)))
    lines = [table(("", "before", "after"), rows), "", _op_table(b.ops, a.ops), ""]
    # --norm-affine folds a normalization's affine and keeps the normalization: said apart, so that the
    # line agrees with the table above (the layernorm is still there).
    affine = [n for n in report.folded if n.why.startswith("affine into")]
    folded, kept = [n for n in report.folded if n not in affine], report.kept
    by_family = Counter(n.family for n in folded)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(by_family.items())) or "none"
    lines.append(f"folded: {len(folded)} ({summary})")
    if affine:
        by_family = Counter(n.family for n in affine)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(by_family.items()))
        lines.append(f"affines folded into the next linear op, the normalization kept: {len(affine)} ({summary})")
    for n in kept[:max_rows]:
        lines.append(f"  kept {n.family} {n.anchor} [{n.form}]: {n.why}")
    if len(kept) > max_rows:
        lines.append(f"  ... {len(kept) - max_rows} more kept (see --report)")
    lines += [f"note: {n}" for n in report.notes]
    if report.parity is not None:
        lines.append(report.parity.summary())
    for name in report.stale_files:
        lines.append(
            f"note: the replaced output's weight file {name} is no longer used; normonnx does not delete files"
        )
    return "\n".join(lines)


def _op_table(before: dict[str, int], after: dict[str, int]) -> str:
    """Nodes per op type before and after, most frequent first, what changed marked."""
    ops = sorted(set(before) | set(after), key=lambda op: (-before.get(op, 0), op))
    rows = []
    for op in ops:
        b, a = before.get(op, 0), after.get(op, 0)
        rows.append((op, b, a, f"{a - b:+d}" if a != b else ""))
    return table(("op", "before", "after", "change"), rows)


def render_inspection(ins: Inspection) -> str:
    opsets = ", ".join(f"{d} {v}" for d, v in ins.opsets.items())
    lines = [
        f"{ins.source}: {ins.nodes} nodes, ir_version {ins.ir_version}, opset {opsets}"
        + (f", from {ins.producer}" if ins.producer else "")
    ]
    if ins.ops_without_kernel:
        ops = ", ".join(f"{op} ({n} node{'s' if n > 1 else ''})" for op, n in ins.ops_without_kernel.items())
        lines.append(
            f"onnxruntime has no kernel for: {ops}; runs need --custom-ops LIB (or --no-verify to fold unverified)"
        )
    if ins.target:
        lines.append(f"on {ins.target}: " + ("everything runs as it is" if not ins.not_on_target else "will not run"
                                             " as it is:"))  # fmt: skip
        lines += [f"  {what}" for what in ins.not_on_target]
        lines += [f"  known: {bug}" for bug in ins.target_bugs]
    if not ins.norms:
        lines.append("no normalization found")
        return "\n".join(lines)
    rows = [(n.family, n.form, n.anchor, f"foldable: {n.why}" if n.folded else f"kept: {n.why}") for n in ins.norms]
    lines.append(table(("family", "form", "node", "verdict"), rows))
    counts = Counter((n.family, n.folded) for n in ins.norms)
    fams = sorted({f for f, _ in counts})
    parts = [f"{f} {counts[(f, True)]}/{counts[(f, True)] + counts[(f, False)]}" for f in fams]
    lines.append(f"{sum(n.folded for n in ins.norms)} of {len(ins.norms)} foldable ({', '.join(parts)})")
    return "\n".join(lines)


def render_emit(report: EmitReport) -> str:
    opsets = f"opset {report.source_opset}" + (f" -> {report.opset}" if report.opset != report.source_opset else "")
    lines = [f"{opsets}, style {report.style}" + (f", target {report.target}" if report.target else "")]
    present = {k.split(":")[0] for k in (*report.norms_before, *report.norms_after)}  # the families it has
    if report.why:
        lines += [f"  {fam} {report.forms[fam]}: {why}" for fam, why in report.why.items() if fam in present]
    elif present & set(report.forms):
        lines.append("forms: " + ", ".join(f"{fam} {form}" for fam, form in report.forms.items() if fam in present))
    keys = sorted(set(report.norms_before) | set(report.norms_after))
    if keys:
        rows = [(k, report.norms_before.get(k, 0), report.norms_after.get(k, 0)) for k in keys]
        lines.append(table(("", "before", "after"), rows))
    for d in report.refused:
        lines.append(f"  kept {d.family} {d.node} as it was: {d.detail}")
    if report.parity is not None:
        lines.append(report.parity.summary())
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def render_export(report: ExportReport) -> str:
    lines = [render_emit(report.emit)]
    if report.dynamic:
        axes = ", ".join(f"{name}[{a}]={d}" for name, dims in report.dynamic.items() for a, d in dims.items())
        lines.append(f"dynamic axes: {axes}")
    if report.parity is not None:
        lines.append(report.parity.summary(" vs torch eager"))
    if report.parity_resized is not None:
        resized = ", ".join("x".join(map(str, s)) for s in report.resized_shapes)
        lines.append(report.parity_resized.summary(f" vs torch eager at {resized}"))
    return "\n".join(lines)


def gate_text(o) -> str:
    """An output's gate: its max|diff| threshold, or the SQNR an int8 output must reach."""
    return f"SQNR >= {o.min_sqnr_db:g} dB" if o.min_sqnr_db is not None else f"{o.threshold:.3g}"


def render_check(report: CheckReport) -> str:
    lines = [
        f"normonnx check {report.candidate} against {report.reference_kind} {report.reference}"
        f" on {report.provider}, {report.parity.samples} input sets ({report.inputs})"
    ]
    rows = []
    for o in report.parity.outputs:
        verdict = "pass" if o.passed else "FAIL"
        if o.judged_by != "gate":
            verdict += f" ({o.judged_by})"
        rows.append(
            (o.name, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", f"{o.cosine:.9f}", f"{o.p99_abs:.3g}",
             gate_text(o), verdict + (f": {o.reason}" if o.reason else ""))
        )  # fmt: skip
    lines.append(table(("output", "max abs", "max rel", "cosine", "p99 abs", "threshold", "result"), rows))
    if report.fp16_baseline is not None:
        base = ", ".join(f"{o.name} {o.max_abs:.3g}" for o in report.fp16_baseline.outputs)
        lines.append(f"the unmodified half model's error: {base} (the candidate may be at most 2x)")
    lines += bisection_lines(report.bisection)
    lines += localization_lines(report.localization)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def bisection_lines(b: Bisection | None) -> list[str]:
    """Which transformation bisection blamed, and in how many runs."""
    if b is None:
        return []
    if b.culprit:
        return [f"bisection over {len(b.candidates)} {b.kind}: {b.culprit} breaks it ({b.runs} runs)"]
    return [f"bisection over {len(b.candidates)} {b.kind}: none blamed ({b.note}; {b.runs} runs)"]


def localization_lines(loc: Localization | None) -> list[str]:
    """What localization found, in a few lines (shared by the text and markdown reports)."""
    if loc is None:
        return []
    how = ", ".join(f"{n} by {k}" for k, n in sorted(loc.aligned.items()))
    compared = f"{loc.compared} tensors compared" + (f" ({how})" if how else "")
    if not loc.first:
        return [f"localization: {loc.note or 'no compared tensor diverges for good'}; {compared}"]
    d = loc.first
    where = f" in module {d.module}" if d.module else ""
    if d.min_sqnr_db is not None and d.sqnr_db is not None:
        error = f"SQNR {d.sqnr_db:.1f} dB < {d.min_sqnr_db:g} dB (max|diff| {d.max_abs:.3g})"
    elif d.nonfinite:
        error = f"{d.nonfinite} values inf/NaN where the reference is finite"
    else:
        error = f"max|diff| {d.max_abs:.3g} > {d.threshold:.3g}"
    lines = [f"first divergence: node {d.node} ({d.op}){where}, output {d.tensor}: {error}; {compared}"]
    if d.inputs:
        lines.append(
            "  its inputs: " + ", ".join(f"{i['tensor']} {'agrees' if i['agrees'] else 'differs'}" for i in d.inputs)
        )
    if loc.changed_meaning:
        shown = ", ".join(loc.changed_meaning[:3]) + (" ..." if len(loc.changed_meaning) > 3 else "")
        lines.append(
            f"  {len(loc.changed_meaning)} shared names earlier or beside it hold another value while what is"
            f" computed from them agrees (a changed meaning, not a divergence): {shown}"
        )
    if len(loc.path) > 1:
        steps = [f"{p['op']} {p['relative']:.2g}" for p in loc.path]
        if len(steps) > 8:  # one readable line: the start, the end, and how many between (--report: all)
            steps = [*steps[:3], f"... {len(steps) - 6} more", *steps[-3:]]
        lines.append("  error to the output: " + " -> ".join(steps))
    return lines


def render_bench(report: BenchReport) -> str:
    runtime = "OpenVINO" if report.provider == "openvino" else "onnxruntime"
    if report.threads:
        threads = f"{report.threads} thread" + ("s" if report.threads > 1 else "")
    else:
        threads = f"{runtime}'s default threads ({report.cores} cores)"
    guessed = " (dynamic sizes chosen by normonnx; --shape sets them)" if report.shapes_guessed else ""
    lines = [f"normonnx bench on {report.provider}, {threads}, inputs {_shapes(report.input_shapes)}{guessed}"]
    rows = [
        (name, st.runs, f"{st.median_ms:.3f}", f"{st.p10_ms:.3f}", f"{st.p90_ms:.3f}", f"{st.throughput:.1f}")
        for name, st in report.stats.items()
    ]
    lines.append(table(("model", "runs", "median ms", "p10 ms", "p90 ms", "per second"), rows))
    if report.speedup:
        sp = report.speedup
        lines.append(
            f"speed-up of {sp.candidate} over {sp.baseline}: {sp.median:.3f}x (p10 {sp.p10:.3f}, p90 {sp.p90:.3f})"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def convert_rows(r: ConvertReport) -> list[tuple[str, str]]:
    """convert's results as (what, value) rows: the terminal and report.md show the same."""
    rows = [
        ("normalization layers in the torch model", f"{r.layer_count} ({r.layer_summary()})"),
        ("found in the export / folded by normonnx", f"{len(r.norms)} / {r.folded}"),
        ("left in the deployed model", f"{r.left}: {r.kept_forms()}"),
        ("max error vs torch", f"{r.max_error:.3g}" if r.max_error is not None else "-"),
        (
            ("top-1 agreement with torch", f"{r.top1:.4%} on {r.top1_samples} held-out inputs")
            if r.top1 is not None
            else ("top-1 agreement", "not measured (no data)")
        ),
    ]
    if r.speedup is not None:
        spread = f"[{r.speedup_spread[0]:.3f}, {r.speedup_spread[1]:.3f}]"
        rows.append(("speed-up vs unfolded export (ORT CPU)", f"{r.speedup:.3f}x {spread}"))
    if r.floor_ratio is not None:
        spread = f"[{r.floor_spread[0]:.3f}, {r.floor_spread[1]:.3f}]"
        rows.append(("latency / no-normalization floor", f"{r.floor_ratio:.3f} {spread}"))
    rows += int8_rows(r)
    return rows


def int8_rows(r: ConvertReport) -> list[tuple[str, str]]:
    """The int8 model of ``convert --precision int8``: its accuracy against float32 and torch, its speed."""
    judged = r.int8.output_model if r.int8 is not None else None
    if judged is None:
        return []
    theirs, worst = r.int8.baseline, judged.worst_sqnr()
    versus = ""
    if r.int8.written == "normonnx" and theirs is not None and theirs.worst_sqnr() is not None:
        versus = f" (onnxruntime's own flow {theirs.worst_sqnr():.1f} dB)"
    rows = [("int8 SQNR vs float32 (worst output)", (f"{worst:.1f} dB" if worst is not None else "-") + versus)]
    if not r.int8.passed:
        rows.append(("int8 model", "not written: fails its gate"))
    if r.top1_int8 is not None:
        rows.append(("int8 top-1 agreement with torch", f"{r.top1_int8:.4%} on the inputs calibration did not see"))
    if "folded" in r.latency and "int8" in r.latency:
        ratio = r.latency["folded"].median_ms / r.latency["int8"].median_ms
        rows.append(("int8 speed-up vs the folded float32 model", f"{ratio:.3f}x"))
    return rows


def render_convert(r: ConvertReport) -> str:
    """convert's result for a terminal (report.md holds the same as Markdown)."""
    rows = convert_rows(r)
    lines = [f"normonnx convert {r.spec} ({r.exporter}, style {r.style})", table(("result", "value"), rows)]
    kept = [n for n in r.norms if not n.folded]
    lines += [f"  kept {n.family} {n.anchor} [{n.form}]: {n.why}" for n in kept]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def render_batch(report: BatchReport) -> str:
    """One row per file of a many-file run."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    rows = [
        (
            r.source,
            fmt(r.nodes_before, "d"),
            fmt(r.nodes_after, "d"),
            fmt(r.folded, "d"),
            fmt(r.kept, "d"),
            fmt(r.max_error, ".2g"),
            f"{r.seconds:.1f} s",
            r.verdict + (f": {r.message}" if r.message and r.verdict != "PASSED" else ""),
        )
        for r in report.results
    ]
    head = ("file", "nodes before", "after", "folded", "kept", "max error", "time", "verdict")
    # A column no file has a value in (emit and check count no folds) is left out.
    empty = {k for k in range(1, 6) if all(row[k] == "-" for row in rows)}
    head = tuple(h for k, h in enumerate(head) if k not in empty)
    rows = [tuple(v for k, v in enumerate(row) if k not in empty) for row in rows]
    files, jobs = len(report.results), report.jobs
    title = f"normonnx {report.command}: {_count(files, 'file')}, {_count(jobs, 'job')}, {report.seconds:.1f} s"
    return title + "\n" + table(head, rows)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _shapes(shapes: dict[str, list[int]]) -> str:
    """{"x": [1, 3, 32, 32]} -> "x 1x3x32x32"."""
    return ", ".join(f"{name} {'x'.join(map(str, dims))}" for name, dims in shapes.items())


def _short_forms(forms: dict[str, int]) -> str:
    """{"groupnorm:Reshape/InstanceNormalization/Reshape": 7} -> "7 groupnorm (decomposed)"."""
    parts = []
    for key, n in sorted(forms.items()):
        family, _, form = key.partition(":")
        kind = "op" if form == "op" else "Mul/Add" if form == "Mul/Add per channel" else "decomposed"
        parts.append(f"{n} {family} ({kind})")
    return ", ".join(parts) or "0"


def render_demo(reports: list[ConvertReport], families: dict[str, tuple[str, ...]]) -> str:
    """One row per reference model: what was there, what folded, what is left, error, speed, verdict."""
    head = ("model", "families", "layers", "in export", "normonnx folded", "left in model (form)", "max error",
            "speed-up", "vs floor", "top-1", "int8 top-1", "verdict")  # fmt: skip
    rows = [
        (
            r.name,
            "+".join(families.get(r.name, ())),
            r.layer_count,
            len(r.norms),
            r.folded,
            _short_forms(r.forms_after),
            f"{r.max_error:.2g}" if r.max_error is not None else "-",
            f"{r.speedup:.2f}x" if r.speedup is not None else "-",
            f"{r.floor_ratio:.2f}" if r.floor_ratio is not None else "-",
            f"{r.top1:.2%}" if r.top1 is not None else "-",
            _int8_cell(r),
            "PASSED" if r.passed else "FAILED",
        )
        for r in reports
    ]
    return table(head, rows)


def _int8_cell(r: ConvertReport) -> str:
    """The int8 model's top-1 agreement with torch, or why there is none."""
    if r.int8 is None:
        return "-"
    if not r.int8.passed:
        return "fails gate"
    return f"{r.top1_int8:.2%}" if r.top1_int8 is not None else "held"


SHOWN_REFUSALS = 3  # regions the terminal lists as not rescaled (the JSON report has every one)


def render_half(report: HalfReport) -> str:
    halves, linear = report.linear_ops_half
    lines = [
        f"{report.dtype}: {report.activations_half:.1%} of activation elements, {report.weight_bytes_half:.1%} of"
        f" weight bytes and {halves}/{linear} Conv/MatMul/Gemm in {report.dtype}; {len(report.kept)} nodes kept"
        " in float32",
        f"calibration: {report.calibration}",
    ]
    for r in report.rescaled:
        lines.append(
            f"  rescaled by 2^-{r.k}: {few(r.tensors)} (peak {r.peak:.3g} -> {r.peak * 2.0**-r.k:.3g}); the scale"
            f" absorbed at {few(r.boundary)}"
        )
    for r in report.rescale_refused[:SHOWN_REFUSALS]:
        lines.append(f"  not rescaled (float32 instead): {few(r.tensors)} (peak {r.peak:.3g}): {r.reason}")
    if len(report.rescale_refused) > SHOWN_REFUSALS:
        more = len(report.rescale_refused) - SHOWN_REFUSALS
        lines.append(f"  and {more} more regions not rescaled (--report lists all)")
    lines += [f"  search {step}" for step in report.search]
    reasons: dict[str, list[str]] = {}
    for k in report.kept:
        reasons.setdefault(k.reason, []).append(k.node)
    for reason, nodes in reasons.items():
        shown = few(nodes, 4)
        lines.append(f"  float32: {shown}: {reason}")
    if report.parity is not None:
        lines.append(f"judged by: {report.evaluator}")
        lines.append(report.parity.summary(" vs the float32 model"))
    if report.plain_cast is not None:
        worst = ", ".join(
            f"{o.name} {o.max_abs:.3g}" + (f" ({o.nonfinite_mismatch} non-finite)" if o.nonfinite_mismatch else "")
            for o in report.plain_cast.outputs
        )
        lines.append(f"a plain cast to {report.dtype}, judged the same way: {worst}")
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _db(sqnr: float) -> str:
    """An SQNR for a reader: "exact" where nothing differs (validate.parity.MAX_SQNR)."""
    return "exact" if sqnr >= 300.0 else f"{sqnr:.1f} dB"


def render_quantize(report: QuantizeReport) -> str:
    """normonnx's int8 model beside onnxruntime's own flow: accuracy, what stays in float and why, latency."""
    lines = [f"int8: {report.settings}", f"data: {report.data}"]
    lines += [f"prepared: {p}" for p in report.prepared]
    rows = []
    for m in (report.int8, report.baseline):
        if m is None:
            continue
        worst = m.worst_sqnr()
        flow = "normonnx" if m is report.int8 else "onnxruntime"
        latency = report.speedups.get(f"{flow} int8")
        rows.append([
            flow + (" (written)" if m is report.output_model else ""), f"{worst:.1f}" if worst is not None else "-",
            ", ".join(f"{v:.1%}" for v in m.top1.values()) or "-", str(m.qdq), str(len(m.float_nodes)),
            f"{latency.median:.2f}x" if latency else "-",
        ])  # fmt: skip
    head = ["int8 flow", "SQNR dB (worst output)", "top-1 agreement", "Q/DQ", "float nodes", "speed-up vs float32"]
    lines.append(table(head, rows))
    if report.int8 is not None:
        reasons: dict[str, list[str]] = {}
        for f in report.int8.float_nodes:
            reasons.setdefault(f.reason, []).append(f.node)
        for reason, nodes in reasons.items():
            shown = few(nodes)
            lines.append(f"  float: {shown}: {reason}")
    vs = report.speedups.get("normonnx vs onnxruntime int8")
    noise = report.speedups.get("float32 copy")
    if vs is not None and noise is not None:
        lines.append(
            f"normonnx int8 vs onnxruntime's flow: {vs.median:.2f}x (p10 {vs.p10:.2f}, p90 {vs.p90:.2f}); noise floor"
            f" (the float32 model against a copy of itself): {noise.median:.2f}x"
            f" (p10 {noise.p10:.2f}, p90 {noise.p90:.2f})"
        )
    if report.jumps:
        j = report.jumps[0]
        lines.append(f"error grows most at {j.node} ({j.op}): SQNR {_db(j.sqnr_in_db)} in, {_db(j.sqnr_out_db)} out")
    if report.parity is not None:
        lines.append(report.parity.summary(f" of {report.written}'s int8 model vs the float32 model (held out)"))
    lines += [f"note: {n}" for n in report.notes]
    if report.int8 is not None:
        lines += [f"note: {n}" for n in report.int8.notes]
    return "\n".join(lines)
