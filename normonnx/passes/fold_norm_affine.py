"""fold-norm-affine (opt-in): a normalization's affine goes into the linear op after it.

Before::

    x -> LayerNormalization|RMSNormalization(g, b) -> z -> MatMul|Gemm(W)          (last axis)
    x -> GroupNormalization|InstanceNormalization(g, b) -> z -> Conv|MatMul(W)      (axis 1)
    x -> <decomposed core> -> Mul(g) -> Add(b) -> z -> ...                          (the same, decomposed)

After::

    x -> <the normalization with g = 1, b = 0, or without its Mul/Add> -> MatMul|Gemm|Conv(W') -> ...

Formula: (n * g + b) @ W = n @ (diag(g) W) + b @ W; for a Conv over input
channels, W'[o, i] = W[o, i] * g[i] and b'[o] = b[o] + sum_{i,k} W[o, i, k] * b[i].
Quantization pipelines want this: the normalization's output range no longer
depends on learned scales.

Preconditions: z has one consumer, the linear op's data input, and is not a
graph output; g and b are constants that vary along the linear op's input
features only (a LayerNorm over one axis; GroupNorm/InstanceNorm per
channel); a Conv consumer has no padding unless b is zero; the weights are
constants.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.passes import _foldmath as fm
from normonnx.graph.access import constant_value, describe, input_or_none, op_is, producer, sole_consumer
from normonnx.passes._affine import channel_vector
from normonnx.passes._base import PassContext
from normonnx.passes._writer import contained
from normonnx.passes.fold_into_consumer import pads_reach_data
from normonnx.passes._linear import LINEAR_OPS, Linear, fold_affine_before, read_linear
from normonnx.passes.lower import inside_groupnorm
from normonnx.recognize.moments import following_affine, match_core

NAME = "fold-norm-affine"
_OPS = {
    "LayerNormalization": "layernorm",
    "RMSNormalization": "rmsnorm",
    "GroupNormalization": "groupnorm",
    "InstanceNormalization": "instancenorm",
}


def _consumer(z: gs.Tensor, ctx: PassContext) -> Linear | str:
    user = sole_consumer(z, ctx.outputs)
    if isinstance(user, str):
        return f"output {user}"
    if not op_is(user, *LINEAR_OPS) or user.inputs[0] is not z:
        return f"its output goes to {user.op} {describe(user)}, not a linear op's data input"
    if op_is(user, "Gemm") and user.attrs.get("transA", 0):
        return f"{describe(user)} has transA=1"
    if op_is(user, "ConvTranspose"):
        return f"{describe(user)} is a ConvTranspose"
    return read_linear(user, ctx)


def _vector(value: np.ndarray | None, channels: int, default: float, rank: int | None, axis: int) -> np.ndarray | str:
    """The affine constant as a vector over the linear op's input features (on ``axis`` of the data)."""
    if value is None:
        return np.full(channels, default)
    vec = channel_vector(np.asarray(value), rank, axis, channels)
    return vec if isinstance(vec, np.ndarray) else f"its affine: {vec}"


def _is_identity(scale: np.ndarray | None, bias: np.ndarray | None) -> bool:
    """Nothing left to fold (after a previous round, or never there)."""
    return (scale is None or bool(np.all(scale == 1))) and (bias is None or not np.any(bias))


