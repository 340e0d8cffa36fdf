"""The search step of ``normonnx half``: while the half-faithful gate fails, the nodes at fault join float32.

Each round converts the model with the islands planned so far, judges it half-faithfully (the gate of
DESIGN.md section 5, and no more than ``BASELINE_FACTOR`` times a plain cast's error where that one is
finite), and, when it fails, localizes the first persistent divergence on one input (``validate.localize``,
the half model's tensors as it stores them against the float32 model's). Its producer stays float32, and so
do the readers of a value that leaves the half range. A model is refused only when a round finds nothing
new to keep, or after ``SEARCH_ROUNDS`` rounds, with every round in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from normonnx.graph.access import describe, is_float32, read_from_outside
from normonnx.passes.registry import half_pipeline
from normonnx.passes.to_half import HALF_MAX, MASK_MAGNITUDE, KeptFloat32
from normonnx.reports.progress import phase
from normonnx.results import HalfReport, ParityResult
from normonnx.validate.align import Pair
from normonnx.validate.localize import first_divergence
from normonnx.validate.parity import FAITHFUL_GATE, compare, limit_by_baseline
from normonnx.validate.runners import OnnxruntimeRunner, RunOptions

SEARCH_ROUNDS = 8
BASELINE_FACTOR = 2.0


def judged(refs, got, plain_cast: ParityResult | None) -> ParityResult:
    """The half-faithful verdict: the gate, and at most ``BASELINE_FACTOR`` times a finite plain cast's error."""
    parity = compare(refs, got, default=FAITHFUL_GATE)
    if plain_cast is not None:
        limit_by_baseline(parity, plain_cast, BASELINE_FACTOR)
    return parity


def search_islands(
    model: onnx.ModelProto,
    graph: gs.Graph,
    model_runner: OnnxruntimeRunner,
    kept: dict[str, KeptFloat32],
    half: int,
    keep_io_types: bool,
    refs: list,
    feeds: list[dict],
    options: RunOptions,
    report: HalfReport,
) -> onnx.ModelProto:
    """The half model of ``model`` (``graph`` is it bridged, read only) with ``kept`` in float32, grown while the
    gate fails (``kept`` is updated); ``report.parity`` holds the last verdict and ``report.search`` every round."""
    depth = 1
    for round_ in range(1, SEARCH_ROUNDS + 1):
        phase(f"convert and judge, round {round_}" if round_ > 1 else "convert and judge")
        out = half_pipeline(kept, half, keep_io_types).apply(model, always_infer=True, sort=True).model
        judge = options.faithful(out, label="half-faithful run")
        report.parity = judged(refs, judge.infer(feeds), report.plain_cast)
        if report.parity.passed:
            if round_ > 1:
                report.search.append(f"round {round_}: passed")
            return out
        if round_ == SEARCH_ROUNDS:
            report.search.append(f"stopped after {SEARCH_ROUNDS} rounds: the gate still fails")
            return out
        worst = report.parity.worst()
        fault = _at_fault(graph, out, model_runner, judge, feeds[0], half, kept, depth, worst.name)
        if fault.upstream:
            depth *= 2  # the same cone again next time: reach twice as far up
        new = [n for n in dict.fromkeys(fault.nodes) if n not in kept]
        if not new:
            inputs = (
                "; upstream of it only the graph inputs are still rounded to half: --keep-io-types keeps them float32"
                if fault.upstream and not keep_io_types
                else ""
            )
            report.search.append(
                f"round {round_}: max|diff| {worst.max_abs:.3g} on {worst.name}; {fault.why or 'no divergence found'},"
                f" and nothing more to keep in float32: the model cannot pass in this half type{inputs}"
            )
            return out
        ops = {describe(n): n.op for n in graph.nodes}
        for name in new:
            kept[name] = KeptFloat32(name, ops.get(name, "?"), f"search round {round_}: {fault.why}")
        report.search.append(f"round {round_}: max|diff| {worst.max_abs:.3g} on {worst.name}; {fault.why}: "
                             f"{', '.join(new)} kept in float32")  # fmt: skip
    return out


