"""The search step of ``normonnx half``: while the half-faithful gate fails, the nodes at fault join float32.

Each round converts the model with the islands planned so far, judges it half-faithfully (the gate of
DESIGN.md section 5, and no more than ``BASELINE_FACTOR`` times a plain cast's error where that one is
finite), and, when it fails, localizes the first persistent divergence on one input (``validate.localize``,
the half model's tensors as it stores them against the float32 model's). Its producer stays float32, and so
do the readers of a value that leaves the half range. A model is refused only when a round finds nothing
new to keep, or after ``SEARCH_ROUNDS`` rounds, with every round in the report.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.graph.access import describe
from normonnx.graph.bridge import prepare_graph
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
    model_runner: OnnxruntimeRunner,
    kept: dict[str, KeptFloat32],
    half: int,
    keep_io_types: bool,
    refs: list,
    feeds: list[dict],
    options: RunOptions,
    report: HalfReport,
) -> onnx.ModelProto:
    """The half model of ``model`` with ``kept`` in float32, grown while the gate fails (``kept`` is updated);
    ``report.parity`` holds the last verdict and ``report.search`` every round."""
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
        culprits, why = _at_fault(model, out, model_runner, judge, feeds[0], half, kept, depth, worst.name)
        if "computed in float32" in why:
            depth *= 2  # the same cone again next time: reach twice as far up
        new = {n: why for n in culprits if n not in kept}
        if not new:
            inputs = (
                "; upstream of it only the graph inputs are still rounded to half: --keep-io-types keeps them float32"
                if "computed in float32" in why and not keep_io_types
                else ""
            )
            report.search.append(
                f"round {round_}: max|diff| {worst.max_abs:.3g} on {worst.name}; {why or 'no divergence found'}, and"
                f" nothing more to keep in float32: the model cannot pass in this half type{inputs}"
            )
            return out
        for name, reason in new.items():
            kept[name] = KeptFloat32(name, _op(model, name), f"search round {round_}: {reason}")
        report.search.append(f"round {round_}: max|diff| {worst.max_abs:.3g} on {worst.name}; {why}: "
                             f"{', '.join(new)} kept in float32")  # fmt: skip
    return out


def _op(model: onnx.ModelProto, name: str) -> str:
    return next((n.op_type for n in model.graph.node if n.name == name), "?")


def _at_fault(model, out, model_runner, judge, feed, half, kept, depth, worst_output) -> tuple[list[str], str]:
    """The nodes of ``model`` to keep in float32 for the first persistent divergence of ``out``, and why: its
    producer (and, where the value leaves the half range, its readers); when that one already is float32, the
    half nodes that feed it, ``depth`` of them deep (its input was already rounded)."""
    names = {o for n in model.graph.node for o in n.output if o}
    compared = [o for n in out.graph.node for o in n.output if o in names]
    pairs = [Pair(t, t, "name") for t in compared]
    results = judge.compare_intermediates(model_runner, feed, [(t, t) for t in compared], FAITHFUL_GATE)
    # A tensor that carries a mask (finfo(float32).min, stored at mask_fill in half) differs on purpose.
    results = [None if r is not None and r.ref_max >= MASK_MAGNITUDE else r for r in results]
    found = first_divergence(out, pairs, results)
    # No divergence that persists to a compared output (the outputs themselves could not be compared): the
    # first tensor that differs; none at all (an output an If computes in float32): the worst output.
    tensor = found.first.tensor if found.first is not None else next(iter(found.changed_meaning), worst_output)
    if tensor is None:
        return [], ""
    t = prepare_graph(model, always_infer=True).tensors().get(tensor)
    if t is None or not t.inputs:
        return [], f"'{tensor}' diverges first"
    r = next((r for p, r in zip(pairs, results, strict=True) if p.candidate == tensor), None)
    if r is None:  # an output that could not be compared as a tensor: judged by the outputs' verdict
        producer = t.inputs[0]
        if describe(producer) not in kept:
            return [describe(producer)], f"output '{tensor}' ({producer.op}) fails the gate in half arithmetic"
        return _half_feeders(producer, kept, depth), (
            f"output '{tensor}' ({producer.op}) fails the gate though computed in float32 (its inputs were rounded"
            " to half)"
        )
    overflow = r.nonfinite_mismatch > 0 or r.ref_max > HALF_MAX[half]
    node = t.inputs[0]
    nodes = [describe(node)] + ([describe(u) for u in t.outputs] if overflow else [])
    what = "leaves the half range" if overflow else f"is off by {r.max_abs:.3g} (max|ref| {r.ref_max:.3g})"
    if all(n in kept for n in nodes):  # it already computes in float32: what it reads was rounded
        nodes = _half_feeders(node, kept, depth)
        what += " though computed in float32 (its inputs were rounded to half)"
    return nodes, f"'{tensor}' ({node.op}) {what}: the first divergence in half arithmetic"


def _half_feeders(node: gs.Node, kept: dict[str, KeptFloat32], depth: int) -> list[str]:
    """The nodes computing float data in half within ``depth`` such nodes upstream of ``node`` (walking through
    those already float32, and through integer work such as a quantized MatMul)."""
    found, seen, layer = [], set(), [node]
    for _ in range(depth):
        next_layer = []
        while layer:
            for x in _read_by(layer.pop()):
                producer = x.inputs[0] if x.inputs else None
                if producer is None or id(producer) in seen:
                    continue
                seen.add(id(producer))
                if describe(producer) in kept or not any(_is_float(t) for t in [*producer.inputs, *producer.outputs]):
                    layer.append(producer)
                else:
                    found.append(describe(producer))
                    next_layer.append(producer)
        layer = next_layer
    return found


def _read_by(node: gs.Node) -> list[gs.Tensor]:
    """What ``node`` reads: its inputs, and for an If/Loop/Scan what its bodies read from the outer scope."""
    read = list(node.inputs)
    for value in node.attrs.values():
        for body in value if isinstance(value, list) else [value]:
            if isinstance(body, gs.Graph):
                inner = {id(t) for n in body.nodes for t in n.outputs} | {id(t) for t in body.inputs}
                read += [
                    t for n in body.nodes for t in n.inputs if id(t) not in inner and not isinstance(t, gs.Constant)
                ]
    return read


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32