class FoldNormAffine:
    name = NAME

    def run(self, ctx: PassContext) -> int:
        rewrites = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs:
                continue
            if op_is(node, "InstanceNormalization") and inside_groupnorm(node):
                rewrites += self._grouped_instancenorm(node, ctx)
            elif op_is(node, *_OPS):
                rewrites += self._op_form(node, ctx)
            elif op_is(node, "Div", "Mul"):
                rewrites += self._decomposed(node, ctx)
        return rewrites

    def _fold(self, ctx, anchor, family, lin: Linear, scale, bias, per_channel: bool, clear, rank) -> int:
        """Fold (scale, bias) over lin's input features; ``clear`` drops them from the normalization."""
        n = lin.in_channels
        axis = 1 if per_channel else -1
        s, t = _vector(scale, n, 1.0, rank, axis), _vector(bias, n, 0.0, rank, axis)
        for v in (s, t):
            if isinstance(v, str):
                ctx.refused(anchor, family, NAME, v)
                return 0
        if lin.kind == "Conv" and np.any(t) and pads_reach_data(lin.node):
            ctx.refused(anchor, family, NAME, f"{lin.name} zero-pads its input and the bias is not zero")
            return 0
        if lin.kind == "MatMul" and per_channel:
            ctx.refused(anchor, family, NAME, f"{lin.name}: a per-channel affine does not act on a MatMul's features")
            return 0
        if lin.kind == "Conv" and not per_channel:
            ctx.refused(anchor, family, NAME, f"{lin.name}: a last-axis affine does not act on a Conv's channels")
            return 0
        try:
            fold_affine_before(lin, fm.ChannelAffine(s, t), ctx, clear)
        except fm.FoldMathError as e:
            ctx.refused(anchor, family, NAME, str(e))
            return 0
        ctx.folded(anchor, family, NAME, f"affine into {lin.kind} {lin.name}")
        return 1

    def _op_form(self, node: gs.Node, ctx: PassContext) -> int:
        family, anchor = _OPS[node.op], describe(node)
        per_channel = node.op in ("GroupNormalization", "InstanceNormalization")
        if node.op == "GroupNormalization" and ctx.graph.opset < 21:
            return 0  # per-group scale: not a per-channel affine
        if not per_channel and node.attrs.get("axis", -1) not in (-1, _last_axis(node.inputs[0])):
            ctx.refused(anchor, family, NAME, "it normalizes more than the last axis")
            return 0
        lin = _consumer(node.outputs[0], ctx)
        if isinstance(lin, str):
            ctx.refused(anchor, family, NAME, lin)
            return 0
        scale_t, bias_t = input_or_none(node, 1), input_or_none(node, 2) if node.op != "RMSNormalization" else None
        scale = constant_value(scale_t) if scale_t is not None else None
        bias = constant_value(bias_t) if bias_t is not None else None
        if (scale_t is not None and scale is None) or (bias_t is not None and bias is None):
            ctx.refused(anchor, family, NAME, "its scale or bias is not a constant")
            return 0
        if _is_identity(scale, bias):
            return 0
        # The unit scale and zero bias left behind keep the op's own parameter shapes.
        unit = None if scale is None else np.ones_like(scale)
        zero = None if bias is None else np.zeros_like(bias)
        if per_channel and scale is not None:  # GroupNorm/InstanceNorm parameters are [C] vectors by definition
            scale = scale.reshape(-1, *([1] * max((_rank(node.inputs[0]) or 2) - 2, 0)))
        if per_channel and bias is not None:
            bias = bias.reshape(-1, *([1] * max((_rank(node.inputs[0]) or 2) - 2, 0)))

        def clear(node: gs.Node = node) -> None:
            if unit is not None:
                node.inputs[1] = ctx.constant(f"{anchor}_unit_scale", unit)
            if zero is not None:
                node.inputs[2] = ctx.constant(f"{anchor}_zero_bias", zero)

        return self._fold(ctx, anchor, family, lin, scale, bias, per_channel, clear, _rank(node.inputs[0]))

    def _decomposed(self, node: gs.Node, ctx: PassContext) -> int:
        core = match_core(node)
        if core is None or constant_value(core.x) is not None:
            return 0
        rank = core.rank()
        last = (rank is not None and core.normalized_axes() == (rank - 1,)) or core.axes == (-1,)
        if last:
            family = "layernorm" if core.centered else "rmsnorm"
        elif op_is(producer(core.x), "Reshape"):
            return 0  # a grouped view: its affine, if any, comes after the reshape back
        else:
            family = "instancenorm"
        return self._unfold_affine(ctx, describe(node), family, core.y, per_channel=not last)

    def _grouped_instancenorm(self, node: gs.Node, ctx: PassContext) -> int:
        """Reshape -> InstanceNormalization -> Reshape -> Mul -> Add: a GroupNorm's per-channel affine."""
        post = node.outputs[0].outputs[0]
        return self._unfold_affine(ctx, describe(node), "groupnorm", post.outputs[0], per_channel=True)

    def _unfold_affine(self, ctx: PassContext, anchor: str, family: str, y: gs.Tensor, per_channel: bool) -> int:
        """Fold the constant Mul/Add after ``y`` into the linear op after them."""
        affine = following_affine(y)
        if not affine.nodes:
            return 0
        why = contained(affine.nodes, affine.output, ctx.outputs)
        lin = why or _consumer(affine.output, ctx)
        if isinstance(lin, str):
            ctx.refused(anchor, family, NAME, lin)
            return 0

        def clear() -> None:
            for n in affine.nodes:
                n.inputs.clear()
                n.outputs.clear()
            lin.node.inputs[0] = y

        return self._fold(ctx, anchor, family, lin, affine.scale, affine.bias, per_channel, clear, _rank(y))


def _rank(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else len(shape)


def _last_axis(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    return None if shape is None else len(shape) - 1
