"""lower-<family> (one rule per family with a standard op): the op -> the exact subgraph of older opsets.

Before / After (``axes`` = the normalized axes; fp16 with stash_type=1 runs
the statistics inside a Cast-to-float32 island, as the ops themselves do)::

    LayerNormalization(x, g, b, axis)   -> ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div -> Mul(g) -> Add(b)
    RMSNormalization(x, g, axis)        -> Pow/ReduceMean/Add/Sqrt/Div(x, .) -> Mul(g)
    InstanceNormalization(x, g, b)      -> the LayerNorm core over axes [2..] -> Mul(g[C,1..]) -> Add(b[C,1..])
    GroupNormalization(x, g, b, G)      -> Reshape(x, [0, G, -1]) -> InstanceNormalization -> Reshape(Shape(x))
                                           -> Mul(g[C,1..]) -> Add(b[C,1..])        (opset 21: per channel)
                                           (opset 18: g, b per group go into the InstanceNormalization)
    BatchNormalization (inference)      -> Mul(s[C,1..]) -> Add(t[C,1..]),  s = g / sqrt(var + eps), t = b - s * mean

Formula: the ops' own definitions (their ONNX function bodies), written
with Div instead of Reciprocal+Mul as exporters do.

Preconditions: the op's optional statistics outputs (Mean, InvStdDev) are
unused; the rank of x is known where the parameters must be reshaped per
channel or axis is non-negative; BatchNormalization is in inference mode
with constant, finite parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx import foldmath as fm
from normonnx.families import family
from normonnx.graph.access import constant_value, describe, input_or_none, numpy_dtype, onnx_dtype, op_is, rank_of
from normonnx.graph.edit import detach
from normonnx.passes._writer import FLOAT32, Writer, channel_shape, needs_fp32_island
from normonnx.passes.rules import NodePlan, PassContext, Refusal
from normonnx.recognize.affine import batchnorm_problem
from normonnx.recognize.classify import instancenorm_view


def _dtype(t: gs.Tensor) -> np.dtype | None:
    return numpy_dtype(getattr(t, "dtype", None))


def _core(
    w: Writer, x: gs.Tensor, axes: list[int], eps: float, centered: bool, dtype, stats: list[gs.Tensor] | None = None
) -> gs.Tensor:
    """(x - mean) / sqrt(var + eps) over ``axes`` (RMS without the mean); ``stats`` (LayerNormalization's
    Mean and InvStdDev outputs, where used) are written from the same mean and std."""
    mean = w.reduce_mean(x, axes, dtype) if centered else None
    d = w.op("Sub", [x, mean], dtype=dtype) if centered else x
    sq = w.op("Pow", [d, w.scalar("two", 2.0, dtype)], dtype=dtype)
    var = w.reduce_mean(sq, axes, dtype)
    std = w.op("Sqrt", [w.op("Add", [var, w.scalar("eps", eps, dtype)], dtype=dtype)], dtype=dtype)
    if stats:
        mean_out, inv_std_out = [*stats, None, None][:2]
        if mean_out is not None:
            w.op("Identity", [mean], out=mean_out)
        if inv_std_out is not None:
            w.op("Reciprocal", [std], out=inv_std_out)
    return w.op("Div", [d, std], dtype=dtype)


def _normalize(
    w: Writer, x: gs.Tensor, axes: list[int], eps: float, centered: bool, stash: int, stats: list | None = None
) -> gs.Tensor:
    """The core, inside an fp32 island when the data is fp16 and statistics are stashed in fp32."""
    dtype = _dtype(x)
    if needs_fp32_island(dtype, stash):
        y = _core(w, w.cast(x, FLOAT32, np.float32), axes, eps, centered, np.float32, stats)
        return w.cast(y, onnx_dtype(dtype), dtype)
    return _core(w, x, axes, eps, centered, dtype, stats)


def _affine(w: Writer, y: gs.Tensor, scale: gs.Tensor | None, bias: gs.Tensor | None, out: gs.Tensor) -> None:
    dtype = _dtype(out) or _dtype(y)
    if scale is not None:
        y = w.op("Mul", [y, scale], out=out if bias is None else None, dtype=dtype)
    if bias is not None:
        y = w.op("Add", [y, bias], out=out, dtype=dtype)
    if scale is None and bias is None:
        w.op("Identity", [y], out=out)


def _per_channel(w: Writer, name: str, t: gs.Tensor | None, rank: int) -> gs.Tensor | None:
    """A [C] parameter as [C, 1, ...]: a constant reshaped now, a tensor through Reshape."""
    if t is None:
        return None
    value = constant_value(t)
    if value is not None:
        return w.const(name, value.reshape(channel_shape(rank)))
    return w.op("Reshape", [t, w.const(f"{name}_shape", np.array(channel_shape(rank), np.int64))], dtype=_dtype(t))


def _known_dtype(node: gs.Node) -> str | None:
    """The subgraph's constants take the data's type: refuse when inference could not tell it."""
    if node.op != "BatchNormalization" and _dtype(node.inputs[0]) is None:
        return f"{describe(node)}: the data type of its input is unknown"
    return None


def _used_stat_outputs(node: gs.Node, ctx: PassContext) -> list[gs.Tensor | None]:
    return [t if (t.outputs or t in ctx.outputs) else None for t in node.outputs[1:]]


def _unused_stat_outputs(node: gs.Node, ctx: PassContext) -> str | None:
    """Only LayerNormalization's Mean and InvStdDev (float32 data) are written by the subgraph."""
    if not any(_used_stat_outputs(node, ctx)):
        return None
    if node.op == "LayerNormalization" and _dtype(node.inputs[0]) == np.float32:
        return None
    return f"{describe(node)}: its statistics outputs are used"


