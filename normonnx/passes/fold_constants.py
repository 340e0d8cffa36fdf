"""fold-constants: evaluate every weight-only subgraph once and keep the result.

Before::

    W -> ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div -> Conv.W     (weight standardization)
    Shape(W) -> Expand(CastLike(0, x)) -> Conv.B                  (raw dynamo's zero bias)
    g, v -> ReduceL2/Div/Mul -> Conv.W                            (weight_norm)

After::

    W' -> Conv.W          B' -> Conv.B

Formula: none to match. The nodes are run once on onnxruntime (the reference
evaluator where onnxruntime refuses an op), so every variant -- eps in var or
in std, biased or unbiased, gains, 1/sqrt(fan_in), BatchNormalization with
training_mode=1 on the reshaped weight -- comes out exactly as the runtime
would have computed it, with no size limit on weights.

Preconditions: a node is constant when every input is constant (initializer,
Constant node, or the output of a constant node), it is deterministic, in the
default domain, without subgraphs; ``Shape``/``Size`` of a tensor with a fully
static inferred shape, and ``CastLike(const, x)`` with a known dtype of ``x``,
are constant too. Results that are graph outputs stay computed; results that
would grow the model (an Expand or ConstantOfShape to a large tensor) are
left alone and reported.

The plan (which nodes are constant) and the one batched evaluation are the
rule's survey; each node then folds the frontier tensors it computes. A
weight subgraph is recorded under its family (weight standardization, weight
norm) as ``inspect`` lists it; any other constant as no normalization's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.families import LINEAR_OPS, is_default_domain
from normonnx.graph.access import constant_value, describe, is_empty, onnx_dtype, producer, static_shape
from normonnx.graph.bridge import node_proto, stored_nbytes
from normonnx.graph.edit import prune, to_constant
from normonnx.graph.evaluate import EvaluationError, evaluate_protos
from normonnx.passes.rules import NO_FAMILY, PassContext, Refusal
from normonnx.recognize.scan import weight_family

NAME = "fold-constants"

_NOT_FOLDABLE = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
    "If",
    "Loop",
    "Scan",
    "SequenceMap",
    "Optional",
    "OptionalGetElement",
    "OptionalHasElement",
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceAt",
    "SequenceInsert",
    "SequenceErase",
    "SequenceLength",
    "SplitToSequence",
    "ConcatFromSequence",
}
# Ops whose output can be far larger than their inputs: their size is checked before evaluation.
_EXPANDING = {"Expand": 1, "ConstantOfShape": 0, "Tile": 1}


class _ConstantNodes:
    """Which nodes are constant, and how each is written for evaluation.

    A node is written out (``proto``) only when a batch evaluates it: most constant nodes of a large
    graph are never evaluated, and writing every one at each survey cost more than the evaluation.
    """

    def __init__(self, ctx: PassContext, excluded: set[int]) -> None:
        self.members: dict[int, int] = {}  # id() of every constant node: its place in graph order
        self.substitutes: dict[int, onnx.NodeProto] = {}  # a Shape, Size or CastLike evaluated as another op
        self.nodes: list[gs.Node] = []
        const: set[int] = set()
        for node in ctx.graph.nodes:
            if id(node) in excluded or not is_default_domain(node.domain) or node.op in _NOT_FOLDABLE:
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            how = self._how(ctx, node, const)
            if how is None:
                continue
            if how is not _AS_IT_STANDS:
                self.substitutes[id(node)] = how
            self.members[id(node)] = len(self.nodes)
            self.nodes.append(node)
            const.update(id(t) for t in node.outputs)
        self.const = const

    def proto(self, node: gs.Node) -> onnx.NodeProto:
        """The constant node as it is evaluated."""
        return self.substitutes.get(id(node)) or node_proto(node)

    @staticmethod
    def _is_const(t: gs.Tensor, const: set[int]) -> bool:
        return is_empty(t) or isinstance(t, gs.Constant) or id(t) in const

    def _how(self, ctx: PassContext, node: gs.Node, const: set[int]) -> onnx.NodeProto | object | None:
        """None for a node that is not constant; else ``_AS_IT_STANDS`` or the node it is evaluated as."""
        if node.op == "Constant":
            return _AS_IT_STANDS if constant_value(node.outputs[0]) is not None else None
        if node.op in ("Shape", "Size") and ctx.options.fold_static_shapes and node.inputs:
            src = node.inputs[0]
            shape = static_shape(src)
            if shape is None:
                return None
            if node.op == "Size":
                value = np.array(int(np.prod(shape)), dtype=np.int64)
            else:
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                value = np.array(list(shape)[slice(start, end)], dtype=np.int64)
            return onnx.helper.make_node(
                "Constant", [], [node.outputs[0].name], value=onnx.numpy_helper.from_array(value)
            )
        if node.op == "CastLike" and len(node.inputs) == 2 and self._is_const(node.inputs[0], const):
            to = onnx_dtype(getattr(node.inputs[1], "dtype", None))
            if to is None:
                return None
            return onnx.helper.make_node("Cast", [node.inputs[0].name], [node.outputs[0].name], to=to)
        if not onnx.defs.has(node.op):
            return None
        if not node.inputs or not all(self._is_const(t, const) for t in node.inputs):
            return None
        return _AS_IT_STANDS


_AS_IT_STANDS = object()  # a constant node evaluated as it is


def _ancestors(tensor: gs.Tensor, plan: _ConstantNodes) -> tuple[list[gs.Node], list[gs.Constant]]:
    """Constant nodes (topologically ordered) and initializer leaves behind ``tensor``."""
    seen_nodes: dict[int, gs.Node] = {}
    leaves: dict[int, gs.Constant] = {}
    stack = [tensor]
    while stack:
        t = stack.pop()
        if isinstance(t, gs.Constant):
            leaves[id(t)] = t
            continue
        node = producer(t)
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes[id(node)] = node
        if id(node) in plan.substitutes:  # evaluated as another op (Shape, Size, CastLike)
            if node.op == "CastLike":
                stack.append(node.inputs[0])
            continue
        stack.extend(t for t in node.inputs if not is_empty(t))
    ordered = sorted(seen_nodes.values(), key=lambda n: plan.members[id(n)])
    return ordered, list(leaves.values())


# Where a computed tensor is a parameter the runtime would materialize anyway: input index >= 1.
_PARAMETER_OF = frozenset(LINEAR_OPS) | {
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "RMSNormalization",
}


def _only_parameters(tensor: gs.Tensor, plan: _ConstantNodes) -> bool:
    """Whether ``tensor`` ends, through constant nodes only, as weights or parameters of linear and norm ops.

    Old model-zoo files compute every Conv weight with ConstantOfShape: materializing
    those next to a normalization does not grow what the runtime holds, and the fold
    needs them as values. Weights no fold touches stay computed (a VGG stays 1 KB).
    """
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for user in t.outputs:
            if id(user) in plan.members:
                stack.extend(user.outputs)
                continue
            indices = [i for i, x in enumerate(user.inputs) if x is t]
            if user.op not in _PARAMETER_OF or 0 in indices or not _next_to_norm(user):
                return False
    return True


def _next_to_norm(node: gs.Node) -> bool:
    """A normalization itself, or a linear op a normalization reads from or feeds: what fold rewrites."""
    if node.op not in LINEAR_OPS:
        return True
    before = producer(node.inputs[0]) if node.inputs else None
    after = [u for t in node.outputs for u in t.outputs]
    return any(n is not None and n.op in _PARAMETER_OF and n.op not in LINEAR_OPS for n in [before, *after])


@dataclass(frozen=True)
class _Job:
    """One frontier tensor: the constant nodes behind it, its initializers' bytes, and its value."""

    tensor: gs.Tensor
    ancestors: list[gs.Node]
    leaf_bytes: int
    value: np.ndarray | None  # None when the batch could not be evaluated


