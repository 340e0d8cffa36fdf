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

An affine after an inference BatchNormalization (caffe2's BN + Scale, a BN after a BN) goes into
that BatchNormalization instead: z = s * (gamma * x_hat + beta) + t is a BatchNormalization with
gamma' = s * gamma and beta' = s * beta + t.

Preconditions: y has exactly one consumer and is not a graph output; W and
b are constants; BN is in inference mode with constant parameters, finite,
var + eps > 0, and normalizes the op's feature axis (for MatMul only when the
output has rank 2); a Mul/Add constant varies along the feature axis only;
no folded value overflows the weight's dtype. Chains (Conv -> BN -> BN ->
Mul) fold one after another, because the folded op takes over z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx import foldmath as fm
from normonnx.families import LINEAR_OPS
from normonnx.graph.access import constant_value, describe, op_is, producer, rank_of, sole_consumer
from normonnx.graph.edit import detach, set_input, set_outputs
from normonnx.passes._linear import AffineFold, Linear, fold_affine_after, read_linear
from normonnx.passes.rules import NodePlan, PassContext, Refusal
from normonnx.recognize.affine import ARITHMETIC_OPS, AffineNode, batchnorm_problem, read_affine


@dataclass(frozen=True)
class _Match:
    node: gs.Node
    data: gs.Tensor  # the affine's non-constant input

    @property
    def family(self) -> str:
        return "batchnorm" if self.node.op == "BatchNormalization" else "affine"


@dataclass(frozen=True)
class _IntoBatchNorm(NodePlan):
    """A checked fold of a channel affine into the inference BatchNormalization before it."""

    batchnorm: gs.Node
    affine: AffineNode


def _batchnorm_behind(m: _Match, ctx: PassContext) -> _IntoBatchNorm | Refusal | None:
    bn = producer(m.data)
    if not op_is(bn, "BatchNormalization") or len(bn.outputs) != 1 or batchnorm_problem(bn, ctx.graph.opset):
        return None
    if sole_consumer(bn.outputs[0], ctx.outputs) is not m.node:
        return None
    channels = int(constant_value(bn.inputs[1]).size)
    affine = read_affine(m.node, m.data, ctx.graph.opset, rank_of(m.data), 1, channels)
    if affine is None:
        return None
    if isinstance(affine, str):
        return Refusal(describe(m.node), m.family, affine)
    return _IntoBatchNorm(describe(m.node), affine.family, m.node, bn, affine)


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

    def check(self, m: _Match, ctx: PassContext) -> AffineFold | _IntoBatchNorm | Refusal | None:
        anchor = describe(m.node)
        lin = _linear_behind(m.data, ctx)
        if lin is None:
            into_bn = _batchnorm_behind(m, ctx)
            if into_bn is not None:
                return into_bn
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

    def rewrite(self, plan: AffineFold | _IntoBatchNorm, ctx: PassContext) -> str:
        if isinstance(plan, _IntoBatchNorm):
            return self._into_batchnorm(plan, ctx)
        fold_affine_after(plan.lin, plan.affine.affine, ctx, plan.node.outputs[0], lambda: detach([plan.node]))
        return f"into {plan.lin.kind} {plan.lin.name}"

    @staticmethod
    def _into_batchnorm(plan: _IntoBatchNorm, ctx: PassContext) -> str:
        bn, s, t = plan.batchnorm, plan.affine.affine.scale, plan.affine.affine.shift
        name = describe(bn)
        gamma, beta = (constant_value(x) for x in bn.inputs[1:3])
        gamma2 = fm.cast_exact(s * gamma.astype(np.float64).reshape(-1), gamma.dtype, f"folded scale of {name}")
        beta2 = fm.cast_exact(s * beta.astype(np.float64).reshape(-1) + t, beta.dtype, f"folded B of {name}")
        set_input(bn, 1, ctx.constant(f"{name}_scale_folded", gamma2.reshape(gamma.shape)))
        set_input(bn, 2, ctx.constant(f"{name}_B_folded", beta2.reshape(beta.shape)))
        z = plan.node.outputs[0]
        detach([plan.node])
        set_outputs(bn, z)
        return f"into BatchNormalization {name}"