Write = Callable[[Writer, gs.Tensor], None]


def _axes(node: gs.Node) -> list[int] | str:
    axis = int(node.attrs.get("axis", -1))
    rank = rank_of(node.inputs[0])
    if axis >= 0 and rank is None:
        return f"{describe(node)}: axis {axis} with an unknown input rank"
    return list(range(axis, 0)) if axis < 0 else list(range(axis, rank))


def _lower_last_axes(node: gs.Node, centered: bool, stats: list[gs.Tensor | None] | None = None) -> Write | str:
    """LayerNormalization (centered, with bias) and RMSNormalization (neither) over axes [axis..]."""
    x, scale = node.inputs[0], input_or_none(node, 1)
    bias = input_or_none(node, 2) if centered else None
    axes = _axes(node)
    if isinstance(axes, str):
        return axes
    eps, stash = float(node.attrs.get("epsilon", 1e-5)), int(node.attrs.get("stash_type", 1))
    return lambda w, out: _affine(w, _normalize(w, x, axes, eps, centered, stash, stats), scale, bias, out)


def lower_layernorm(node: gs.Node, ctx: PassContext) -> Write | str:
    return _lower_last_axes(node, centered=True, stats=_used_stat_outputs(node, ctx))


def lower_rmsnorm(node: gs.Node, ctx: PassContext) -> Write | str:
    return _lower_last_axes(node, centered=False)


def lower_instancenorm(node: gs.Node, ctx: PassContext) -> Write | str:
    x, scale, bias = node.inputs[0], node.inputs[1], node.inputs[2]
    rank = rank_of(x)
    if rank is None:
        return f"{describe(node)}: the input rank is unknown"
    eps = float(node.attrs.get("epsilon", 1e-5))

    def write(w: Writer, out: gs.Tensor) -> None:
        y = _normalize(w, x, list(range(2, rank)), eps, True, 1)
        _affine(w, y, _per_channel(w, "scale", scale, rank), _per_channel(w, "bias", bias, rank), out)

    return write


