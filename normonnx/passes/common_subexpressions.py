"""Common subexpressions: a node that computes what an earlier node already computed goes.

TorchScript writes ``Shape(x)`` once per dim it reads (a transformer's attention reshapes
read ``Shape(q)`` twice per projection), and every exporter writes the same small constant
(an Unsqueeze axis, a Gather index) once per use. Two nodes of the same deterministic op,
attributes and inputs compute the same tensors, so the second one's readers read the first's
outputs. Small constants of equal dtype, shape and bytes count as the same input, which is what
lets the Unsqueeze/Gather nodes after a merged ``Shape`` merge in turn.

Never merged: ops with a random or stateful result, ops outside the default domain (their
semantics are not ours to assume), If/Loop/Scan (their bodies would need comparing), and a node
whose outputs are graph outputs or read by name from inside a body.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import is_default_domain
from normonnx.graph.access import bodies, constant_value
from normonnx.graph.bridge import detach
from normonnx.passes._base import PassContext

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


class CommonSubexpressions:
    """Merges nodes that compute the same thing from the same inputs (exact: same op, same values)."""

    name = "common-subexpressions"

    def run(self, ctx: PassContext) -> int:
        protected = {t.name for body in bodies(ctx.graph) for node in body.nodes for t in node.inputs}
        constant_keys: dict[int, tuple] = {}
        seen: dict[tuple, gs.Node] = {}
        merged: list[gs.Node] = []
        for node in list(ctx.graph.nodes):
            key = self._key(node, constant_keys)
            if key is None:
                continue
            first = seen.setdefault(key, node)
            if first is node or not self._replaceable(node, ctx, protected):
                continue
            for old, new in zip(node.outputs, first.outputs, strict=True):
                for user in list(old.outputs):
                    for i, t in enumerate(user.inputs):
                        if t is old:
                            user.inputs[i] = new
            merged.append(node)
        if merged:
            detach(merged)
            ctx.graph.cleanup(remove_unused_graph_inputs=False)
        return len(merged)

    @staticmethod
    def _replaceable(node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        return not any(out in ctx.outputs or out.name in protected for out in node.outputs)

    @staticmethod
    def _input_key(t: gs.Tensor, constant_keys: dict[int, tuple]) -> tuple:
        if id(t) in constant_keys:
            return constant_keys[id(t)]
        key = ("name", t.name)
        if isinstance(t, gs.Constant):
            value = constant_value(t)
            if value is not None and value.size <= _SMALL_CONSTANT_ELEMENTS:
                key = ("value", _value_key(value))
        constant_keys[id(t)] = key
        return key

    def _key(self, node: gs.Node, constant_keys: dict[int, tuple]) -> tuple | None:
        if not node.outputs or not is_default_domain(node.domain) or node.op in _NOT_PURE:
            return None
        attrs = []
        for name in sorted(node.attrs):
            k = _attr_key(node.attrs[name])
            if k is None:
                return None
            attrs.append((name, k))
        inputs = tuple(self._input_key(t, constant_keys) for t in node.inputs)
        return (node.op, tuple(attrs), inputs, len(node.outputs))
