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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx import foldmath as fm
from normonnx.families import BY_KEY, BY_OP, LINEAR_OPS
from normonnx.graph.access import constant_value, describe, input_or_none, op_is, producer, rank_of, sole_consumer
from normonnx.graph.edit import detach, set_input
from normonnx.passes._linear import Linear, fold_affine_before, read_linear
from normonnx.passes._writer import contained
from normonnx.passes.fold_into_consumer import pads_reach_data
from normonnx.passes.rules import PassContext, Refusal
from normonnx.recognize.affine import channel_vector
from normonnx.recognize.classify import classify, instancenorm_view
from normonnx.recognize.moments import following_affine, match_core

# The standard ops whose statistics stay at inference: only their affine can move.
_OPS = tuple(BY_KEY[k].onnx_op for k in ("layernorm", "rmsnorm", "groupnorm", "instancenorm"))


@dataclass(frozen=True)
class _Plan:
    anchor: str
    family: str
    lin: Linear
    affine: fm.ChannelAffine
    clear: Callable[[], None]  # drops the affine from the normalization and rewires the linear op


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


def _plan(anchor, family, lin: Linear, scale, bias, per_channel: bool, clear, rank) -> _Plan | str:
    """Folding (scale, bias) over lin's input features, or why it cannot be done exactly."""
    n = lin.in_channels
    axis = 1 if per_channel else -1
    s, t = _vector(scale, n, 1.0, rank, axis), _vector(bias, n, 0.0, rank, axis)
    for v in (s, t):
        if isinstance(v, str):
            return v
    if lin.kind == "Conv" and np.any(t) and pads_reach_data(lin.node):
        return f"{lin.name} zero-pads its input and the bias is not zero"
    if lin.kind == "MatMul" and per_channel:
        return f"{lin.name}: a per-channel affine does not act on a MatMul's features"
    if lin.kind == "Conv" and not per_channel:
        return f"{lin.name}: a last-axis affine does not act on a Conv's channels"
    return _Plan(anchor, family, lin, fm.ChannelAffine(s, t), clear)


class FoldNormAffine:
    name = "fold-norm-affine"

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node if op_is(node, *_OPS, "Div", "Mul") else None

    def check(self, node: gs.Node, ctx: PassContext) -> _Plan | Refusal | None:
        if op_is(node, "InstanceNormalization") and (view := instancenorm_view(node)) is not None:
            # Reshape -> InstanceNormalization -> Reshape -> Mul -> Add: a GroupNorm's per-channel affine.
            result = self._unfold_affine(ctx, describe(node), "groupnorm", view.post.outputs[0], per_channel=True)
            family = "groupnorm"
        elif op_is(node, *_OPS):
            result, family = self._op_form(node, ctx), BY_OP[node.op].key
        else:
            core = match_core(node)
            if core is None or constant_value(core.x) is not None:
                return None
            kind, rank = classify(core), core.rank()
            # Over the last axis only, the affine is per feature; otherwise it must be per channel.
            last = (rank is not None and core.normalized_axes() == (rank - 1,)) or core.axes == (-1,)
            if not last and (kind.view is not None or op_is(producer(core.x), "Reshape")):
                return None  # a grouped view: its affine, if any, comes after the reshape back
            family = kind.family
            result = self._unfold_affine(ctx, describe(node), family, core.y, per_channel=not last)
        return Refusal(describe(node), family, result) if isinstance(result, str) else result

    def rewrite(self, plan: _Plan, ctx: PassContext) -> str:
        fold_affine_before(plan.lin, plan.affine, ctx, plan.clear)
        return f"affine into {plan.lin.kind} {plan.lin.name}"

    def _op_form(self, node: gs.Node, ctx: PassContext) -> _Plan | str | None:
        family, anchor = BY_OP[node.op].key, describe(node)
        per_channel = node.op in ("GroupNormalization", "InstanceNormalization")
        rank = rank_of(node.inputs[0])
        if node.op == "GroupNormalization" and ctx.graph.opset < 21:
            return None  # per-group scale: not a per-channel affine
        if not per_channel and node.attrs.get("axis", -1) not in (-1, None if rank is None else rank - 1):
            return "it normalizes more than the last axis"
        lin = _consumer(node.outputs[0], ctx)
        if isinstance(lin, str):
            return lin
        scale_t, bias_t = input_or_none(node, 1), input_or_none(node, 2) if node.op != "RMSNormalization" else None
        scale = constant_value(scale_t) if scale_t is not None else None
        bias = constant_value(bias_t) if bias_t is not None else None
        if (scale_t is not None and scale is None) or (bias_t is not None and bias is None):
            return "its scale or bias is not a constant"
        if _is_identity(scale, bias):
            return None
        # The unit scale and zero bias left behind keep the op's own parameter shapes.
        unit = None if scale is None else np.ones_like(scale)
        zero = None if bias is None else np.zeros_like(bias)
        if per_channel:  # GroupNorm/InstanceNorm parameters are [C] vectors by definition
            tail = [1] * max((rank or 2) - 2, 0)
            scale = None if scale is None else scale.reshape(-1, *tail)
            bias = None if bias is None else bias.reshape(-1, *tail)

        def clear() -> None:
            if unit is not None:
                set_input(node, 1, ctx.constant(f"{anchor}_unit_scale", unit))
            if zero is not None:
                set_input(node, 2, ctx.constant(f"{anchor}_zero_bias", zero))

        return _plan(anchor, family, lin, scale, bias, per_channel, clear, rank)

    @staticmethod
    def _unfold_affine(ctx: PassContext, anchor: str, family: str, y: gs.Tensor, per_channel: bool):
        """Fold the constant Mul/Add after ``y`` into the linear op after them."""
        affine = following_affine(y)
        if not affine.nodes:
            return None
        why = contained(affine.nodes, affine.output, ctx.outputs)
        lin = why or _consumer(affine.output, ctx)
        if isinstance(lin, str):
            return lin

        def clear() -> None:
            detach(affine.nodes)
            set_input(lin.node, 0, y)

        return _plan(anchor, family, lin, affine.scale, affine.bias, per_channel, clear, rank_of(y))
