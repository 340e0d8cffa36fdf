"""transpose-chains: ``Transpose(Transpose(x, p), q)`` becomes one Transpose, or none when they cancel.

Before::

    x -> Transpose(perm=p) -> Transpose(perm=q) -> y

After::

    x -> Transpose(perm=[p[i] for i in q]) -> y          (x -> readers of y, when that is the identity)

Formula: output axis i of the second Transpose is its input's axis q[i], which is x's axis
p[q[i]]. When the composed permutation is the identity, y is x: its readers read x, and the node
goes (an Identity stays where y is a graph output or a body reads it by name, to keep its name).
The first Transpose stays for its other readers, if any.

Preconditions: both Transposes state ``perm`` (a default one reverses the axes of a rank that may
not be known), of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from normonnx.graph.access import describe, op_is, producer
from normonnx.graph.edit import bypass, set_input
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext


@dataclass(frozen=True)
class _Compose(NodePlan):
    before: gs.Node
    perm: list[int]  # the composed permutation


class TransposeChains:
    name = "transpose-chains"
    tidy_first = True
    ops = ("Transpose",)

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, gs.Node] | None:
        before = producer(node.inputs[0])
        return (node, before) if op_is(before, "Transpose") else None

    def check(self, match: tuple[gs.Node, gs.Node], ctx: PassContext) -> _Compose | None:
        node, before = match
        p, q = before.attrs.get("perm"), node.attrs.get("perm")
        if p is None or q is None or len(p) != len(q):
            return None  # a default perm reverses the axes of a rank we may not know
        return _Compose(describe(node), NO_FAMILY, node, before, [int(p[i]) for i in q])

    def rewrite(self, plan: _Compose, ctx: PassContext) -> str:
        node, before = plan.node, describe(plan.before)
        set_input(node, 0, plan.before.inputs[0])
        if plan.perm != list(range(len(plan.perm))):
            node.attrs["perm"] = plan.perm
            return f"merged with {before}"
        node.op, node.attrs = "Identity", {}
        if pinned(node.outputs[0], ctx) is None:
            bypass(node, node.inputs[0])
            return f"cancels {before}: removed"
        return f"cancels {before}: an Identity keeps the output's name"
