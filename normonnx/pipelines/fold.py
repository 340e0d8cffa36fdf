"""``normonnx fold``: load, run the fold pipeline, verify, report.

The caller's model is never modified: graphsurgeon builds a new graph, new
weights are new initializers, and the result is a new ModelProto with the
caller's model-level fields (opsets, metadata, input/output ValueInfo). The
report joins what ``recognize`` found before folding with what the passes
decided about each normalization; ``inspect`` shows the same report.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from normonnx.errors import UnusableInputError
from normonnx.families import BY_KEY, ONNXRUNTIME_NOTE, is_default_domain
from normonnx.graph import external
from normonnx.graph.bridge import (
    graph_constant_bytes,
    model_and_name,
    prepare_graph,
    without_initializer_inputs,
)
from normonnx.graph.modelio import absolutize, tensor_bytes
from normonnx.graph.opsets import OLDEST_RUNNABLE_OPSET, default_opset, runnable_copy
from normonnx.passes.registry import fold_pipeline
from normonnx.passes.rules import NO_FAMILY, FoldOptions
from normonnx.recognize.scan import SUBGRAPH_NOTE, Found, scan, summarize
from normonnx.reports.progress import phase
from normonnx.results import Decision, FoldReport, GraphStats, NormStatus
from normonnx.validate.verify import start_original_run, verify_parity

log = logging.getLogger(__name__)


def statuses(found: list[Found], decisions: list[Decision]) -> list[NormStatus]:
    """Join what was found with what the passes decided about it."""
    folded: dict[str, Decision] = {}
    reasons: dict[str, list[str]] = {}
    for d in decisions:
        if d.family == NO_FAMILY:  # a simplification's rewrite: no normalization's verdict
            continue
        if d.folded:
            folded.setdefault(d.node, d)
        else:
            reasons.setdefault(d.node, [])
            if d.detail not in reasons[d.node]:
                reasons[d.node].append(d.detail)
    result = []
    for f in found:
        hits = [folded[n] for n in f.nodes if n in folded]
        if f.anchor in folded or (hits and f.family == "affine"):
            d = folded.get(f.anchor) or hits[0]
            result.append(NormStatus(f.family, f.form, f.anchor, f.detail, True, d.detail))
            continue
        why = [r for n in f.nodes for r in reasons.get(n, [])] or [_default_reason(f)]
        if SUBGRAPH_NOTE in f.detail and not why[0].startswith(f.detail):
            why[0] = f"{f.detail}: {why[0]}"
        result.append(NormStatus(f.family, f.form, f.anchor, f.detail, False, "; ".join(dict.fromkeys(why))))
    return result


def _default_reason(f: Found) -> str:
    """Why a normalization no pass considered stays: the family's nature."""
    if SUBGRAPH_NOTE in f.detail:
        return f"{f.detail}: nothing next to it to fold into"
    if f.form == "onnxruntime op":
        return ONNXRUNTIME_NOTE
    if f.family == "batchnorm" and "training_mode=1" in f.detail:
        return "training_mode=1: normalizes with batch statistics, never folded"
    if f.form == "weight subgraph" and "graph input" in f.detail:
        return "the weight is computed from a graph input, so it is not a constant"
    fam = BY_KEY.get(f.family)
    if fam is None:
        return "not foldable"
    if fam.foldable:
        return "no Conv/ConvTranspose/Gemm/MatMul next to it to fold into"
    return fam.fold_note


def _unknown_ops(graph: gs.Graph) -> str:
    """``com.microsoft.Attention x2, ...``: ops outside onnx's schemas (contrib and custom ops), never rewritten."""
    counts: Counter[str] = Counter()
    for n in graph.nodes:
        if is_default_domain(n.domain):
            try:
                onnx.defs.get_schema(n.op, graph.opset)
                continue
            except onnx.defs.SchemaError:
                counts[n.op] += 1
        else:
            counts[f"{n.domain}.{n.op}"] += 1
    return ", ".join(f"{op} x{k}" for op, k in sorted(counts.items()))


def _stats(graph: gs.Graph, found: list[Found], nbytes: int) -> GraphStats:
    ops = Counter(n.op for n in graph.nodes)
    return GraphStats(len(graph.nodes), dict(sorted(ops.items())), summarize(found), nbytes)


