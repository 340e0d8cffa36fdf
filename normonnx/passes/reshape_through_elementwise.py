"""reshape-through-elementwise: ``Reshape -> elementwise -> Reshape`` runs the middle on the first Reshape's input.

Before::

    x -> Reshape(a) -> Mul(0.5), Erf, Add(1), Mul -> Reshape(constant b) -> y     (a GELU between projections)

After::

    x -> Mul(0.5), Erf, Add(1), Mul -> Reshape(b) -> y

Formula: an elementwise op computes each element from the elements at the same position of its
inputs; a reshape only relabels positions, in the same row-major order. So running the ops on x
and reshaping afterwards gives the same elements in the same order, as long as every other
operand is a scalar (one that broadcasts along an axis would meet different elements). The last
Reshape's constant target does not depend on the dims of what it reads; one Reshape remains.

Preconditions: the last Reshape's target is a constant without 0s (a 0 copies a dim of its
input); every node between is a unary or binary elementwise op with one output whose other
inputs are scalar constants, and all of them read (through each other) one and the same
Reshape; nothing between is read from outside, the tensor the last Reshape reads is read by it
only and is not a graph output, and no If/Loop/Scan body reads any of their outputs by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe, op_is, producer
from normonnx.graph.edit import set_input
from normonnx.passes._simplifying import pinned
from normonnx.passes._writer import contained
from normonnx.passes.rules import NO_FAMILY, PassContext, Refusal

_UNARY = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Gelu", "Softplus",
    "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Identity", "Cast",
}  # fmt: skip
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
_ELEMENTWISE = tuple(_UNARY | _BINARY)


@dataclass(frozen=True)
class _ReadThrough:
    anchor: str
    family: str
    first: gs.Node  # the Reshape the middle reads
    middle: list[gs.Node]  # the elementwise nodes, as the walk up from the last Reshape found them


class ReshapeThroughElementwise:
    name = "reshape-through-elementwise"
    tidy_first = True
    ops = ("Reshape",)

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        return None if target is None or np.any(target == 0) else node

    def check(self, node: gs.Node, ctx: PassContext) -> _ReadThrough | Refusal | None:
        top = node.inputs[0]
        region = _region(top)
        if region is None:
            return None
        first, middle = region
        if top in ctx.outputs or len(top.outputs) > 1 or contained([first, *middle], top, ctx.outputs) is not None:
            return None
        for n in (first, *middle):
            why = pinned(n.outputs[0], ctx)
            if why is not None:
                return Refusal(describe(node), NO_FAMILY, f"would read through {describe(first)}, but {why}")
        return _ReadThrough(describe(node), NO_FAMILY, first, middle)

    def rewrite(self, plan: _ReadThrough, ctx: PassContext) -> str:
        source, flat = plan.first.inputs[0], plan.first.outputs[0]
        for n in plan.middle:
            for i, t in enumerate(n.inputs):
                if t is flat:
                    set_input(n, i, source)
            for t in n.outputs:
                t.shape = None  # the middle now runs on the flat shape; inference fills it in again
        return f"{len(plan.middle)} elementwise nodes read through {describe(plan.first)}"


def _region(top: gs.Tensor) -> tuple[gs.Node, list[gs.Node]] | None:
    """(the Reshape the elementwise nodes above ``top`` read, those nodes), or None unless that is all there is."""
    start = producer(top)
    if not op_is(start, *_ELEMENTWISE):
        return None
    nodes, stack, seen, first = [], [start], set(), None
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if not op_is(n, *_ELEMENTWISE) or len(n.outputs) != 1:
            return None
        nodes.append(n)
        for t in n.inputs:
            value = constant_value(t)
            if value is not None:
                if value.size != 1:
                    return None  # a constant that broadcasts along an axis does not commute with a reshape
                continue
            p = producer(t)
            if op_is(p, "Reshape"):
                if first is not None and p is not first:
                    return None
                first = p
                continue
            if p is None:
                return None
            stack.append(p)
    return None if first is None else (first, nodes)
