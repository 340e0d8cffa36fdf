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
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.families import LINEAR_OPS, is_default_domain
from normonnx.graph.access import constant_value, describe, is_empty, onnx_dtype, producer, static_shape
from normonnx.graph.bridge import node_proto, stored_nbytes
from normonnx.graph.evaluate import EvaluationError, evaluate_protos
from normonnx.passes._base import PassContext
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


class _Plan:
    """Which nodes are constant, and how each is written for evaluation."""

    def __init__(self, ctx: PassContext, excluded: set[int]) -> None:
        self.protos: dict[int, onnx.NodeProto] = {}
        self.nodes: list[gs.Node] = []
        const: set[int] = set()
        opset = ctx.graph.opset
        for node in ctx.graph.nodes:
            if id(node) in excluded or not is_default_domain(node.domain) or node.op in _NOT_FOLDABLE:
                continue
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                continue
            proto = self._proto(ctx, node, const, opset)
            if proto is None:
                continue
            self.protos[id(node)] = proto
            self.nodes.append(node)
            const.update(id(t) for t in node.outputs)
        self.const = const

    @staticmethod
    def _is_const(t: gs.Tensor, const: set[int]) -> bool:
        return is_empty(t) or isinstance(t, gs.Constant) or id(t) in const

    def _proto(self, ctx: PassContext, node: gs.Node, const: set[int], opset: int) -> onnx.NodeProto | None:
        if node.op == "Constant":
            return node_proto(node) if constant_value(node.outputs[0]) is not None else None
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
        return node_proto(node)


def _ancestors(tensor: gs.Tensor, plan: _Plan) -> tuple[list[gs.Node], list[gs.Constant]]:
    """Constant nodes (topologically ordered) and initializer leaves behind ``tensor``."""
    seen_nodes: set[int] = set()
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
        seen_nodes.add(id(node))
        if plan.protos[id(node)].op_type != node.op:  # substituted (Shape, Size, CastLike)
            if node.op == "CastLike":
                stack.append(node.inputs[0])
            continue
        stack.extend(t for t in node.inputs if not is_empty(t))
    ordered = [n for n in plan.nodes if id(n) in seen_nodes]
    return ordered, list(leaves.values())


# Where a computed tensor is a parameter the runtime would materialize anyway: input index >= 1.
_PARAMETER_OF = frozenset(LINEAR_OPS) | {
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "RMSNormalization",
}


def _only_parameters(tensor: gs.Tensor, plan: _Plan) -> bool:
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
            if id(user) in plan.protos:
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


class FoldConstants:
    name = NAME

    def run(self, ctx: PassContext) -> int:
        graph = ctx.graph
        excluded = self._oversized_expansions(ctx, _Plan(ctx, set()))
        plan = _Plan(ctx, excluded)
        frontier = self._frontier(ctx, plan)
        if not frontier:
            return 0
        leaves: dict[int, gs.Constant] = {}
        jobs = []
        for t in frontier:
            anc_nodes, anc_leaves = _ancestors(t, plan)
            leaf_bytes = sum(stored_nbytes(c) for c in anc_leaves)
            jobs.append((t, anc_nodes, leaf_bytes))
            leaves.update((id(c), c) for c in anc_leaves)
        needed = {id(n) for _, anc, _ in jobs for n in anc}
        nodes = [n for n in plan.nodes if id(n) in needed]
        try:
            values = self._evaluate(ctx, plan, nodes, list(leaves.values()), frontier)
        except EvaluationError as e:
            for t, anc, _ in jobs:
                self._record(ctx, t, anc, folded=False, detail=f"constant subgraph could not be evaluated: {e}")
            return 0
        rewrites = 0
        for (t, anc, leaf_bytes), value in zip(jobs, values, strict=False):
            limit = max(ctx.options.growth_limit_bytes, 2 * leaf_bytes)
            if value.nbytes > limit and not _only_parameters(t, plan):
                self._record(ctx, t, anc, False, f"result of {value.nbytes} bytes would grow the model")
                continue
            if value.dtype == object:
                continue
            t.to_constant(value)
            t.inputs.clear()
            rewrites += 1
            self._record(ctx, t, anc, True, "weight evaluated once")
        graph.cleanup(remove_unused_graph_inputs=False)
        return rewrites

    @staticmethod
    def _record(ctx: PassContext, t: gs.Tensor, nodes: list[gs.Node], folded: bool, detail: str) -> None:
        users = [u for u in t.outputs if u.op in LINEAR_OPS]
        family = weight_family(nodes, ctx.graph.opset)
        if family is None or not nodes:
            return
        anchor = describe(nodes[-1])
        targets = ", ".join(describe(u) for u in users) or "its consumers"
        if folded:
            ctx.folded(anchor, family, NAME, f"{detail} into the weight of {targets}")
        else:
            ctx.refused(anchor, family, NAME, detail)

    @staticmethod
    def _frontier(ctx: PassContext, plan: _Plan) -> list[gs.Tensor]:
        """Constant tensors that a non-constant node (or nothing but an initializer) will read."""
        frontier = []
        for node in plan.nodes:
            for t in node.outputs:
                if not t.outputs or t in ctx.outputs:
                    continue
                if any(id(u) not in plan.protos for u in t.outputs):
                    frontier.append(t)
        return frontier

    def _oversized_expansions(self, ctx: PassContext, plan: _Plan) -> set[int]:
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
            computed = self._evaluate(
                ctx, plan, [n for n in plan.nodes if id(n) in needed], list(leaves.values()), outs
            )
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

    @staticmethod
    def _evaluate(
        ctx: PassContext, plan: _Plan, nodes: list[gs.Node], leaves: list[gs.Constant], outputs: list[gs.Tensor]
    ) -> list[np.ndarray]:
        graph = ctx.graph
        imports = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
        return evaluate_protos([plan.protos[id(n)] for n in nodes], leaves, outputs, imports, ctx.graph.ir_version or 8)
