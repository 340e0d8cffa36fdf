"""What a matched normalization core is: the one classifier ``inspect`` and the passes share.

A core (recognize/moments.py) over the last axes is a LayerNorm; over axis 1
of [N, C, *] a channels-first LayerNorm (ConvNeXt); over the spatial axes an
InstanceNorm or a LayerNorm, told apart by the affine after it; inside a
[N, G, -1] view a GroupNorm; without the mean an RMSNorm. The grouped view
is recognized here once, for decomposed cores and for
Reshape/InstanceNormalization/Reshape alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, op_is, producer, shape_of
from normonnx.recognize.moments import MomentNorm, following_affine


@dataclass(frozen=True)
class GroupedView:
    """x -> Reshape(pre) -> <normalization> -> y -> Reshape(post): a normalization per group."""

    pre: gs.Node
    post: gs.Node


def grouped_view(x: gs.Tensor, y: gs.Tensor) -> GroupedView | None:
    """The Reshapes around a normalization from ``x`` to ``y``, when it runs on a reshaped view."""
    pre = producer(x)
    if not op_is(pre, "Reshape") or len(y.outputs) != 1 or not op_is(y.outputs[0], "Reshape"):
        return None
    return GroupedView(pre, y.outputs[0])


def instancenorm_view(node: gs.Node) -> GroupedView | None:
    """The grouped view around an InstanceNormalization: the core of a decomposed GroupNorm."""
    return grouped_view(node.inputs[0], node.outputs[0])


def view_groups(pre: gs.Node) -> int | str:
    """Groups G when ``pre`` reshapes x to [N, G, -1] keeping each sample apart, else why not."""
    target = constant_value(pre.inputs[1])
    if target is None or target.size != 3:
        return "the grouped view's shape is not a constant [N, G, -1]"
    n, groups, rest = (int(v) for v in target.reshape(-1))
    if groups <= 0 or rest != -1:
        return f"the grouped view's shape {[n, groups, rest]} is not [N, G, -1] with G > 0"
    batch = (shape_of(pre.inputs[0]) or [None])[0]
    if n != 0 and n != batch:  # a baked batch that is not x's would mix samples
        return f"the grouped view's batch {n} is not the input's ({batch})"
    return groups


# How a core's axes lie in its input.
GROUPED, RMS, SPATIAL, CHANNELS_FIRST, LAST_AXES = "grouped", "rms", "spatial", "channels-first", "last-axes"


@dataclass(frozen=True)
class Classified:
    family: str
    layout: str  # one of the layouts above
    detail: str  # for inspect: axes and eps, in a user's words
    view: GroupedView | None = None


def _per_channel_affine(core: MomentNorm, rank: int) -> bool:
    """Same math as a LayerNorm over the trailing axes: the affine's shape tells them apart
    ([C, 1, ...] is per channel); without one, rank 3 is the transformer LayerNorm, rank 4+ the
    InstanceNorm."""
    affine = following_affine(core.y)
    param = affine.scale if affine.scale is not None else affine.bias
    return (param is not None and param.ndim >= 2 and param.shape[-1] == 1) or (param is None and rank >= 4)


def classify(core: MomentNorm) -> Classified:
    axes, rank = core.normalized_axes(), core.rank()
    shown = list(axes) if axes is not None else list(core.axes)
    eps = f"eps {core.eps:g}{' in std' if core.eps_in_std else ''}"
    if not core.centered:
        return Classified("rmsnorm", RMS, f"axes {shown}, {eps}")
    view = grouped_view(core.x, core.y)
    if view is not None:
        return Classified("groupnorm", GROUPED, f"ReduceMean form over a grouped view, {eps}", view)
    if rank is not None and axes is not None and rank >= 3:
        if axes == (1,):
            return Classified("layernorm", CHANNELS_FIRST, f"channels-first over axis 1, {eps}")
        if axes == tuple(range(2, rank)) and _per_channel_affine(core, rank):
            return Classified("instancenorm", SPATIAL, f"over spatial axes {list(axes)}, {eps}")
    if rank is not None and axes is not None and axes == tuple(range(rank - len(axes), rank)):
        return Classified("layernorm", LAST_AXES, f"over the last {len(axes)} axes, {eps}")
    if rank is None and all(a < 0 for a in core.axes):
        return Classified("layernorm", LAST_AXES, f"over axes {list(core.axes)}, {eps}")
    return Classified("layernorm", LAST_AXES, f"over axes {shown}, {eps}")
