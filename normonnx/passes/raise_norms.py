"""raise-moments and raise-grouped-instancenorm: decomposed normalization subgraphs -> the standard op.

Which family a decomposed core is comes from recognize/classify.py, the
classifier ``inspect`` uses too, so the two cannot disagree.

Before (as exporters write them; see recognize/moments.py for the spellings)::

    ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div [-> Mul(g) -> Add(b)]   over the last axes
    the same over axis 1 of [N, C, *]                                 (channels-first, ConvNeXt)
    Pow/ReduceMean/Add/Sqrt/Div|Reciprocal [-> Mul(g)]                (RMSNorm)
    the LayerNorm core over axes [2..] [-> Mul(g[C,1..]) -> Add(b[C,1..])]            (InstanceNorm)
    Reshape([N, G, -1]) -> core over axis 2 -> Reshape(back) [-> Mul -> Add]          (GroupNorm)
    Reshape([N, G, -1]) -> InstanceNormalization -> Reshape(back) [-> Mul -> Add]     (GroupNorm)

After::

    LayerNormalization(x, g, b, axis)                   opset >= 17
    Transpose -> LayerNormalization(axis=-1) -> Transpose (channels-first)
    RMSNormalization(x, g, axis)                        opset >= 23
    InstanceNormalization(x, g, b)
    GroupNormalization(x, g, b, num_groups)             opset >= 21 (per-channel scale and bias)

Formula: identical by the ops' definitions; affine constants are broadcast
to the shape the op wants (a per-group InstanceNormalization affine is
multiplied into the per-channel one).

Preconditions: eps is added to the variance (not to the standard deviation:
no op computes that); every intermediate is used only inside the subgraph;
the dims the op's parameters need are static; affine constants vary only
along the normalized (LayerNorm, RMSNorm) or channel axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import op_available
from normonnx.graph.access import constant_value, describe, op_is, producer, rank_of, shape_of, static_dims
from normonnx.graph.edit import detach
from normonnx.passes._writer import Writer, contained
from normonnx.passes.rules import PassContext, Refusal
from normonnx.recognize.classify import (
    CHANNELS_FIRST,
    GROUPED,
    RMS,
    SPATIAL,
    GroupedView,
    classify,
    instancenorm_view,
    view_groups,
)
from normonnx.recognize.moments import Affine, MomentNorm, following_affine, match_core


@dataclass(frozen=True)
class _Plan:
    anchor: str
    family: str
    nodes: list[gs.Node]
    output: gs.Tensor
    build: object  # Callable[[Writer], None]


def _param_over(
    value: np.ndarray | None, rank: int, axes: list[int], dims: list[int], default: float
) -> np.ndarray | str:
    """An affine constant as an array of ``dims`` (the sizes of ``axes``), or why it is not one."""
    if value is None:
        return np.full(dims, default)
    if value.ndim > rank:
        return f"affine constant of shape {list(value.shape)} has a higher rank than the data"
    aligned = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(aligned) if i not in axes):
        return f"affine constant of shape {list(value.shape)} varies outside the normalized axes"
    try:
        return np.broadcast_to(np.reshape(value, [aligned[a] for a in axes]), dims).copy()
    except ValueError:
        return f"affine constant of shape {list(value.shape)} does not match the normalized dims {dims}"


def _plan_or_refusal(anchor: str, family: str, built, ctx: PassContext) -> _Plan | Refusal:
    if isinstance(built, str):
        return Refusal(anchor, family, built)
    nodes, output, build = built
    why = contained(nodes, output, ctx.outputs)
    return Refusal(anchor, family, why) if why else _Plan(anchor, family, nodes, output, build)


def _replace(plan: _Plan, ctx: PassContext) -> str:
    detach(plan.nodes)
    plan.build(Writer(ctx, plan.anchor))
    return "raised to the standard op"


class RaiseMoments:
    """LayerNorm (last axes or channels-first), RMSNorm, InstanceNorm, GroupNorm (ReduceMean form)."""

    name = "raise-moments"

    def __init__(self, families: frozenset[str]) -> None:
        self.families = families

    def match(self, node: gs.Node, ctx: PassContext) -> MomentNorm | None:
        if not op_is(node, "Div", "Mul"):
            return None
        core = match_core(node)
        return None if core is None or constant_value(core.x) is not None else core

    def check(self, core: MomentNorm, ctx: PassContext) -> _Plan | Refusal | None:
        kind = classify(core)
        if kind.family not in self.families or not op_available(kind.family, ctx.graph.opset):
            return None
        anchor = describe(core.anchor)
        if core.eps_in_std:
            return Refusal(anchor, kind.family, "eps is added to the standard deviation; no standard op computes that")
        if kind.layout == GROUPED:
            built = self._groupnorm(core, kind.view)
        elif kind.layout == RMS:
            built = self._lastaxes(core, "RMSNormalization")
        elif kind.layout == SPATIAL:
            affine = following_affine(core.y)
            built = _instancenorm_plan(core.x, core.eps, affine, core.rank(), [*core.nodes, *affine.nodes])
        elif kind.layout == CHANNELS_FIRST:
            built = self._channels_first(core, core.rank())
        else:
            built = self._lastaxes(core, "LayerNormalization")
        return _plan_or_refusal(anchor, kind.family, built, ctx)

    def rewrite(self, plan: _Plan, ctx: PassContext) -> str:
        return _replace(plan, ctx)

    @staticmethod
    def _lastaxes(core: MomentNorm, op: str):
        rank = core.rank()
        axes = core.normalized_axes()
        if rank is None or axes is None:
            return "the input rank is unknown"
        if axes != tuple(range(rank - len(axes), rank)):
            return f"axes {list(axes)} are not the last axes"
        dims = static_dims(core.x, list(axes))
        if dims is None:
            return f"the normalized dims of '{core.x.name}' are not static"
        affine = following_affine(core.y)
        keep_bias = op == "RMSNormalization"
        scale = _param_over(affine.scale, rank, list(axes), dims, 1.0)
        bias = _param_over(None if keep_bias else affine.bias, rank, list(axes), dims, 0.0)
        for p in (scale, bias):
            if isinstance(p, str):
                return p
        used = affine.nodes[:1] if keep_bias and affine.scale is not None else ([] if keep_bias else affine.nodes)
        output = used[-1].outputs[0] if used else core.y
        dtype = core.x.dtype or np.float32
        attrs = {"axis": int(axes[0]), "epsilon": float(core.eps)}

        def build(w: Writer) -> None:
            ins = [core.x, w.const("scale", scale.astype(dtype))]
            if op == "LayerNormalization":
                ins.append(w.const("bias", bias.astype(dtype)))
            w.op(op, ins, attrs, out=output)

        return [*core.nodes, *used], output, build

    @staticmethod
    def _channels_first(core: MomentNorm, rank: int):
        dims = static_dims(core.x, [1])
        if dims is None:
            return f"the channel dim of '{core.x.name}' is not static"
        affine = following_affine(core.y)
        scale = _param_over(affine.scale, rank, [1], dims, 1.0)
        bias = _param_over(affine.bias, rank, [1], dims, 0.0)
        for p in (scale, bias):
            if isinstance(p, str):
                return p
        output = affine.output
        dtype = core.x.dtype or np.float32
        perm = [0, *range(2, rank), 1]
        back = [0, rank - 1, *range(1, rank - 1)]

        def build(w: Writer) -> None:
            t = w.op("Transpose", [core.x], {"perm": perm}, dtype=dtype)
            n = w.op(
                "LayerNormalization",
                [t, w.const("scale", scale.astype(dtype)), w.const("bias", bias.astype(dtype))],
                {"axis": -1, "epsilon": float(core.eps)},
                dtype=dtype,
            )
            w.op("Transpose", [n], {"perm": back}, out=output)

        return [*core.nodes, *affine.nodes], output, build

    @staticmethod
    def _groupnorm(core: MomentNorm, view: GroupedView):
        groups = view_groups(view.pre)
        if isinstance(groups, str):
            return groups
        if core.axes not in ((-1,), (2,)):
            return f"axes {list(core.axes)} of the grouped view are not its last axis"
        return _groupnorm_plan(view.pre, view.post, groups, core.eps, [*core.nodes], None)


def _per_channel(value: np.ndarray | None, rank: int, channels: int, default: float) -> np.ndarray | str:
    return _param_over(value, rank, [1], [channels], default)


def _instancenorm_plan(x: gs.Tensor, eps: float, affine: Affine, rank: int, nodes: list[gs.Node]):
    channels = static_dims(x, [1])
    if channels is None:
        return f"the channel dim of '{x.name}' is not static"
    scale = _per_channel(affine.scale, rank, channels[0], 1.0)
    bias = _per_channel(affine.bias, rank, channels[0], 0.0)
    for p in (scale, bias):
        if isinstance(p, str):
            return p
    dtype = x.dtype or np.float32
    output = affine.output

    def build(w: Writer) -> None:
        ins = [x, w.const("scale", scale.astype(dtype)), w.const("bias", bias.astype(dtype))]
        w.op("InstanceNormalization", ins, {"epsilon": float(eps)}, out=output)

    return nodes, output, build


def _groupnorm_plan(pre: gs.Node, post: gs.Node, groups: int, eps: float, inner: list, group_affine):
    """GroupNormalization for x -> Reshape(pre) -> <inner> -> Reshape(post) -> affine."""
    x = pre.inputs[0]
    rank = rank_of(x)
    channels = static_dims(x, [1])
    if rank is None or channels is None:
        return f"the rank or channel dim of '{x.name}' is not static"
    c = channels[0]
    if c % groups:
        return f"{c} channels do not split into {groups} groups"
    back = producer(post.inputs[1])
    back_value = constant_value(post.inputs[1])
    static = shape_of(x)
    if not (
        op_is(back, "Shape") and back.inputs[0] is x and not back.attrs.get("start") and back.attrs.get("end") is None
    ) and (back_value is None or list(back_value) != list(static)):
        return "the reshape back does not restore the input's shape"
    affine = following_affine(post.outputs[0])
    scale = _per_channel(affine.scale, rank, c, 1.0)
    bias = _per_channel(affine.bias, rank, c, 0.0)
    for p in (scale, bias):
        if isinstance(p, str):
            return p
    if group_affine is not None:  # a per-group affine inside: y = (n * sg + bg) * gc + bc
        sg, bg = (np.repeat(np.asarray(v, dtype=np.float64).reshape(-1), c // groups) for v in group_affine)
        scale, bias = sg * scale, bg * scale + bias
    extra = [back] if op_is(back, "Shape") and len(back.outputs[0].outputs) == 1 else []
    nodes = [pre, *inner, post, *extra, *affine.nodes]
    output = affine.output
    dtype = x.dtype or np.float32

    def build(w: Writer) -> None:
        ins = [x, w.const("scale", scale.astype(dtype)), w.const("bias", bias.astype(dtype))]
        w.op("GroupNormalization", ins, {"num_groups": groups, "epsilon": float(eps)}, out=output)

    return nodes, output, build


class RaiseGroupedInstanceNorm:
    """Reshape([N, G, -1]) -> InstanceNormalization -> Reshape(back) [-> Mul -> Add] -> GroupNormalization."""

    name = "raise-grouped-instancenorm"

    def __init__(self, families: frozenset[str]) -> None:
        self.families = families

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, GroupedView] | None:
        if not op_is(node, "InstanceNormalization"):
            return None
        view = instancenorm_view(node)
        return None if view is None else (node, view)

    def check(self, match: tuple[gs.Node, GroupedView], ctx: PassContext) -> _Plan | Refusal | None:
        if "groupnorm" not in self.families or not op_available("groupnorm", ctx.graph.opset):
            return None
        node, view = match
        anchor = describe(node)
        groups = view_groups(view.pre)
        if isinstance(groups, str):
            return Refusal(anchor, "groupnorm", groups)
        sg, bg = constant_value(node.inputs[1]), constant_value(node.inputs[2])
        if sg is None or bg is None:
            return Refusal(anchor, "groupnorm", "the per-group scale or bias is not a constant")
        eps = float(node.attrs.get("epsilon", 1e-5))
        built = _groupnorm_plan(view.pre, view.post, groups, eps, [node], (sg, bg))
        return _plan_or_refusal(anchor, "groupnorm", built, ctx)

    def rewrite(self, plan: _Plan, ctx: PassContext) -> str:
        return _replace(plan, ctx)
