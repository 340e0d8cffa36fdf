"""Matching decomposed moment normalizations: LayerNorm, InstanceNorm, GroupNorm, RMSNorm.

Every exporter writes the same core in a few spellings::

    d   = x - ReduceMean(x, axes)            (absent for RMSNorm: d = x)
    var = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
    y   = d / Sqrt(var + eps)                 | d * Reciprocal(Sqrt(var + eps)) | d * (1 / Sqrt(var + eps))
        | d * Pow(var + eps, -0.5)            | d / (Sqrt(var) + eps)   (eps in std)

optionally followed by ``Mul(gamma)`` and ``Add(beta)`` constants, and, for
GroupNorm, wrapped in ``Reshape(x, [N, G, -1])`` ... ``Reshape(back)``.
The matcher finds the core from its normalizing node (the Div or Mul that
applies the inverse standard deviation) and returns its parameters, so that
``inspect`` can name it and the raise passes can replace it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, op_is, producer, rank_of


@dataclass
class MomentNorm:
    """A matched core y = (x - mean) / sqrt(var + eps) over ``axes`` (or RMS without the mean)."""

    x: gs.Tensor
    y: gs.Tensor
    axes: tuple[int, ...]
    eps: float
    centered: bool
    eps_in_std: bool
    nodes: list[gs.Node] = field(default_factory=list)  # core nodes, topological order not guaranteed
    anchor: gs.Node | None = None  # the normalizing Div/Mul

    def rank(self) -> int | None:
        return rank_of(self.x)

    def normalized_axes(self) -> tuple[int, ...] | None:
        """Axes as non-negative ints, when the rank is known (or the axes already are)."""
        r = self.rank()
        if r is None:
            return self.axes if all(a >= 0 for a in self.axes) else None
        return tuple(sorted(a % r for a in self.axes))


def _op(t: gs.Tensor, *ops: str) -> gs.Node | None:
    node = producer(t)
    if op_is(node, *ops):
        return node
    return None


def _scalar(t: gs.Tensor) -> float | None:
    v = constant_value(t)
    if v is None or v.size != 1 or v.dtype.kind not in "fiu":
        return None
    return float(v.reshape(-1)[0])


def reduce_axes(node: gs.Node) -> tuple[int, ...] | None:
    """Axes of a ReduceMean (attribute before opset 18, input after); None if not constant or keepdims=0."""
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        return tuple(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = constant_value(node.inputs[1])
        return None if v is None else tuple(int(a) for a in v.reshape(-1))
    return None


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is t else a if b is t else None


def _square_of(t: gs.Tensor) -> tuple[gs.Tensor, gs.Node] | None:
    """(d, node) when t = Pow(d, 2) or Mul(d, d)."""
    node = _op(t, "Pow", "Mul")
    if node is None or len(node.inputs) != 2:
        return None
    if node.op == "Pow" and _scalar(node.inputs[1]) == 2.0:
        return node.inputs[0], node
    if node.op == "Mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0], node
    return None


def _variance(t: gs.Tensor) -> tuple[gs.Tensor, tuple[int, ...], list[gs.Node]] | None:
    """(d, axes, nodes) when t = ReduceMean(d^2, axes)."""
    red = _op(t, "ReduceMean")
    if red is None:
        return None
    axes = reduce_axes(red)
    sq = _square_of(red.inputs[0])
    if axes is None or sq is None:
        return None
    d, sq_node = sq
    return d, axes, [red, sq_node]


def _inv_std(t: gs.Tensor, divides: bool):
    """Parse the denominator (divides=True) or inverse-std factor; returns (d, axes, eps, eps_in_std, nodes)."""
    nodes: list[gs.Node] = []
    if not divides:
        rec = _op(t, "Reciprocal")
        one_over = _op(t, "Div")
        if rec is not None:
            nodes.append(rec)
            t = rec.inputs[0]
        elif one_over is not None and _scalar(one_over.inputs[0]) == 1.0:  # 1 / den (TorchScript's rsqrt)
            nodes.append(one_over)
            t = one_over.inputs[1]
        else:
            pw = _op(t, "Pow")
            if pw is None or _scalar(pw.inputs[1]) != -0.5:
                return None
            nodes.append(pw)
            return _var_plus_eps(pw.inputs[0], nodes)
    sqrt = _op(t, "Sqrt")
    if sqrt is not None:
        nodes.append(sqrt)
        return _var_plus_eps(sqrt.inputs[0], nodes)
    add = _op(t, "Add")
    if add is None:
        return None
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        inner = _op(a, "Sqrt")
        eps = _scalar(b)
        if inner is not None and eps is not None:
            var = _variance(inner.inputs[0])
            if var is not None:
                return var[0], var[1], eps, True, [*nodes, add, inner, *var[2]]
    return None


def _var_plus_eps(t: gs.Tensor, nodes: list[gs.Node]):
    add = _op(t, "Add")
    if add is None:
        var = _variance(t)  # eps = 0
        return None if var is None else (var[0], var[1], 0.0, False, [*nodes, *var[2]])
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        eps = _scalar(b)
        var = _variance(a) if eps is not None else None
        if var is not None:
            return var[0], var[1], eps, False, [*nodes, add, *var[2]]
    return None


def match_core(node: gs.Node) -> MomentNorm | None:
    """The normalization core whose normalizing node is ``node`` (a Div or Mul), if it is one."""
    if not op_is(node, "Div", "Mul") or len(node.inputs) != 2:
        return None
    candidates = [(node.inputs[0], node.inputs[1])]
    if node.op == "Mul":
        candidates.append((node.inputs[1], node.inputs[0]))
    for num, den in candidates:
        parsed = _inv_std(den, divides=node.op == "Div")
        if parsed is None:
            continue
        d, axes, eps, eps_in_std, nodes = parsed
        if d is not num:
            continue
        sub = _op(num, "Sub")
        if sub is not None and len(sub.inputs) == 2:
            x = sub.inputs[0]
            mean = _op(sub.inputs[1], "ReduceMean")
            if mean is not None and mean.inputs[0] is x and reduce_axes(mean) == axes:
                return MomentNorm(x, node.outputs[0], axes, eps, True, eps_in_std, [node, *nodes, sub, mean], node)
        return MomentNorm(num, node.outputs[0], axes, eps, False, eps_in_std, [node, *nodes], node)
    return None


@dataclass
class Affine:
    """Constant Mul / Add after a normalized tensor (either may be absent)."""

    scale: np.ndarray | None
    bias: np.ndarray | None
    output: gs.Tensor
    nodes: list[gs.Node]


def following_affine(y: gs.Tensor) -> Affine:
    """Mul(gamma) then Add(beta) right after ``y``, each only if ``y`` (then y*gamma) has one consumer."""
    out, scale, bias, nodes = y, None, None, []
    for op in ("Mul", "Add"):
        if len(out.outputs) != 1:
            break
        user = out.outputs[0]
        if not op_is(user, op):
            continue
        other = _other(user, out)
        value = constant_value(other) if other is not None else None
        if value is None or value.dtype.kind != "f":
            continue
        if op == "Mul":
            scale = value
        else:
            bias = value
        nodes.append(user)
        out = user.outputs[0]
    return Affine(scale, bias, out, nodes)