@dataclass(frozen=True)
class _Survey:
    constants: _ConstantNodes
    jobs: dict[int, list[_Job]]  # id(producer) -> the jobs of its frontier outputs, in output order
    error: str | None  # why the one batched evaluation failed


@dataclass(frozen=True)
class _Outcome:
    """What becomes of one job: folded, refused, or left as it is with nothing to say (``kind`` "keep")."""

    job: _Job
    kind: str  # "fold", "refuse" or "keep"
    anchor: str
    family: str | None  # the weight subgraph's family next to a normalization, else None
    detail: str


@dataclass(frozen=True)
class _Fold:
    """Every frontier output of one node; the plan's own decision is its last fold's."""

    anchor: str
    family: str
    outcomes: list[_Outcome]
    own: _Outcome


class FoldConstants:
    name = NAME
    tidy_first = True

    def survey(self, ctx: PassContext) -> _Survey:
        """Which nodes are constant, the frontier they leave, and every frontier value, evaluated in one batch."""
        excluded = _oversized_expansions(ctx, _ConstantNodes(ctx, set()))
        constants = _ConstantNodes(ctx, excluded)
        frontier = _frontier(ctx, constants)
        if not frontier:
            return _Survey(constants, {}, None)
        leaves: dict[int, gs.Constant] = {}
        found = []
        for t in frontier:
            anc_nodes, anc_leaves = _ancestors(t, constants)
            found.append((t, anc_nodes, sum(stored_nbytes(c) for c in anc_leaves)))
            leaves.update((id(c), c) for c in anc_leaves)
        needed = {id(n) for _, anc, _ in found for n in anc}
        nodes = [n for n in constants.nodes if id(n) in needed]
        error = None
        try:
            values = _evaluate(ctx, constants, nodes, list(leaves.values()), frontier)
        except EvaluationError as e:
            values, error = [None] * len(found), f"constant subgraph could not be evaluated: {e}"
        jobs: dict[int, list[_Job]] = {}
        for (t, anc, leaf_bytes), value in zip(found, values, strict=False):
            jobs.setdefault(id(producer(t)), []).append(_Job(t, anc, leaf_bytes, value))
        return _Survey(constants, jobs, error)

    def match(self, node: gs.Node, ctx: PassContext) -> list[_Job] | None:
        return ctx.survey.jobs.get(id(node))

    def check(self, jobs: list[_Job], ctx: PassContext) -> _Fold | Refusal | None:
        outcomes = [_outcome(job, ctx) for job in jobs]
        folds = [o for o in outcomes if o.kind == "fold"]
        if folds:
            return _Fold(folds[-1].anchor, folds[-1].family or NO_FAMILY, outcomes, folds[-1])
        told = [o for o in outcomes if o.kind == "refuse" and o.family is not None]
        if not told:
            return None
        for o in told[:-1]:  # a node with several frontier outputs: one decision each
            ctx.refused(o.anchor, o.family, self.name, o.detail)
        return Refusal(told[-1].anchor, told[-1].family, told[-1].detail)

    def rewrite(self, plan: _Fold, ctx: PassContext) -> str:
        node = producer(plan.own.job.tensor)
        for o in plan.outcomes:
            if o.kind == "fold":
                to_constant(o.job.tensor, o.job.value)
            if o is plan.own or o.family is None:
                continue
            if o.kind == "fold":
                ctx.folded(o.anchor, o.family, self.name, o.detail)
            elif o.kind == "refuse":
                ctx.refused(o.anchor, o.family, self.name, o.detail)
        # The constant nodes only these tensors needed go now, not at the next rule's survey: the folds
        # sweep next and count readers (a Shape of a normalization's output is one until it goes).
        prune([node], ctx.outputs)
        return plan.own.detail


