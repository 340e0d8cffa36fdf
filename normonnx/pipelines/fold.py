"""Folding a whole model: load, run the fold passes, verify, report.

The caller's model is never modified: graphsurgeon builds a new graph, new
weights are new initializers, and the result is a new ModelProto with the
caller's model-level fields (opsets, metadata, input/output ValueInfo).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from normonnx.graph import external
from normonnx.graph.bridge import (
    graph_constant_bytes,
    model_and_name,
    prepare_graph,
    to_model,
    without_initializer_inputs,
)
from normonnx.graph.modelio import load_model, tensor_bytes
from normonnx.passes._base import FoldOptions, PassContext
from normonnx.passes.registry import fold_pipeline
from normonnx.pipelines.fold_report import FoldReport, GraphStats, statuses
from normonnx.recognize.scan import Found, scan, summarize
from normonnx.validate.verify import verify_parity

log = logging.getLogger(__name__)


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
) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every constant normalization of ``model``; return the new model and the report.

    ``store`` sends the weights folds compute to disk (models whose weights are on disk).

    With ``verify``, the result is run against the original on onnxruntime
    (CPU, optimizations off) over seeded inputs and ``report.parity`` says
    whether they agree; the caller decides what a failure means.
    """
    start = time.perf_counter()
    proto, source = model_and_name(model)
    options = options or FoldOptions()
    if options.constant_initializer_inputs:
        proto = without_initializer_inputs(proto)
    graph = prepare_graph(proto)
    found = scan(graph)
    before = _stats(graph, found, tensor_bytes(proto))
    ctx = PassContext(graph, options, store=store)
    ran = fold_pipeline(options).run(ctx)
    # Folds only remove nodes or rewire in place, which keeps a sorted graph
    # sorted; nodes a pass appended need the sort.
    out = to_model(graph, proto, sort=ctx.nodes_added > 0)
    after = _stats(graph, scan(graph), graph_constant_bytes(graph))
    report = FoldReport(
        source=source,
        before=before,
        after=after,
        norms=statuses(found, ctx.decisions),
        rewrites=ran.rewrites,
        notes=[ran.note] if ran.note else [],
        decisions=ctx.decisions,
    )
    if verify:
        report.parity = verify_parity(proto, out, shapes=shapes)
    report.seconds = time.perf_counter() - start
    return out, report


def fold_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: FoldOptions | None = None,
    *,
    verify: bool = True,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> FoldReport:
    """Fold ``src`` into ``dst``; ``dst`` is written (atomically) only if parity holds.

    ``report.output`` is None when parity failed and nothing was written. The
    result is staged beside ``dst``, verified from disk against ``src`` in
    isolated processes, then committed. A model whose weights are on disk is
    folded without loading them: weights are read when a fold needs them and
    new ones spill to disk at once.
    """
    from normonnx.graph.modelio import check_output_path, has_external_data, staged_save

    start = time.perf_counter()
    check_output_path(Path(dst), [Path(src)])
    proto = load_model(src, load_weights=False)
    store = None
    if has_external_data(proto):
        external.absolutize(proto, src)
        store = external.SpillStore(dst)
    try:
        model, report = fold(proto, options, store=store)
        report.source = str(src)
        with staged_save(model, dst, inputs=[src], no_stricter_than=src) as staged:
            if verify:
                report.parity = verify_parity(
                    src, staged.path, shapes=shapes, reference_proto=proto, candidate_bytes=staged.disk_bytes()
                )
            if report.parity is None or report.parity.passed:
                staged.commit()
                report.output = str(dst)
        report.stale_files = staged.stale
    finally:
        if store is not None:
            store.close()
    report.seconds = time.perf_counter() - start
    return report