@dataclass(frozen=True)
class _Fault:
    """The nodes a round keeps in float32, why, and whether they are the half feeders of a node that already
    computes in float32 (its inputs were rounded: the next round looks twice as far up)."""

    nodes: list[str]
    why: str
    upstream: bool = False


def _at_fault(graph, out, model_runner, judge, feed, half, kept, depth, worst_output) -> _Fault:
    """The nodes of the model (``graph``) to keep in float32 for the first persistent divergence of ``out``: its
    producer (and, where the value leaves the half range, its readers); when that one already is float32, the
    half nodes that feed it, ``depth`` of them deep."""
    tensors = graph.tensors()
    compared = [o for n in out.graph.node for o in n.output if o in tensors]
    pairs = [Pair(t, t, "name") for t in compared]
    results = judge.compare_intermediates(model_runner, feed, [(t, t) for t in compared], FAITHFUL_GATE)
    # A tensor that carries a mask (finfo(float32).min, stored at mask_fill in half) differs on purpose.
    results = [None if r is not None and r.ref_max >= MASK_MAGNITUDE else r for r in results]
    found = first_divergence(out, pairs, results)
    # No divergence that persists to a compared output (the outputs themselves could not be compared): the
    # first tensor that differs; none at all (an output an If computes in float32): the worst output.
    tensor = found.first.tensor if found.first is not None else next(iter(found.changed_meaning), worst_output)
    t = tensors.get(tensor) if tensor is not None else None
    if t is None or not t.inputs:
        return _Fault([], f"'{tensor}' diverges first" if tensor is not None else "")
    node = t.inputs[0]
    r = next((r for p, r in zip(pairs, results, strict=True) if p.candidate == tensor), None)
    if r is None:  # an output that could not be compared as a tensor: judged by the outputs' verdict
        what = f"output '{tensor}' ({node.op}) fails the gate"
        if describe(node) not in kept:
            return _Fault([describe(node)], f"{what} in half arithmetic")
        return _Fault(_half_feeders(node, kept, depth), f"{what} {_ROUNDED_INPUTS}", upstream=True)
    overflow = r.nonfinite_mismatch > 0 or r.ref_max > HALF_MAX[half]
    nodes = [describe(node)] + ([describe(u) for u in t.outputs] if overflow else [])
    what = "leaves the half range" if overflow else f"is off by {r.max_abs:.3g} (max|ref| {r.ref_max:.3g})"
    why = f"'{tensor}' ({node.op}) {what}"
    if all(n in kept for n in nodes):  # it already computes in float32: what it reads was rounded
        return _Fault(_half_feeders(node, kept, depth), f"{why} {_ROUNDED_INPUTS}: the first divergence in half"
                      " arithmetic", upstream=True)  # fmt: skip
    return _Fault(nodes, f"{why}: the first divergence in half arithmetic")


_ROUNDED_INPUTS = "though computed in float32 (its inputs were rounded to half)"


def _half_feeders(node: gs.Node, kept: dict[str, KeptFloat32], depth: int) -> list[str]:
    """The nodes computing float data in half within ``depth`` such nodes upstream of ``node`` (walking through
    those already float32, through integer work such as a quantized MatMul, and into what an If/Loop/Scan body
    reads from outside)."""
    found, seen, layer = [], set(), [node]
    for _ in range(depth):
        next_layer = []
        while layer:
            current = layer.pop()
            for x in [*current.inputs, *read_from_outside(current)]:
                producer = x.inputs[0] if x.inputs else None
                if producer is None or id(producer) in seen:
                    continue
                seen.add(id(producer))
                if describe(producer) in kept or not any(is_float32(t) for t in [*producer.inputs, *producer.outputs]):
                    layer.append(producer)
                else:
                    found.append(describe(producer))
                    next_layer.append(producer)
        layer = next_layer
    return found