def _outcome(job: _Job, ctx: PassContext) -> _Outcome:
    """Whether the job's value replaces its tensor, and the decision a weight subgraph gets."""
    t, constants = job.tensor, ctx.survey.constants
    family = weight_family(job.ancestors, ctx.graph.opset) if job.ancestors else None
    anchor = describe(job.ancestors[-1]) if job.ancestors else describe(producer(t))
    if ctx.survey.error is not None:
        return _Outcome(job, "refuse", anchor, family, ctx.survey.error)
    value = job.value
    limit = max(ctx.options.growth_limit_bytes, 2 * job.leaf_bytes)
    if value.nbytes > limit and not _only_parameters(t, constants):
        return _Outcome(job, "refuse", anchor, family, f"result of {value.nbytes} bytes would grow the model")
    if value.dtype == object:
        return _Outcome(job, "keep", anchor, family, "")
    if family is None:
        return _Outcome(job, "fold", anchor, None, "evaluated once")
    targets = ", ".join(describe(u) for u in t.outputs if u.op in LINEAR_OPS) or "its consumers"
    return _Outcome(job, "fold", anchor, family, f"weight evaluated once into the weight of {targets}")


def _frontier(ctx: PassContext, plan: _ConstantNodes) -> list[gs.Tensor]:
    """Constant tensors that a non-constant node (or nothing but an initializer) will read."""
    frontier = []
    for node in plan.nodes:
        for t in node.outputs:
            if not t.outputs or t in ctx.outputs:
                continue
            if any(id(u) not in plan.members for u in t.outputs):
                frontier.append(t)
    return frontier


def _oversized_expansions(ctx: PassContext, plan: _ConstantNodes) -> set[int]:
    """Expand / ConstantOfShape / Tile nodes whose constant result would be too large."""
    expanding = [n for n in plan.nodes if n.op in _EXPANDING]
    if not expanding:
        return set()
    shape_tensors = [n.inputs[_EXPANDING[n.op]] for n in expanding]
    needed: dict[int, gs.Node] = {}
    leaves: dict[int, gs.Constant] = {}
    for t in shape_tensors:
        if isinstance(t, gs.Constant):
            continue
        anc, lv = _ancestors(t, plan)
        needed.update((id(n), n) for n in anc)
        leaves.update((id(c), c) for c in lv)
    outs = [t for t in shape_tensors if not isinstance(t, gs.Constant)]
    try:
        computed = _evaluate(ctx, plan, [n for n in plan.nodes if id(n) in needed], list(leaves.values()), outs)
    except EvaluationError:
        return {id(n) for n in expanding}
    by_id = {id(t): v for t, v in zip(outs, computed, strict=False)}
    excluded = set()
    for node, t in zip(expanding, shape_tensors, strict=False):
        sizes = np.asarray(t.values if isinstance(t, gs.Constant) else by_id[id(t)]).astype(np.int64)
        elements = int(np.prod(np.maximum(sizes, 1)))
        if node.op == "Tile":
            src = node.inputs[0]
            src_shape = static_shape(src)
            elements *= int(np.prod(src_shape)) if src_shape is not None else 1
        if elements * 8 > ctx.options.growth_limit_bytes and not _only_parameters(node.outputs[0], plan):
            excluded.add(id(node))
    return excluded


def _evaluate(
    ctx: PassContext, plan: _ConstantNodes, nodes: list[gs.Node], leaves: list[gs.Constant], outputs: list[gs.Tensor]
) -> list[np.ndarray]:
    graph = ctx.graph
    imports = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    return evaluate_protos([plan.proto(n) for n in nodes], leaves, outputs, imports, ctx.graph.ir_version or 8)
