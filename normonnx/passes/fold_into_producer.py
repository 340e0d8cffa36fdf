"""fold-into-producer: a channel affine after a linear op goes into its weights.

Before::

    x -> Conv|ConvTranspose|Gemm|MatMul(+Add) -> y -> BatchNormalization|Mul|Add|Sub|Div(const) -> z

After::

    x -> Conv|ConvTranspose|Gemm|MatMul(+Add)' -> z

Formula, with the affine z = s * y + t (BN: s = gamma / sqrt(var + eps),
t = beta - s * mean): W'[o] = s[o] * W[o] along the op's output features
(Conv axis 0; ConvTranspose axis 1 within each group; Gemm/MatMul the columns
of B, rows when transB=1), b' = s * b + t (Gemm: C' = s * beta * C + t and
beta' = 1). Computed in float64, cast back to the weight's dtype.

Preconditions: y has exactly one consumer and is not a graph output; W and
b are constants; BN is in inference mode with constant parameters, finite,
var + eps > 0, and normalizes the op's feature axis (for MatMul only when the
output has rank 2); a Mul/Add constant varies along the feature axis only;
no folded value overflows the weight's dtype. Chains (Conv -> BN -> BN ->
Mul) fold one after another, because the folded op takes over z.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from normonnx.families import LINEAR_OPS
from normonnx.graph.access import constant_value, describe, op_is, producer, sole_consumer
from normonnx.graph.bridge import detach
from normonnx.passes._affine import ARITHMETIC_OPS, read_affine
from normonnx.passes._base import PassContext, Refusal
from normonnx.passes._linear import AffineFold, Linear, fold_affine_after, read_linear


@dataclass(frozen=True)
class _Match:
    node: gs.Node
    data: gs.Tensor  # the affine's non-constant input

    @property
    def family(self) -> str:
        return "batchnorm" if self.node.op == "BatchNormalization" else "affine"


def _linear_behind(tensor: gs.Tensor, ctx: PassContext) -> Linear | str | None:
    """The linear op whose (biased) output is ``tensor``; a reason; or None if there is none."""
    node = producer(tensor)
    if node is None:
        return None
    if op_is(node, *LINEAR_OPS):
        return read_linear(node, ctx)
    if op_is(node, "Add"):
        for t in node.inputs:
            inner = producer(t)
            if op_is(inner, "MatMul"):
                lin = read_linear(inner, ctx)
                if isinstance(lin, Linear) and lin.bias_add is node:
                    return lin
    return None


class FoldIntoProducer:
    name = "fold-into-producer"

    def match(self, node: gs.Node, ctx: PassContext) -> _Match | None:
        if not op_is(node, "BatchNormalization", *ARITHMETIC_OPS):
            return None
        if node.op == "BatchNormalization":
            data = [node.inputs[0]]
        else:
            data = [t for t in node.inputs if constant_value(t) is None]
        return _Match(node, data[0]) if len(data) == 1 else None

    def check(self, m: _Match, ctx: PassContext) -> AffineFold | Refusal | None:
        anchor = describe(m.node)
        lin = _linear_behind(m.data, ctx)
        if lin is None:
            if m.family != "batchnorm":
                return None  # arithmetic after something else: not a normalization
            src = producer(m.data)
            what = f"{src.op} {describe(src)}" if src else "a graph input"
            return Refusal(anchor, m.family, f"its input comes from {what}, not a linear op")
        if isinstance(lin, str):
            return Refusal(anchor, m.family, lin)
        if lin.bias_add is m.node:
            return None  # the MatMul's own bias
        user = sole_consumer(lin.output, ctx.outputs)
        if isinstance(user, str):
            return Refusal(anchor, m.family, f"output of {lin.kind} {lin.name}: {user}")
        if user is not m.node:
            return None
        axis = lin.output_feature_axis()
        if axis is None and lin.kind == "MatMul":
            axis = -1
        affine = read_affine(m.node, lin.output, ctx.graph.opset, lin.output_rank(), axis, lin.out_channels)
        if affine is None:
            return None
        if isinstance(affine, str):
            return Refusal(anchor, m.family, affine)
        return AffineFold(anchor, affine.family, m.node, lin, affine)

    def rewrite(self, plan: AffineFold, ctx: PassContext) -> str:
        fold_affine_after(plan.lin, plan.affine.affine, ctx, plan.node.outputs[0], lambda: detach([plan.node]))
        return f"into {plan.lin.kind} {plan.lin.name}"