def lower_groupnorm(node: gs.Node, ctx: PassContext) -> Write | str:
    x, scale, bias = node.inputs[0], node.inputs[1], node.inputs[2]
    rank = rank_of(x)
    if rank is None:
        return f"{describe(node)}: the input rank is unknown"
    groups = int(node.attrs["num_groups"])
    eps = float(node.attrs.get("epsilon", 1e-5))
    per_channel = ctx.graph.opset >= 21
    dtype = _dtype(x)
    island = needs_fp32_island(dtype, int(node.attrs.get("stash_type", 1)))
    work = np.float32 if island else dtype

    def write(w: Writer, out: gs.Tensor) -> None:
        src = w.cast(x, FLOAT32, np.float32) if island else x
        grouped = w.op("Reshape", [src, w.const("groups", np.array([0, groups, -1], np.int64))], dtype=work)
        if per_channel:
            ones = np.ones(groups, dtype=work or np.float32)
            g_scale, g_bias = w.const("ones", ones), w.const("zeros", np.zeros_like(ones))
        elif island:  # opset 18: scale and bias are per group
            g_scale, g_bias = w.cast(scale, FLOAT32, np.float32), w.cast(bias, FLOAT32, np.float32)
        else:
            g_scale, g_bias = scale, bias
        normed = w.op("InstanceNormalization", [grouped, g_scale, g_bias], {"epsilon": eps}, dtype=work)
        last = not per_channel and not island  # the reshape back is the result
        back = w.op("Reshape", [normed, w.op("Shape", [x], dtype=np.int64)], out=out if last else None, dtype=work)
        if island:
            back = w.cast(back, onnx_dtype(dtype), dtype, out=None if per_channel else out)
        if per_channel:
            _affine(w, back, _per_channel(w, "scale", scale, rank), _per_channel(w, "bias", bias, rank), out)

    return write


def lower_batchnorm(node: gs.Node, ctx: PassContext) -> Write | str:
    problem = batchnorm_problem(node, ctx.graph.opset)
    if problem:
        return problem
    x = node.inputs[0]
    rank = rank_of(x)
    gamma, beta, mean, var = (constant_value(t) for t in node.inputs[1:5])
    try:
        affine = fm.batchnorm_affine(gamma, beta, mean, var, float(node.attrs.get("epsilon", 1e-5)))
        dtype = _dtype(x) or gamma.dtype
        s = fm.cast_exact(affine.scale, dtype, "scale")
        t = fm.cast_exact(affine.shift, dtype, "shift")
    except fm.FoldMathError as e:
        return f"{describe(node)}: {e}"
    if rank is not None:
        shape = channel_shape(rank)
        return lambda w, out: _affine(w, x, w.const("scale", s.reshape(shape)), w.const("shift", t.reshape(shape)), out)

    def any_rank(w: Writer, out: gs.Tensor) -> None:
        # The rank is unknown (an op shape inference cannot see through): [C] becomes [C, 1, ...]
        # at run time, with as many 1s as x has axes after the channel one.
        after = w.op("Sub", [w.op("Shape", [w.op("Shape", [x])]), w.const("two", np.array([2], np.int64))])
        one = gs.Constant(w.ctx.fresh("one"), np.array([1], np.int64))
        ones = w.op("ConstantOfShape", [after], {"value": one})
        shape = w.op("Concat", [w.const("channels", np.array([-1], np.int64)), ones], {"axis": 0})
        scale = w.op("Reshape", [w.const("scale", s), shape], dtype=_dtype(x))
        shift = w.op("Reshape", [w.const("shift", t), shape], dtype=_dtype(x))
        _affine(w, x, scale, shift, out)

    return any_rank


# family -> how its standard op is written out (every family with an op in families.py).
LOWERINGS: dict[str, Callable[[gs.Node, PassContext], Write | str]] = {
    "layernorm": lower_layernorm,
    "rmsnorm": lower_rmsnorm,
    "instancenorm": lower_instancenorm,
    "groupnorm": lower_groupnorm,
    "batchnorm": lower_batchnorm,
}


@dataclass(frozen=True)
class _Plan(NodePlan):
    write: Write


class Lower:
    """Replace every node of one family's standard op by its exact subgraph, written in the graph's opset."""

    def __init__(self, family_key: str) -> None:
        self.family = family_key
        self.op = family(family_key).onnx_op
        self.name = f"lower-{family_key}"

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        if not op_is(node, self.op):
            return None
        if self.op == "InstanceNormalization" and instancenorm_view(node) is not None:
            return None  # the core of a decomposed GroupNorm, not an InstanceNorm of its own
        return node

    def check(self, node: gs.Node, ctx: PassContext) -> _Plan | Refusal:
        write = _unused_stat_outputs(node, ctx) or _known_dtype(node) or LOWERINGS[self.family](node, ctx)
        if isinstance(write, str):
            return Refusal(describe(node), self.family, write)
        return _Plan(describe(node), self.family, node, write)

    def rewrite(self, plan: _Plan, ctx: PassContext) -> str:
        out = plan.node.outputs[0]
        detach([plan.node])  # the subgraph reads the tensors the check took from it, and writes ``out``
        plan.write(Writer(ctx, plan.anchor), out)
        return "lowered to its exact subgraph"
