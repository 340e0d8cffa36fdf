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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from normonnx.pipelines.fold_report import FoldReport, GraphStats, statuses
from normonnx.graph import external
from normonnx.graph.bridge import to_graph, to_model, without_initializer_inputs
from normonnx.graph.modelio import disk_bytes, load_model, tensor_bytes
from normonnx.graph.shapes import annotate_shapes
from normonnx.passes._base import FoldOptions, PassContext, run_to_fixpoint
from normonnx.passes.registry import fold_fixpoint, fold_prelude
from normonnx.recognize.scan import Found, scan, summarize
from normonnx.validate.parity import ParityResult

log = logging.getLogger(__name__)


def _stats(graph: gs.Graph, found: list[Found], nbytes: int) -> GraphStats:
    ops = Counter(n.op for n in graph.nodes)
    return GraphStats(len(graph.nodes), dict(sorted(ops.items())), summarize(found), nbytes)


def _graph_bytes(graph: gs.Graph) -> int:
    """Bytes of every constant, control-flow bodies included."""
    total = 0
    tensors = {id(t): t for g in (graph, *graph.subgraphs(recursive=True)) for t in g.tensors().values()}
    for t in tensors.values():
        if isinstance(t, gs.Constant):
            v = t._values
            total += int(getattr(v, "nbytes", 0) or getattr(t.values, "nbytes", 0))
    return total


def as_model(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """A ModelProto and how to name it in messages."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    return load_model(model), str(model)


def prepare_graph(model: onnx.ModelProto, *, always_infer: bool = False) -> gs.Graph:
    """A graphsurgeon graph of ``model`` with inferred dtypes and shapes (see annotate_shapes).

    Weights on disk (absolute, validated locations) are read through normonnx's own reader.
    """
    graph = to_graph(model)
    external.attach(graph)
    annotate_shapes(model, graph, always_infer)
    return graph


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
    proto, source = as_model(model)
    options = options or FoldOptions()
    if options.constant_initializer_inputs:
        proto = without_initializer_inputs(proto)
    graph = prepare_graph(proto)
    found = scan(graph)
    before = _stats(graph, found, tensor_bytes(proto))
    ctx = PassContext(graph, options, store=store)
    rewrites = {}
    for p in fold_prelude():
        rewrites[p.name] = p.run(ctx)
    rewrites.update(run_to_fixpoint(fold_fixpoint(ctx.options), ctx))
    # Folds only remove nodes or rewire in place, which keeps a sorted graph
    # sorted; nodes a pass appended need the sort.
    out = to_model(graph, proto, sort=ctx.nodes_added > 0)
    after = _stats(graph, scan(graph), _graph_bytes(graph))
    report = FoldReport(
        source=source,
        before=before,
        after=after,
        norms=statuses(found, ctx.decisions),
        rewrites=rewrites,
        decisions=ctx.decisions,
    )
    if verify:
        report.parity = verify_parity(proto, out, shapes=shapes)
    report.seconds = time.perf_counter() - start
    return out, report


def verify_parity(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
) -> ParityResult:
    """Both models on onnxruntime CPU with graph optimizations off, on the same seeded inputs.

    When the gate fails, the reference is also run with onnxruntime's own
    optimizations to measure its float32 noise floor (see validate.parity).
    """
    from normonnx.validate.inputs import seeded_input_sets
    from normonnx.validate.parity import compare, rejudge_with_noise
    from normonnx.validate.runner import SessionConfig, run, session

    feeds = seeded_input_sets(reference, samples, shapes)
    ref_sess = session(reference, SessionConfig(optimize=False))
    cand_sess = session(candidate, SessionConfig(optimize=False))
    refs = [run(ref_sess, f) for f in feeds]
    result = compare(refs, [run(cand_sess, f) for f in feeds])
    if not result.passed:
        noisy = session(reference, SessionConfig(optimize=True))
        result = rejudge_with_noise(result, compare(refs, [run(noisy, f) for f in feeds]))
    return result


# Below this much weight on disk (both models together), the two parity runs go side by side.
CONCURRENT_PARITY_BYTES = 1 << 30


def verify_parity_files(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    shapes=None,
    samples: int = 3,
    reference_proto: onnx.ModelProto | None = None,
    candidate_bytes: int | None = None,
) -> ParityResult:
    """verify_parity for models on disk, each in its own isolated process (a model that crashes
    onnxruntime cannot take normonnx down).

    The two processes run side by side when both models together hold under
    CONCURRENT_PARITY_BYTES (onnxruntime's session set-up is single-threaded),
    one after the other otherwise, so that peak memory stays near one model's weights.
    ``reference_proto`` (the reference already in memory) and ``candidate_bytes`` (what the
    candidate holds on disk) spare parsing those files again.
    """
    from normonnx.validate import execute
    from normonnx.validate.inputs import seeded_input_sets
    from normonnx.validate.isolation import call_isolated
    from normonnx.validate.parity import compare, rejudge_with_noise
    from normonnx.validate.runner import SessionConfig

    specs = reference_proto if reference_proto is not None else load_model(reference, load_weights=False)
    feeds = seeded_input_sets(specs, samples, shapes)

    cores = os.cpu_count() or 1
    if candidate_bytes is None:
        candidate_bytes = disk_bytes(candidate)
    side_by_side = cores > 1 and disk_bytes(reference) + candidate_bytes < CONCURRENT_PARITY_BYTES
    # Side by side, each run gets half the cores and no spin-waiting threads, which
    # would otherwise steal the cores the other run is computing on.
    sharing = {"threads": max(1, cores // 2), "spin": False} if side_by_side else {}

    def outputs(path: str | os.PathLike, role: str, optimize: bool = False) -> list:
        cfg = SessionConfig(optimize=optimize, **sharing)
        return call_isolated(execute.run_outputs, str(path), feeds, cfg, label=f"{path} ({role})")

    jobs = [(reference, "reference"), (candidate, "folded")]
    if side_by_side:
        with ThreadPoolExecutor(2) as pool:
            refs, cands = pool.map(lambda job: outputs(*job), jobs)
    else:
        refs, cands = (outputs(*job) for job in jobs)
    result = compare(refs, cands)
    if not result.passed:
        noisy = outputs(reference, "noise floor", optimize=True)
        result = rejudge_with_noise(result, compare(refs, noisy))
    return result


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
                report.parity = verify_parity_files(
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
