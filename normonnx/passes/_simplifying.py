"""What the simplification rules share: which tensors must keep their place and name, a Squeeze's or
Unsqueeze's constant axes.

A rewrite that bypasses, merges or replaces a tensor changes what a caller of the model reads when
the tensor is a graph output, and breaks an If/Loop/Scan body that reads it by name (a body names
the outer tensors it reads; graphsurgeon does not follow a rename into it). ``pinned`` says which.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value
from normonnx.passes.rules import PassContext


def pinned(t: gs.Tensor, ctx: PassContext) -> str | None:
    """Why ``t`` must stay where it is, under its name; None when a rewrite may replace it."""
    if t in ctx.outputs:
        return f"'{t.name}' is a graph output"
    if t.name in ctx.read_by_bodies:
        return f"an If/Loop/Scan body reads '{t.name}' by name"
    return None


def constant_axes(node: gs.Node) -> list[int] | None:
    """A Squeeze's or Unsqueeze's constant axes (an input from opset 13, an attribute before), else None."""
    if len(node.inputs) > 1:
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