def fold(
    model: onnx.ModelProto | str | os.PathLike,
    options: FoldOptions | None = None,
    *,
    verify: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
    store: external.SpillStore | None = None,
    check: bool = True,
    name: str | None = None,
) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every constant normalization of ``model``; return the new model and the report.

    ``store`` sends the weights folds compute to disk (models whose weights are on disk).
    ``check=False`` leaves onnx's checker to the caller that writes the model (the file is checked then).
    ``name`` names a model given in memory in messages (its file, when the caller read one).

    With ``verify``, the result is run against the original on onnxruntime
    (CPU, optimizations off) over seeded inputs and ``report.parity`` says
    whether they agree; the caller decides what a failure means.
    """
    start = time.perf_counter()
    proto, source = model_and_name(model)
    source = name or source
    options = options or FoldOptions()
    upgraded = runnable_copy(proto)
    notes_first = []
    if upgraded is not None:
        notes_first.append(
            f"raised from opset {default_opset(proto)} to {OLDEST_RUNNABLE_OPSET} by onnx's converter first:"
            " onnxruntime runs nothing older"
        )
        proto = upgraded
    if options.constant_initializer_inputs:
        proto = without_initializer_inputs(proto)
    graph = prepare_graph(proto)
    found = scan(graph)
    before = _stats(graph, found, tensor_bytes(proto))
    outcome = fold_pipeline(options).apply(proto, options, graph=graph, store=store, check=check)
    out, graph = outcome.model, outcome.graph
    rewrites, notes = outcome.rewrites, [*notes_first, *outcome.notes]
    if options.target is not None:
        out, graph = _emitted_for(out, options.target, source, store, notes)
    unknown = _unknown_ops(graph)
    if unknown:
        notes.append(f"left as they are, ops normonnx does not know: {unknown}")
    after = _stats(graph, scan(graph), graph_constant_bytes(graph))
    report = FoldReport(
        source=source,
        before=before,
        after=after,
        norms=statuses(found, outcome.decisions),
        rewrites=rewrites,
        notes=notes,
        decisions=outcome.decisions,
    )
    if verify:
        report.parity = verify_parity(proto, out, shapes=shapes)
    report.seconds = time.perf_counter() - start
    return out, report


def _emitted_for(
    model: onnx.ModelProto, key: str, source: str, store: external.SpillStore | None, notes: list[str]
) -> tuple[onnx.ModelProto, gs.Graph]:
    """The folded model emitted for deployment target ``key`` (its opset, each family's form), and why."""
    from normonnx.pipelines.emit import emit

    if store is not None:
        raise UnusableInputError(f"{source}: --target needs the weights in memory; this model keeps them on disk")
    out, emitted = emit(model, None, "auto", target=key, name=source, check=False)
    present = {k.split(":")[0] for k in (*emitted.norms_before, *emitted.norms_after)}
    opsets = f"opset {emitted.source_opset}" + (f" -> {emitted.opset}" if emitted.opset != emitted.source_opset else "")
    whys = [f"{f} {emitted.forms[f]} ({why})" for f, why in emitted.why.items() if f in present]
    notes.append(f"emitted for {key}: {opsets}" + (f"; {'; '.join(whys)}" if whys else ""))
    return out, prepare_graph(out)


def fold_file(
    src: str | os.PathLike,
    output: str | os.PathLike,
    options: FoldOptions | None = None,
    *,
    verify: bool = True,
    shapes: dict[str, tuple[int, ...]] | None = None,
    isolated: bool = True,
) -> FoldReport:
    """Fold ``src`` into ``output``; ``output`` is written (atomically) only if parity holds.

    ``report.output`` is None when parity failed and nothing was written. The
    result is staged beside ``output``, verified from disk against ``src`` in
    isolated processes, then committed. A model whose weights are on disk is
    folded without loading them: weights are read when a fold needs them and
    new ones spill to disk at once.
    """
    from normonnx.graph.checked_load import load_checked_meanwhile
    from normonnx.graph.modelio import check_output_path, has_external_data
    from normonnx.pipelines._staging import write_verified

    start = time.perf_counter()
    check_output_path(Path(output), [Path(src)])
    phase("load")
    source = load_checked_meanwhile(src, load_weights=False, isolated=isolated, verify=verify)
    proto, store = source.model, None
    try:
        if has_external_data(proto):
            absolutize(proto, src)
            store = external.SpillStore(output)
        older = runnable_copy(proto)  # a pre-opset-7 file is verified against the copy onnxruntime runs
        original = (
            start_original_run(src, proto, shapes=shapes, disk_size=source.disk_bytes)
            if verify and isolated and older is None
            else None
        )
        log.info("%s: folding %d nodes", src, len(proto.graph.node))
        phase("fold")
        model, report = fold(proto, options, store=store, check=False, name=str(src))  # checked as it is written
        report.source = str(src)
        log.info("%s: %d normalizations folded, %d kept; staging %s", src, len(report.folded), len(report.kept), output)
        report.parity, report.output, report.stale_files = write_verified(
            model, src, output, verify=verify, shapes=shapes, isolated=isolated, reference_proto=proto,
            reference=older, original=original, source_verdict=source.verdict,
        )  # fmt: skip
        if report.output is None and report.parity is not None and store is None:
            report = _without_the_rewrite_at_fault(proto, src, output, options, report, shapes, isolated, older)
    except Exception:
        source.verdict()  # an invalid source is what went wrong, whatever it led to
        raise
    finally:
        if store is not None:
            store.close()
    report.seconds = time.perf_counter() - start
    return report


def _without_the_rewrite_at_fault(proto, src, dst, options, failed: FoldReport, shapes, isolated, older) -> FoldReport:
    """The full fold failed parity: bisect its rewrites, and deliver the fold with the one at fault left
    undone (verified like any output). When no single rewrite is to blame, nothing is written."""
    from normonnx.pipelines._staging import deliver_without_the_rewrite_at_fault

    options = options or FoldOptions()

    def fold_without(undone: frozenset[str]) -> tuple[onnx.ModelProto, FoldReport]:
        model, report = fold(proto, replace(options, undone=options.undone | undone), check=False, name=str(src))
        report.source = str(src)
        return model, report

    return deliver_without_the_rewrite_at_fault(
        "fold rewrites", failed, fold_without,
        lambda culprit, r: f"folded {len(r.folded)}/{len(r.norms)}; {culprit} kept: folding it broke parity",
        src, dst, shapes=shapes, isolated=isolated, reference=older, reference_proto=proto,
    )  # fmt: skip
