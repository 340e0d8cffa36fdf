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

import onnx_graphsurgeon as gs

from normonnx.passes import _foldmath as fm
from normonnx.graph.access import constant_value, describe, op_is, producer, sole_consumer
from normonnx.passes._affine import ARITHMETIC_OPS, AffineNode, read_affine
from normonnx.passes._base import PassContext
from normonnx.passes._linear import LINEAR_OPS, Linear, fold_affine_after, read_linear

NAME = "fold-into-producer"


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


def _data_inputs(node: gs.Node) -> list[gs.Tensor]:
    if node.op == "BatchNormalization":
        return [node.inputs[0]]
    return [t for t in node.inputs if constant_value(t) is None]


class FoldIntoProducer:
    name = NAME

    def run(self, ctx: PassContext) -> int:
        rewrites = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs or not op_is(node, "BatchNormalization", *ARITHMETIC_OPS):
                continue
            data = _data_inputs(node)
            if len(data) != 1:
                continue
            lin = _linear_behind(data[0], ctx)
            is_bn = node.op == "BatchNormalization"
            if lin is None:
                if is_bn:
                    src = producer(data[0])
                    what = f"{src.op} {describe(src)}" if src else "a graph input"
                    ctx.refused(describe(node), "batchnorm", NAME, f"its input comes from {what}, not a linear op")
                continue
            family = "batchnorm" if is_bn else "affine"
            if isinstance(lin, str):
                ctx.refused(describe(node), family, NAME, lin)
                continue
            if lin.bias_add is node:
                continue  # the MatMul's own bias
            result = self._check(node, lin, ctx)
            if isinstance(result, str):
                ctx.refused(describe(node), family, NAME, result)
                continue
            if result is None:
                continue
            out = node.outputs[0]

            def detach(node: gs.Node = node) -> None:
                node.inputs.clear()
                node.outputs.clear()

            try:
                fold_affine_after(lin, result.affine, ctx, out, detach)
            except fm.FoldMathError as e:
                ctx.refused(describe(node), family, NAME, str(e))
                continue
            ctx.folded(describe(node), result.family, NAME, f"into {lin.kind} {lin.name}")
            rewrites += 1
        return rewrites

    @staticmethod
    def _check(node: gs.Node, lin: Linear, ctx: PassContext) -> AffineNode | str | None:
        user = sole_consumer(lin.output, ctx.outputs)
        if isinstance(user, str):
            return f"output of {lin.kind} {lin.name}: {user}"
        if user is not node:
            return None
        axis = lin.output_feature_axis()
        rank = lin.output_rank()
        if axis is None and lin.kind == "MatMul":
            axis = -1
        return read_affine(node, lin.output, ctx.graph.opset, rank, axis, lin.out_channels)
