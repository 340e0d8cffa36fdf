"""reshape-chains: ops that only relabel the same elements, in a row, become one (or none).

Before / After, the four cases::

    x -> Reshape|Flatten|Squeeze|Unsqueeze -> Reshape(constant t) -> y     x -> Reshape(t) -> y
    x -> Reshape(x's own shape) -> y -> readers                           x -> readers
    x -> Unsqueeze(a) -> Unsqueeze(b) -> y                                x -> Unsqueeze(merged) -> y
    x -> Reshape(constant t) -> Squeeze|Unsqueeze(axes) -> y              x -> Reshape(t less or plus 1s) -> y

Formula: Reshape, Flatten, Squeeze and Unsqueeze keep the elements in row-major order and change
only the dims, so a Reshape to a constant target does not depend on the dims of what it reads;
a Reshape to the dims x already has is x. For ``Unsqueeze(Unsqueeze(x, a), b)`` b's positions are
final and a's move past those of b before them (TorchScript's attention mask ``[:, None, None, :]``).
A Squeeze or Unsqueeze of a constant-target Reshape (tf2onnx's einsum) is a Reshape to the target
with those 1s removed or inserted.

Preconditions: the Reshape's target is a constant without 0s (a 0 copies a dim of what it reads),
unless ``allowzero`` makes 0 literal; a Reshape is dropped only when its target equals x's dims,
every dim known but at most one -1 (or 0) standing for x's only unknown one; axes are constants;
a Squeeze removes only 1s; a node that goes, or whose output the merged node replaces, is read by
the next one only, is not a graph output and no If/Loop/Scan body reads its output by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe, op_is, producer
from normonnx.graph.edit import bypass, set_input
from normonnx.passes._simplifying import constant_axes, pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal

_RELABELLING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class _ReadThrough(NodePlan):
    """The Reshape reads what the relabelling op before it read."""

    before: gs.Node


@dataclass(frozen=True)
class _Drop(NodePlan):
    """The Reshape to its input's own shape goes."""


@dataclass(frozen=True)
class _MergeUnsqueezes(NodePlan):
    before: gs.Node
    axes: list[int]


@dataclass(frozen=True)
class _AsReshape(NodePlan):
    """The Squeeze or Unsqueeze becomes one Reshape of what the Reshape before it read."""

    before: gs.Node
    shape: list[int]


_Plan = _ReadThrough | _Drop | _MergeUnsqueezes | _AsReshape


class ReshapeChains:
    name = "reshape-chains"
    tidy_first = True
    ops = ("Reshape", "Squeeze", "Unsqueeze")

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node

    def check(self, node: gs.Node, ctx: PassContext) -> _Plan | Refusal | None:
        if node.op != "Reshape":
            if node.op == "Unsqueeze" and op_is(producer(node.inputs[0]), "Unsqueeze"):
                return _unsqueeze_pair(node, ctx)
            return _into_reshape(node, ctx)
        if len(node.inputs) < 2:
            return None
        target = constant_value(node.inputs[1])
        if target is None or (np.any(target == 0) and not node.attrs.get("allowzero", 0)):
            return None  # a 0 copies a dim of the input it reads: reading through would change it
        before = producer(node.inputs[0])
        if op_is(before, *_RELABELLING):
            return _ReadThrough(describe(node), NO_FAMILY, node, before)
        if not _keeps_shape(node.inputs[0], target, node):
            return None
        why = pinned(node.outputs[0], ctx)
        if why is not None:
            return Refusal(describe(node), NO_FAMILY, f"a Reshape to its input's own shape, but {why}")
        return _Drop(describe(node), NO_FAMILY, node)

    def rewrite(self, plan: _Plan, ctx: PassContext) -> str:
        node = plan.node
        if isinstance(plan, _Drop):
            bypass(node, node.inputs[0])
            return "removed: a Reshape to its input's own shape"
        before = describe(plan.before)
        set_input(node, 0, plan.before.inputs[0])
        if isinstance(plan, _ReadThrough):
            return f"reads through {before}"
        if isinstance(plan, _MergeUnsqueezes):
            if len(node.inputs) > 1:
                set_input(node, 1, ctx.constant(f"{node.name}_axes", np.asarray(plan.axes, np.int64)))
            else:
                node.attrs["axes"] = plan.axes
            return f"merged with {before}"
        op = node.op
        node.op, node.attrs = "Reshape", {}
        set_input(node, 1, ctx.constant(f"{node.name}_shape", np.asarray(plan.shape, np.int64)))
        return f"{op} of {before} as one Reshape"


