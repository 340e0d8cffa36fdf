"""same-type-cast: a Cast to the type its input already has goes; its readers read the input.

Before::

    x (int64) -> Cast(to=int64) -> y -> readers

After::

    x -> readers

Formula: a Cast to a tensor's own type returns every element unchanged. TorchScript casts the
Gather of a Shape to int64, which it already is.

Preconditions: x's dtype is known and is the Cast's ``to``; y is not a graph output and no
If/Loop/Scan body reads it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype as onnx_np_dtype

from normonnx.graph.access import describe
from normonnx.graph.edit import bypass
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal


@dataclass(frozen=True)
class _Bypass(NodePlan):
    pass


class SameTypeCast:
    """A Cast to the type its input already has (TorchScript casts a Gather of a Shape to int64) goes."""

    name = "same-type-cast"
    tidy_first = True
    ops = ("Cast",)

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        x = node.inputs[0]
        if x.dtype is None or node.attrs.get("to") is None:
            return None
        return node if np.dtype(x.dtype) == np.dtype(onnx_np_dtype(int(node.attrs["to"]))) else None

    def check(self, node: gs.Node, ctx: PassContext) -> _Bypass | Refusal:
        why = pinned(node.outputs[0], ctx)
        if why is not None:
            return Refusal(describe(node), NO_FAMILY, why)
        return _Bypass(describe(node), NO_FAMILY, node)

    def rewrite(self, plan: _Bypass, ctx: PassContext) -> str:
        bypass(plan.node, plan.node.inputs[0])
        return "removed: a Cast to its input's own type"
