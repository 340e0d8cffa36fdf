"""squeeze-through-transpose: ``Squeeze(Transpose(y, p))`` becomes ``Transpose(Squeeze(y))``.

Before::

    y -> Transpose(perm=p) -> Squeeze(axes s) -> z            (a qkv split after a Reshape)

After::

    y -> Squeeze(axes p[s]) -> Transpose(perm=p') -> z

Formula: the Squeeze removes output axes s of the Transpose, which are y's axes p[s], all of size
1; removing them from y first and permuting the rest in the same relative order (p without p[s],
renumbered) gives the same tensor. The Squeeze then meets the Reshape before it, which
reshape-chains merges.

Preconditions: the Transpose states ``perm``; the Squeeze's axes are constants; y's rank is known
and equals perm's length, and the squeezed axes are 1 in y; the Transpose's output is read by the
Squeeze only, is not a graph output and no If/Loop/Scan body reads it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import describe, op_is, producer
from normonnx.graph.edit import detach
from normonnx.passes._simplifying import constant_axes, pinned
from normonnx.passes._writer import Writer
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal


@dataclass(frozen=True)
class _Swap(NodePlan):
    # node: the Squeeze
    transpose: gs.Node
    source_axes: list[int]  # the squeezed axes, as y's
    perm: list[int]  # the Transpose of what remains


class SqueezeThroughTranspose:
    name = "squeeze-through-transpose"
    tidy_first = True
    ops = ("Squeeze",)

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, gs.Node] | None:
        transpose = producer(node.inputs[0])
        return (node, transpose) if op_is(transpose, "Transpose") and "perm" in transpose.attrs else None

    def check(self, match: tuple[gs.Node, gs.Node], ctx: PassContext) -> _Swap | Refusal | None:
        node, transpose = match
        mid = transpose.outputs[0]
        if len(mid.outputs) != 1:
            return None
        why = pinned(mid, ctx)
        if why is not None:
            return Refusal(describe(node), NO_FAMILY, f"would move before {describe(transpose)}, but {why}")
        perm = [int(v) for v in transpose.attrs["perm"]]
        axes, dims = constant_axes(node), transpose.inputs[0].shape
        if axes is None or dims is None or len(dims) != len(perm):
            return None
        squeezed = sorted({a % len(perm) for a in axes})
        source_axes = sorted(perm[k] for k in squeezed)
        if any(dims[a] != 1 for a in source_axes):
            return None
        kept = [perm[k] for k in range(len(perm)) if k not in squeezed]
        renumber = {a: i for i, a in enumerate(sorted(kept))}
        return _Swap(describe(node), NO_FAMILY, node, transpose, source_axes, [renumber[a] for a in kept])

    def rewrite(self, plan: _Swap, ctx: PassContext) -> str:
        node, transpose = plan.node, describe(plan.transpose)
        source, out = plan.transpose.inputs[0], node.outputs[0]
        detach([node, plan.transpose])
        write = Writer(ctx, node.name)
        axes = write.const("axes", np.asarray(plan.source_axes, np.int64))
        inner = write.op("Squeeze", [source, axes], dtype=out.dtype)
        write.op("Transpose", [inner], {"perm": plan.perm}, out=out)
        return f"moved before {transpose}"
