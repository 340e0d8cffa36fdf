"""raise-<family>: decomposed normalization subgraphs -> the standard op.

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

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe, op_is, producer
from normonnx.passes._base import PassContext
from normonnx.passes._writer import Writer, contained, detach
from normonnx.recognize.moments import Affine, MomentNorm, following_affine, match_core

FIRST_OPSET = {"layernorm": 17, "rmsnorm": 23, "instancenorm": 1, "groupnorm": 21}


def _shape(t: gs.Tensor) -> list | None:
    return getattr(t, "shape", None)


def _static_dims(t: gs.Tensor, axes: list[int]) -> list[int] | None:
    shape = _shape(t)
    if shape is None:
        return None
    dims = [shape[a] for a in axes]
    return [int(d) for d in dims] if all(isinstance(d, (int, np.integer)) and d > 0 for d in dims) else None


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


def grouped_view(pre: gs.Node) -> int | str:
    """Groups G when ``pre`` reshapes x to [N, G, -1] keeping each sample apart, else why not."""
    target = constant_value(pre.inputs[1])
    if target is None or target.size != 3:
        return "the grouped view's shape is not a constant [N, G, -1]"
    n, groups, rest = (int(v) for v in target.reshape(-1))
    if groups <= 0 or rest != -1:
        return f"the grouped view's shape {[n, groups, rest]} is not [N, G, -1] with G > 0"
    batch = (_shape(pre.inputs[0]) or [None])[0]
    if n != 0 and n != batch:  # a baked batch that is not x's would mix samples
        return f"the grouped view's batch {n} is not the input's ({batch})"
    return groups


def _group_view(core: MomentNorm) -> tuple[gs.Node, gs.Node, int | str] | None:
    """(Reshape in, Reshape out, groups or why not) when the core runs on a reshaped view of x."""
    pre = producer(core.x)
    if not op_is(pre, "Reshape") or len(core.y.outputs) != 1 or not op_is(core.y.outputs[0], "Reshape"):
        return None
    return pre, core.y.outputs[0], grouped_view(pre)


class _Raiser:
    """Shared plumbing: check containment, write the op, detach the old nodes, record."""

    name = "raise-norms"

    def __init__(self, families: set[str]) -> None:
        self.families = families

    def _replace(self, ctx: PassContext, family: str, anchor: str, nodes, output, build) -> int:
        why = contained(nodes, output, ctx.outputs)
        if why:
            ctx.refused(anchor, family, f"raise-{family}", why)
            return 0
        detach(nodes)
        build(Writer(ctx, anchor))
        ctx.folded(anchor, family, f"raise-{family}", "raised to the standard op")
        return 1


class RaiseMoments(_Raiser):
    """LayerNorm (last axes or channels-first), RMSNorm, InstanceNorm, GroupNorm (ReduceMean form)."""

    def run(self, ctx: PassContext) -> int:
        rewrites = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs or not op_is(node, "Div", "Mul"):
                continue
            core = match_core(node)
            if core is None or constant_value(core.x) is not None:
                continue
            family, plan = self._plan(core, ctx)
            if family not in self.families or FIRST_OPSET[family] > ctx.graph.opset:
                continue
            anchor = describe(node)
            if isinstance(plan, str):
                ctx.refused(anchor, family, f"raise-{family}", plan)
                continue
            nodes, output, build = plan
            rewrites += self._replace(ctx, family, anchor, nodes, output, build)
        return rewrites

    def _plan(self, core: MomentNorm, ctx: PassContext):
        group = _group_view(core) if core.centered else None
        if group is not None:
            return "groupnorm", self._groupnorm(core, *group)
        rank = core.rank()
        axes = core.normalized_axes()
        if not core.centered:
            return "rmsnorm", self._lastaxes(core, "RMSNormalization")
        if rank is not None and axes == tuple(range(2, rank)) and rank >= 3:
            affine = following_affine(core.y)
            param = affine.scale if affine.scale is not None else affine.bias
            if (param is not None and param.ndim >= 2 and param.shape[-1] == 1) or (param is None and rank >= 4):
                return "instancenorm", self._instancenorm(core, affine, rank)
        if rank is not None and axes == (1,) and rank >= 3:
            return "layernorm", self._channels_first(core, rank)
        return "layernorm", self._lastaxes(core, "LayerNormalization")

    @staticmethod
    def _eps_problem(core: MomentNorm) -> str | None:
        return "eps is added to the standard deviation; no standard op computes that" if core.eps_in_std else None

    def _lastaxes(self, core: MomentNorm, op: str):
        if problem := self._eps_problem(core):
            return problem
        rank = core.rank()
        axes = core.normalized_axes()
        if rank is None or axes is None:
            return "the input rank is unknown"
        if axes != tuple(range(rank - len(axes), rank)):
            return f"axes {list(axes)} are not the last axes"
        dims = _static_dims(core.x, list(axes))
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

    def _channels_first(self, core: MomentNorm, rank: int):
        if problem := self._eps_problem(core):
            return problem
        dims = _static_dims(core.x, [1])
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

    def _instancenorm(self, core: MomentNorm, affine: Affine, rank: int):
        if problem := self._eps_problem(core):
            return problem
        return _instancenorm_plan(core.x, core.eps, affine, rank, [*core.nodes, *affine.nodes])

    def _groupnorm(self, core: MomentNorm, pre: gs.Node, post: gs.Node, groups: int | str):
        if isinstance(groups, str):
            return groups
        if problem := self._eps_problem(core):
            return problem
        if core.axes not in ((-1,), (2,)):
            return f"axes {list(core.axes)} of the grouped view are not its last axis"
        return _groupnorm_plan(pre, post, groups, core.eps, [*core.nodes], None)


def _per_channel(value: np.ndarray | None, rank: int, channels: int, default: float) -> np.ndarray | str:
    return _param_over(value, rank, [1], [channels], default)


def _instancenorm_plan(x: gs.Tensor, eps: float, affine: Affine, rank: int, nodes: list[gs.Node]):
    channels = _static_dims(x, [1])
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
    rank = len(_shape(x)) if _shape(x) is not None else None
    channels = _static_dims(x, [1])
    if rank is None or channels is None:
        return f"the rank or channel dim of '{x.name}' is not static"
    c = channels[0]
    if c % groups:
        return f"{c} channels do not split into {groups} groups"
    back = producer(post.inputs[1])
    back_value = constant_value(post.inputs[1])
    static = _shape(x)
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


class RaiseGroupNormInstanceNorm(_Raiser):
    """Reshape([N, G, -1]) -> InstanceNormalization -> Reshape(back) [-> Mul -> Add] -> GroupNormalization."""

    def run(self, ctx: PassContext) -> int:
        if "groupnorm" not in self.families or ctx.graph.opset < FIRST_OPSET["groupnorm"]:
            return 0
        rewrites = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs or not op_is(node, "InstanceNormalization"):
                continue
            pre, users = producer(node.inputs[0]), node.outputs[0].outputs
            if not op_is(pre, "Reshape") or len(users) != 1 or not op_is(users[0], "Reshape"):
                continue
            groups = grouped_view(pre)
            anchor = describe(node)
            if isinstance(groups, str):
                ctx.refused(anchor, "groupnorm", "raise-groupnorm", groups)
                continue
            sg, bg = constant_value(node.inputs[1]), constant_value(node.inputs[2])
            if sg is None or bg is None:
                ctx.refused(anchor, "groupnorm", "raise-groupnorm", "the per-group scale or bias is not a constant")
                continue
            plan = _groupnorm_plan(pre, users[0], groups, float(node.attrs.get("epsilon", 1e-5)), [node], (sg, bg))
            if isinstance(plan, str):
                ctx.refused(anchor, "groupnorm", "raise-groupnorm", plan)
                continue
            rewrites += self._replace(ctx, "groupnorm", anchor, *plan)
        return rewrites
