"""static-shape-parts: shape arithmetic becomes constants as far as shape inference knows the dims.

Before::

    x [?, 16, 64] -> Shape -> Gather(1), Gather(2) -> Unsqueeze -> Concat([-1], a, b) -> Reshape(x, .)

After::

    x -> Reshape(x, [-1, 16, 64])

Formula: the values of small integer tensors are followed from ``Shape`` through Cast, Gather,
Slice, Squeeze, Unsqueeze, Concat, ReduceProd and elementwise integer math, each element a known
int, a dim name (equal names are equal dims: ``Max(d, d)`` is d) or unknown; a tensor whose every
element is known is the constant it will always be, whatever the dynamic dims (tf2onnx's and
dynamo's attention reshapes read only the static dims of a tensor with a dynamic batch). A Reshape
target with one unknown element and every other known and positive becomes a constant with -1
there: that dim is the element count over the rest, exactly what -1 computes. A Conv's output
whose rank onnx cannot infer (its input comes out of an If) still has its weight's rank and
channel count.

Preconditions: the node is in the default domain with one output; the value is an integer (or
bool) tensor; it is not a graph output, no If/Loop/Scan body reads it by name, and a Shape of an
initializer stays (it is the fold-constants' to fold); a Reshape keeps its target when
``allowzero`` is set or the target is a constant already.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype as onnx_np_dtype

from normonnx.families import is_default_domain
from normonnx.graph.access import constant_value, describe, op_is, producer, static_shape
from normonnx.graph.edit import set_input, to_constant
from normonnx.passes._simplifying import pinned
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext

_VALUES = "values"  # ctx.memo key: id(tensor) -> object array of ints, dim names, None for unknown


@dataclass(frozen=True)
class _ConstantTarget(NodePlan):
    """The Reshape's computed target, one dim left unknown, as a constant with -1 there."""

    shape: np.ndarray


@dataclass(frozen=True)
class _Known:
    """Every element of the node's output is known: it becomes that constant."""

    anchor: str
    family: str
    out: gs.Tensor
    value: np.ndarray


class StaticShapeParts:
    """Shape arithmetic evaluated as far as shape inference knows the dims, whatever the dynamic ones."""

    name = "static-shape-parts"
    tidy_first = True

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node if is_default_domain(node.domain) and len(node.outputs) == 1 else None

    def check(self, node: gs.Node, ctx: PassContext) -> _ConstantTarget | _Known | None:
        values = ctx.memo.setdefault(_VALUES, {})
        if node.op == "Reshape" and len(node.inputs) > 1:
            shape = _one_dim_left(node, values)
            if shape is not None:
                return _ConstantTarget(describe(node), NO_FAMILY, node, shape)
        out = node.outputs[0]
        value = _value(node, values)
        if value is None:
            return None
        values[id(out)] = value  # tracked whether or not it becomes a constant: what reads it may
        if node.op == "Shape" and not isinstance(node.inputs[0], gs.Variable):
            return None
        known = all(isinstance(v, int) for v in value.reshape(-1))
        if not known or pinned(out, ctx) is not None or node.op == "Constant":
            return None
        dtype = np.dtype(out.dtype) if out.dtype is not None else np.dtype(np.int64)
        if dtype.kind not in "iub":
            return None
        return _Known(describe(node), NO_FAMILY, out, np.asarray(value.tolist(), dtype=np.int64).astype(dtype))

    def rewrite(self, plan: _ConstantTarget | _Known, ctx: PassContext) -> str:
        if isinstance(plan, _ConstantTarget):
            set_input(plan.node, 1, ctx.constant(f"{plan.node.name}_shape", plan.shape))
            return f"target {_shown(plan.shape)}"
        to_constant(plan.out, plan.value)
        return f"is the constant {_shown(plan.value)}"


def _shown(value: np.ndarray) -> str:
    return str(value.tolist()) if value.size <= 8 else f"of {value.size} elements"


def _one_dim_left(node: gs.Node, values: dict[int, np.ndarray]) -> np.ndarray | None:
    """The Reshape's target as a constant with -1 for its one unknown dim, when every other is known
    and positive; None otherwise."""
    if node.attrs.get("allowzero", 0) or isinstance(node.inputs[1], gs.Constant):
        return None
    target = _known(node.inputs[1], values)
    if target is None or target.ndim != 1:
        return None
    unknown = [k for k, v in enumerate(target) if not isinstance(v, int)]
    if len(unknown) != 1 or any(isinstance(v, int) and v <= 0 for v in target):
        return None
    return np.array([v if isinstance(v, int) else -1 for v in target], np.int64)


# Unary ops whose output has their input's shape, followed back to the Conv whose rank fixes it.
_SAME_SHAPE_UNARY = (
    "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus",
    "Softsign", "Abs", "Neg", "Exp", "Log", "Sqrt", "Erf", "Identity", "Cast", "Clip",
)  # fmt: skip


def _conv_shape(x: gs.Tensor) -> list | None:
    """The dims of a Conv's output (through same-shape unary ops) that onnx could not infer because
    the Conv's input rank is unknown (it comes out of an If): a Conv only runs on an input of its
    weight's rank, and its channel dim is the weight's first; the others stay unknown."""
    node = producer(x)
    while op_is(node, *_SAME_SHAPE_UNARY) and node.inputs:
        node = producer(node.inputs[0])
    if not op_is(node, "Conv") or len(node.inputs) < 2:
        return None
    weight = static_shape(node.inputs[1])
    if weight is None or len(weight) < 3:
        return None
    return [None, int(weight[0])] + [None] * (len(weight) - 2)