def _keeps_shape(x: gs.Tensor, target: np.ndarray, node: gs.Node) -> bool:
    """The target is x's own shape: every dim equal and known, but for one -1 (or 0) where x's dim is
    the only one not known (tf2onnx's Reshape(x, [-1, C, 1, 1]) after a pool of a dynamic batch)."""
    dims = x.shape
    target = [int(v) for v in target.reshape(-1)]
    if dims is None or len(dims) != len(target):
        return False
    free = 0
    for d, t in zip(dims, target, strict=True):
        if isinstance(d, int) and d >= 0 and (t == d or (t == 0 and not node.attrs.get("allowzero", 0))):
            continue
        if t == -1 or (t == 0 and not node.attrs.get("allowzero", 0)):
            free += 1
            continue
        return False
    return free <= 1 and all(isinstance(d, int) for d, t in zip(dims, target, strict=True) if t not in (-1, 0))


def _unsqueeze_pair(node: gs.Node, ctx: PassContext) -> _MergeUnsqueezes | Refusal | None:
    """``Unsqueeze(Unsqueeze(x, a), b)``: b's positions are final, a's move past those of b before them."""
    before = producer(node.inputs[0])
    if len(before.outputs[0].outputs) != 1:
        return None
    why = pinned(before.outputs[0], ctx)
    if why is not None:
        return Refusal(describe(node), NO_FAMILY, f"would merge with {describe(before)}, but {why}")
    first, second = constant_axes(before), constant_axes(node)
    if first is None or second is None:
        return None
    mid_rank = None if before.inputs[0].shape is None else len(before.inputs[0].shape) + len(first)
    if mid_rank is None and any(a < 0 for a in first + second):
        return None
    if mid_rank is not None:
        first = [a % mid_rank for a in first]
        second = [a % (mid_rank + len(second)) for a in second]
    if len(set(first)) != len(first) or len(set(second)) != len(second):
        return None
    final = set(second)
    free = [k for k in range(max(first, default=-1) + len(second) + 1) if k not in final]
    merged = sorted(final | {free[a] for a in first})
    return _MergeUnsqueezes(describe(node), NO_FAMILY, node, before, merged)


def _into_reshape(node: gs.Node, ctx: PassContext) -> _AsReshape | Refusal | None:
    """``Squeeze`` / ``Unsqueeze`` of a Reshape to a constant target: one Reshape to the target with
    those 1s removed or inserted (tf2onnx's einsum writes Reshape then Squeeze)."""
    before = producer(node.inputs[0])
    if not op_is(before, "Reshape") or len(before.outputs[0].outputs) != 1 or len(before.inputs) < 2:
        return None
    why = pinned(before.outputs[0], ctx)
    if why is not None:
        return Refusal(describe(node), NO_FAMILY, f"would merge with {describe(before)}, but {why}")
    target = constant_value(before.inputs[1])
    axes = constant_axes(node)
    if target is None or axes is None or np.any(target == 0):
        return None
    target = [int(v) for v in target.reshape(-1)]
    if node.op == "Squeeze":
        axes = sorted({a % len(target) for a in axes})
        if any(target[a] != 1 for a in axes):
            return None
        shape = [d for k, d in enumerate(target) if k not in axes]
    else:
        rank = len(target) + len(axes)
        axes = sorted({a % rank for a in axes})
        rest = iter(target)
        shape = [1 if k in axes else next(rest) for k in range(rank)]
    return _AsReshape(describe(node), NO_FAMILY, node, before, shape)
