"""pad-into-conv: a zero Pad before a Conv (or an AveragePool that counts padding) becomes the op's own pads.

Before::

    x -> Pad(constant 0, pads on the spatial axes) -> Conv(pads=p) -> y

After::

    x -> Conv(pads=p + the Pad's) -> y

Formula: a Conv zero-pads its input by ``pads`` before it slides; padding by the Pad first and then by
``p`` is the same as padding once by their sum, begin and end apart. An AveragePool with
``count_include_pad=1`` divides by the full window, padded zeros included, so the same holds. tf2onnx
and paddle2onnx write such Pads.

Preconditions: the Pad is in constant mode with a constant value of 0 and constant, non-negative
pads (``axes``, opset 18, constant too) that leave the batch and channel axes alone; the op's
``auto_pad`` is NOTSET; the op's rank is known (its weight's, or its ``kernel_shape`` + 2); the
Pad's output is read by this op only, is not a graph output and no If/Loop/Scan body reads it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe, op_is, producer, static_shape
from normonnx.graph.edit import detach, set_input
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal


@dataclass(frozen=True)
class _Merge(NodePlan):
    # node: the Conv or AveragePool
    pad: gs.Node
    spatial: list[int]  # the Pad's begins then ends over the spatial axes, as the op's ``pads``


class PadIntoConv:
    name = "pad-into-conv"
    tidy_first = True
    ops = ("Conv", "AveragePool")

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, gs.Node] | None:
        pad = producer(node.inputs[0])
        return (node, pad) if op_is(pad, "Pad") else None

    def check(self, match: tuple[gs.Node, gs.Node], ctx: PassContext) -> _Merge | Refusal | None:
        node, pad = match
        if len(pad.outputs[0].outputs) != 1:
            return None  # the padded tensor is read elsewhere too: the Pad stays anyway
        anchor = describe(pad)
        why = pinned(pad.outputs[0], ctx)
        if why is not None:
            return Refusal(anchor, NO_FAMILY, why)
        spatial = _spatial_pads(pad, node)
        if isinstance(spatial, str):
            return Refusal(anchor, NO_FAMILY, spatial)
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return Refusal(anchor, NO_FAMILY, f"{describe(node)} pads by auto_pad, not by explicit pads")
        if node.op == "AveragePool" and not node.attrs.get("count_include_pad", 0):
            return Refusal(anchor, NO_FAMILY, f"{describe(node)} leaves padding out of its average")
        return _Merge(anchor, NO_FAMILY, node, pad, spatial)

    def rewrite(self, plan: _Merge, ctx: PassContext) -> str:
        node, pad = plan.node, plan.pad
        own = list(node.attrs.get("pads", [0] * len(plan.spatial)))
        node.attrs["pads"] = [int(a + b) for a, b in zip(own, plan.spatial, strict=True)]
        set_input(node, 0, pad.inputs[0])
        detach([pad])
        return f"into the pads of {describe(node)}"


def _spatial_pads(pad: gs.Node, node: gs.Node) -> list[int] | str:
    """The Pad's begin/end pads over the spatial axes, as Conv's ``pads``; or why they are not exactly that."""
    mode = pad.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return f"pads in {mode} mode, not with zeros"
    if len(pad.inputs) > 1:
        pads = constant_value(pad.inputs[1])
        value = constant_value(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2].name else np.zeros(1)
        axes = constant_value(pad.inputs[3]) if len(pad.inputs) > 3 and pad.inputs[3].name else None
        if pads is None or value is None or (len(pad.inputs) > 3 and pad.inputs[3].name and axes is None):
            return "its pads, value or axes are computed, not constants"
    else:  # Pad-2: pads and value are attributes
        pads, value, axes = np.asarray(pad.attrs.get("pads", [])), np.asarray(pad.attrs.get("value", 0.0)), None
    if value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
        return "pads with a value other than 0"
    pads = np.asarray(pads, np.int64).reshape(-1)
    weight_rank = None
    if node.op == "Conv" and len(node.inputs) > 1:
        shape = static_shape(node.inputs[1])
        weight_rank = len(shape) if shape is not None else None
    rank = weight_rank or (len(node.attrs["kernel_shape"]) + 2 if "kernel_shape" in node.attrs else None)
    if rank is None:
        return f"the rank of {describe(node)} is not known"
    if axes is not None:
        full = np.zeros(2 * rank, np.int64)
        for k, axis in enumerate(np.asarray(axes, np.int64).reshape(-1) % rank):
            full[axis], full[axis + rank] = pads[k], pads[k + len(axes)]
        pads = full
    if pads.size != 2 * rank or np.any(pads < 0):
        return f"its pads {pads.tolist()} are not {2 * rank} non-negative numbers"
    begins, ends = pads[:rank], pads[rank:]
    if np.any(begins[:2]) or np.any(ends[:2]):
        return "it pads the batch or channel axis, which a Conv's pads cannot"
    return [*begins[2:].tolist(), *ends[2:].tolist()]
