"""identity-arithmetic: ``x * 1``, ``x / 1``, ``x + 0`` and ``x - 0`` go; their readers read x.

Before::

    x -> Mul(1) | Div(1) | Add(0) | Sub(0) -> y -> readers

After::

    x -> readers

Formula: multiplying or dividing by 1.0 gives every float back bit for bit (NaN and infinities
included), and so does subtracting +0.0; adding +0.0 gives it back but for -0.0, which becomes the
equal +0.0. A constant whose every dim is 1 or x's own size broadcasts to x's shape, so y is x.
Exporters write them for scales and biases that happen to be neutral.

Preconditions: the constant is a float tensor of x's dtype, every element the identity, +0.0 for
Add and Sub (a -0.0 is left alone); it cannot change x's shape: no higher rank, every dim 1 or
x's known size; Div and Sub only with the constant second; y is not a graph output and no
If/Loop/Scan body reads it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe
from normonnx.graph.edit import bypass
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal

_IDENTITY = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}
_SIGN = {"Mul": "*", "Div": "/", "Add": "+", "Sub": "-"}


@dataclass(frozen=True)
class _Bypass(NodePlan):
    x: gs.Tensor  # what the readers read instead


class IdentityArithmetic:
    name = "identity-arithmetic"
    tidy_first = True
    ops = tuple(_IDENTITY)

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node if len(node.inputs) == 2 else None

    def check(self, node: gs.Node, ctx: PassContext) -> _Bypass | Refusal | None:
        x = _operand(node)
        if x is None:
            return None
        why = pinned(node.outputs[0], ctx)
        if why is not None:
            return Refusal(describe(node), NO_FAMILY, why)
        return _Bypass(describe(node), NO_FAMILY, node, x)

    def rewrite(self, plan: _Bypass, ctx: PassContext) -> str:
        op = plan.node.op
        bypass(plan.node, plan.x)
        return f"removed: x {_SIGN[op]} {_IDENTITY[op]:g}"


def _operand(node: gs.Node) -> gs.Tensor | None:
    """The x of ``x op identity`` (Mul and Add either way round, Div and Sub with the constant second)."""
    for k in (0, 1) if node.op in ("Mul", "Add") else (1,):
        const, x = node.inputs[k], node.inputs[1 - k]
        value = constant_value(const)
        if value is None or value.dtype.kind != "f" or not np.all(value == _IDENTITY[node.op]):
            continue
        if node.op in ("Add", "Sub") and np.any(np.signbit(value)):
            continue  # x + (-0.0) keeps -0.0; x + 0.0 would not: keep it
        if x.dtype is not None and np.dtype(x.dtype) != value.dtype:
            continue
        if _keeps_shape(x, value):
            return x
    return None


def _keeps_shape(x: gs.Tensor, value: np.ndarray) -> bool:
    """Broadcasting ``value`` against x gives x's shape: no higher rank, each dim 1 or x's own (known) size."""
    if x.shape is None or value.ndim > len(x.shape):
        return False
    aligned = list(x.shape)[len(x.shape) - value.ndim :]
    return all(d == 1 or (isinstance(s, int) and s == d) for d, s in zip(value.shape, aligned, strict=True))