_INT_MATH = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "And", "Or")


def _int_math(op: str, p, q):
    """One element of shape arithmetic: ints computed; the same dim name kept by Max and Min; else unknown."""
    if isinstance(p, int) and isinstance(q, int):
        if op == "Div":
            return None if q == 0 else int(np.trunc(p / q)) if p * q < 0 else p // q
        return {
            "Add": p + q, "Sub": p - q, "Mul": p * q, "Max": max(p, q), "Min": min(p, q),
            "Equal": int(p == q), "Greater": int(p > q), "Less": int(p < q),
            "And": int(bool(p) and bool(q)), "Or": int(bool(p) or bool(q)),
        }[op]  # fmt: skip
    if op in ("Max", "Min") and isinstance(p, str) and p == q:
        return p
    if op == "Equal" and isinstance(p, str) and p == q:
        return 1
    return None


def _known(t: gs.Tensor, values: dict[int, np.ndarray]) -> np.ndarray | None:
    """The tracked value of ``t``: an object array of ints and None, or None when not tracked."""
    if id(t) in values:
        return values[id(t)]
    value = constant_value(t, max_elements=64)
    if value is None or value.dtype.kind not in "iu":
        return None
    return np.array([int(v) for v in value.reshape(-1)], dtype=object).reshape(value.shape)


def _value(node: gs.Node, values: dict[int, np.ndarray]) -> np.ndarray | None:
    """The node's output as tracked elements; None for an op not followed or an input not tracked."""
    op = node.op
    if op == "Shape":
        dims = node.inputs[0].shape
        if dims is None:
            dims = _conv_shape(node.inputs[0])
        if dims is None:
            return None
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        dims = list(dims)[slice(start, None if end is None else int(end))]
        # A dim_param stays as its name: dims shape inference named alike are equal (Max(d, d) = d).
        return np.array(
            [d if (isinstance(d, int) and d >= 0) or (isinstance(d, str) and d) else None for d in dims],
            dtype=object,
        )
    if op == "Size":
        dims = node.inputs[0].shape
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
            return None
        return np.array(int(np.prod(dims)) if dims else 1, dtype=object)
    ins = [_known(t, values) if t.name else None for t in node.inputs]
    if not ins or ins[0] is None:
        return None
    x = ins[0]
    if op == "Not" and all(isinstance(v, int) for v in x.reshape(-1)):
        return np.vectorize(lambda v: int(not v), otypes=[object])(x)
    if op in ("Cast", "Identity"):
        return x if op == "Identity" or np.dtype(onnx_np_dtype(node.attrs.get("to"))).kind in "iub" else None
    if op == "Gather" and len(ins) == 2 and ins[1] is not None and int(node.attrs.get("axis", 0)) == 0:
        idx = ins[1]
        if x.ndim != 1 or any(not isinstance(v, int) for v in idx.reshape(-1)):
            return None
        n = len(x)
        picked = [x[int(i) % n] if -n <= int(i) < n else "bad" for i in idx.reshape(-1)]
        return None if "bad" in picked else np.array(picked, dtype=object).reshape(idx.shape)
    if op == "Slice" and x.ndim == 1:
        params = [ins[k] if k < len(ins) else None for k in range(1, 5)]
        if (
            params[0] is None
            or params[1] is None
            or any(params[k] is None and k + 1 < len(node.inputs) and node.inputs[k + 1].name for k in (2, 3))
        ):
            return None
        axes = [0] if params[2] is None else list(params[2].reshape(-1))
        steps = [1] if params[3] is None else list(params[3].reshape(-1))
        if axes not in ([0], [-1]) or len(params[0].reshape(-1)) != 1 or not isinstance(steps[0], int):
            return None
        if steps[0] == 0 or not all(isinstance(v.reshape(-1)[0], int) for v in params[:2]):
            return None
        begin, stop = int(params[0].reshape(-1)[0]), int(params[1].reshape(-1)[0])
        return np.array(list(x)[slice(begin, stop, int(steps[0]))], dtype=object)
    if op == "Squeeze" and x.size == 1:
        return x.reshape(())
    if op == "Unsqueeze" and x.ndim == 0:
        return x.reshape((1,))
    if op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1) and all(v is not None for v in ins):
        if any(v.ndim != 1 for v in ins):
            return None
        return np.concatenate([v for v in ins]).astype(object)
    if op == "ReduceProd" and x.ndim == 1 and not (len(ins) > 1 and node.inputs[1].name):
        if not all(isinstance(v, int) for v in x):
            return None
        total = int(np.prod([int(v) for v in x])) if len(x) else 1
        return np.array(total if not node.attrs.get("keepdims", 1) else [total], dtype=object)
    if op in _INT_MATH and len(ins) == 2 and ins[1] is not None:
        a, b = np.broadcast_arrays(x, ins[1])
        out = np.empty(a.shape, dtype=object)
        for k in np.ndindex(a.shape):
            out[k] = _int_math(op, a[k], b[k])
        return out
    return None
