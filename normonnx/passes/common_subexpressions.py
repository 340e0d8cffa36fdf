"""common-subexpressions: a node that computes what an earlier node already computed goes.

Before::

    x -> Shape -> s1 -> Gather(0) ...          x -> Shape -> s2 -> Gather(1) ...

After::

    x -> Shape -> s1 -> Gather(0) ...
                   s1 -> Gather(1) ...

Formula: two nodes of the same deterministic op, with the same attributes and the same inputs,
compute the same tensors, so the second one's readers read the first one's outputs. Small
constants (up to 64 elements) of equal dtype, shape and bytes count as the same input, which lets
the Unsqueeze/Gather nodes after a merged Shape merge in turn. TorchScript writes ``Shape(x)``
once per dim it reads (a transformer's attention reshapes read ``Shape(q)`` twice per
projection), and every exporter writes the same small constant once per use.

Preconditions: the op is in the default domain (other domains' semantics are not ours to assume),
is neither random nor stateful, and holds no If/Loop/Scan body (bodies would need comparing); the
later node's outputs are not graph outputs and no If/Loop/Scan body reads them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import is_default_domain
from normonnx.graph.access import constant_value, describe
from normonnx.graph.edit import detach, redirect
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal

_NOT_PURE = frozenset(
    {
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
        "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan",
    }
)  # fmt: skip
_SMALL_CONSTANT_ELEMENTS = 64


def _value_key(value: np.ndarray) -> tuple:
    return (value.dtype.str, value.shape, value.tobytes())


def _attr_key(value) -> object | None:
    """A hashable stand-in for an attribute value; None for one that is not comparable (a body)."""
    if isinstance(value, gs.Graph):
        return None
    if isinstance(value, gs.Constant):
        return ("tensor", _value_key(np.asarray(value.values)))
    if isinstance(value, np.ndarray):
        return ("array", _value_key(value))
    if isinstance(value, (list, tuple)):
        keys = [_attr_key(v) for v in value]
        return None if any(k is None for k in keys) else tuple(keys)
    return (type(value).__name__, value)


@dataclass(frozen=True)
class _Merge(NodePlan):
    # node: the later node, which goes
    first: gs.Node  # the earlier one, whose outputs its readers read


class CommonSubexpressions:
    """Merges nodes that compute the same thing from the same inputs (exact: same op, same values)."""

    name = "common-subexpressions"
    tidy_first = True

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, gs.Node] | None:
        """The node and the first one of the sweep with its key (every node is keyed in graph order)."""
        key = _key(node, ctx.memo.setdefault("constant_keys", {}))
        if key is None:
            return None
        first = ctx.memo.setdefault("seen", {}).setdefault(key, node)
        return None if first is node else (node, first)

    def check(self, match: tuple[gs.Node, gs.Node], ctx: PassContext) -> _Merge | Refusal:
        node, first = match
        for out in node.outputs:
            why = pinned(out, ctx)
            if why is not None:
                return Refusal(describe(node), NO_FAMILY, f"computes what {describe(first)} does, but {why}")
        return _Merge(describe(node), NO_FAMILY, node, first)

    def rewrite(self, plan: _Merge, ctx: PassContext) -> str:
        for old, new in zip(plan.node.outputs, plan.first.outputs, strict=True):
            redirect(old, new)
        detach([plan.node])
        return f"merged into {describe(plan.first)}"


def _input_key(t: gs.Tensor, constant_keys: dict[int, tuple]) -> tuple:
    if id(t) in constant_keys:
        return constant_keys[id(t)]
    key = ("name", t.name)
    if isinstance(t, gs.Constant):
        value = constant_value(t, max_elements=_SMALL_CONSTANT_ELEMENTS)
        if value is not None:
            key = ("value", _value_key(value))
    constant_keys[id(t)] = key
    return key


def _key(node: gs.Node, constant_keys: dict[int, tuple]) -> tuple | None:
    """What two nodes computing the same tensors share; None for a node never merged."""
    if not node.outputs or not is_default_domain(node.domain) or node.op in _NOT_PURE:
        return None
    attrs = []
    for name in sorted(node.attrs):
        k = _attr_key(node.attrs[name])
        if k is None:
            return None
        attrs.append((name, k))
    inputs = tuple(_input_key(t, constant_keys) for t in node.inputs)
    return (node.op, tuple(attrs), inputs, len(node.outputs))
