"""Matching decomposed moment normalizations: LayerNorm, InstanceNorm, GroupNorm, RMSNorm.

Every exporter writes the same core in a few spellings::

    d   = x - ReduceMean(x, axes)            (absent for RMSNorm: d = x)
    var = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
        | [Max(0, ] ReduceMean(x * x) - mean * mean [)]      (E[x^2] - E[x]^2: jax2tf, tf2onnx)
    y   = d / Sqrt(var + eps)                 | d * Reciprocal(Sqrt(var + eps)) | d * (1 / Sqrt(var + eps))
        | d * Pow(var + eps, -0.5)            | d / (Sqrt(var) + eps)   (eps in std)

optionally followed by ``Mul(gamma)`` and ``Add(beta)`` constants; tf2onnx's Keras
LayerNormalization computes the means with GlobalAveragePool (over the last axis of a rank-3
tensor) and writes the affine into the normalization itself, which ``match_shifted`` reads::

    m = Reciprocal(Sqrt(var + eps)) [* gamma];   y = x * m + (beta - mean * m)

and, for
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


# What computes a mean over axes: ReduceMean, or tf2onnx's GlobalAveragePool.
_MEANS = ("ReduceMean", "GlobalAveragePool")


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
    """Axes of a ReduceMean (attribute before opset 18, input after) or a GlobalAveragePool (every axis
    after [N, C], so the input's rank must be known); None if not constant or keepdims=0."""
    if node.op == "GlobalAveragePool":
        rank = _rank(node.inputs[0])
        return tuple(range(2, rank)) if rank is not None and rank >= 3 else None
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        return tuple(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = constant_value(node.inputs[1])
        return None if v is None else tuple(int(a) for a in v.reshape(-1))
    return None


def _rank(t: gs.Tensor, depth: int = 8) -> int | None:
    """A tensor's rank, read through elementwise ops when shape inference left it unknown."""
    rank = rank_of(t)
    node = producer(t)
    rank_keeping = ("Add", "Sub", "Mul", "Div", "Pow", "GlobalAveragePool", "Sqrt", "Reciprocal")
    if rank is not None or depth == 0 or not op_is(node, *rank_keeping):
        return rank
    ranks = [_rank(i, depth - 1) for i in node.inputs]
    return None if any(r is None for r in ranks) else max(ranks)


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


def _variance(t: gs.Tensor) -> tuple[gs.Tensor, tuple[int, ...], list[gs.Node], bool] | None:
    """(d, axes, nodes, raw) when t = ReduceMean(d^2, axes), or (x, axes, nodes, True) when
    t = E[x^2] - E[x]^2 over the same axes (optionally clamped at 0 by Max or Relu)."""
    clamp = _op(t, "Max", "Relu")
    if clamp is not None:
        inner = (
            clamp.inputs[0]
            if clamp.op == "Relu"
            else next((a for a, b in (clamp.inputs, clamp.inputs[::-1]) if _scalar(b) == 0.0), None)
            if len(clamp.inputs) == 2
            else None
        )
        raw = _raw_moments(inner) if inner is not None else None
        return None if raw is None else (raw[0], raw[1], [clamp, *raw[2]], True)
    raw = _raw_moments(t)
    if raw is not None:
        return raw[0], raw[1], raw[2], True
    red = _op(t, *_MEANS)
    if red is None:
        return None
    axes = reduce_axes(red)
    sq = _square_of(red.inputs[0])
    if axes is None or sq is None:
        return None
    d, sq_node = sq
    return d, axes, [red, sq_node], False


def _raw_moments(t: gs.Tensor) -> tuple[gs.Tensor, tuple[int, ...], list[gs.Node]] | None:
    """(x, axes, nodes) when t = ReduceMean(x^2, axes) - ReduceMean(x, axes)^2."""
    sub = _op(t, "Sub")
    if sub is None or len(sub.inputs) != 2:
        return None
    second = _op(sub.inputs[0], *_MEANS)
    mean_sq = _square_of(sub.inputs[1])
    if second is None or mean_sq is None:
        return None
    mean = _op(mean_sq[0], *_MEANS)
    sq = _square_of(second.inputs[0])
    if mean is None or sq is None or sq[0] is not mean.inputs[0]:
        return None
    axes = reduce_axes(second)
    if axes is None or reduce_axes(mean) != axes:
        return None
    return mean.inputs[0], axes, [sub, second, sq[1], mean_sq[1], mean]


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
                return var[0], var[1], eps, True, [*nodes, add, inner, *var[2]], var[3]
    return None


def _var_plus_eps(t: gs.Tensor, nodes: list[gs.Node]):
    add = _op(t, "Add")
    if add is None:
        var = _variance(t)  # eps = 0
        return None if var is None else (var[0], var[1], 0.0, False, [*nodes, *var[2]], var[3])
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        eps = _scalar(b)
        var = _variance(a) if eps is not None else None
        if var is not None:
            return var[0], var[1], eps, False, [*nodes, add, *var[2]], var[3]
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
        d, axes, eps, eps_in_std, nodes, raw = parsed
        if raw:  # var = E[x^2] - E[x]^2 over x: the numerator must be x - E[x]
            sub = _op(num, "Sub")
            mean = _op(sub.inputs[1], *_MEANS) if sub is not None and len(sub.inputs) == 2 else None
            if mean is None or sub.inputs[0] is not d or mean.inputs[0] is not d or reduce_axes(mean) != axes:
                continue
            core = [node, *nodes, sub, *([] if any(n is mean for n in nodes) else [mean])]
            return MomentNorm(d, node.outputs[0], axes, eps, True, eps_in_std, core, node)
        if d is not num:
            continue
        sub = _op(num, "Sub")
        if sub is not None and len(sub.inputs) == 2:
            x = sub.inputs[0]
            mean = _op(sub.inputs[1], *_MEANS)
            if mean is not None and mean.inputs[0] is x and reduce_axes(mean) == axes:
                return MomentNorm(x, node.outputs[0], axes, eps, True, eps_in_std, [node, *nodes, sub, mean], node)
        return MomentNorm(num, node.outputs[0], axes, eps, False, eps_in_std, [node, *nodes], node)
    return None


def match_shifted(node: gs.Node) -> tuple[MomentNorm, np.ndarray | None, np.ndarray] | None:
    """tf2onnx's form, anchored on its last Add: (core, gamma or None, beta) when
    ``node`` = x * m + (beta - mean * m), m = inverse std [* gamma], mean the mean of x."""
    if not op_is(node, "Add") or len(node.inputs) != 2:
        return None
    for scaled_t, shift_t in (node.inputs, node.inputs[::-1]):
        scaled, shift = _op(scaled_t, "Mul"), _op(shift_t, "Sub")
        if scaled is None or shift is None or len(scaled.inputs) != 2 or len(shift.inputs) != 2:
            continue
        beta = constant_value(shift.inputs[0])
        mean_m = _op(shift.inputs[1], "Mul")
        if beta is None or mean_m is None:
            continue
        for x, m in (scaled.inputs, scaled.inputs[::-1]):
            mean_t = _other(mean_m, m)
            mean = _op(mean_t, *_MEANS) if mean_t is not None else None
            if mean is None or mean.inputs[0] is not x:
                continue
            gamma, inv, extra = None, m, []
            times = _op(m, "Mul")
            if times is not None and len(times.inputs) == 2:
                for a, b in (times.inputs, times.inputs[::-1]):
                    if constant_value(b) is not None and _inv_std(a, divides=False) is not None:
                        gamma, inv, extra = constant_value(b), a, [times]
            parsed = _inv_std(inv, divides=False)
            if parsed is None:
                continue
            d, axes, eps, eps_in_std, nodes, raw = parsed
            centered = _op(d, "Sub")
            if raw or centered is None or centered.inputs[0] is not x or reduce_axes(mean) != axes:
                continue
            if _op(centered.inputs[1], *_MEANS) is None or centered.inputs[1].inputs[0].inputs[0] is not x:
                continue
            means = [mean] + ([] if producer(centered.inputs[1]) is mean else [producer(centered.inputs[1])])
            core_nodes = [node, scaled, shift, mean_m, *extra, *nodes, centered, *means]
            return MomentNorm(x, node.outputs[0], axes, eps, True, eps_in_std, core_nodes, node), gamma, beta
    return None


def anchored_core(node: gs.Node) -> MomentNorm | None:
    """The core anchored at ``node`` in any spelling: its normalizing Div/Mul, or tf2onnx's last Add."""
    if node.op in ("Div", "Mul"):
        return match_core(node)
    if node.op == "Add":
        shifted = match_shifted(node)
        return shifted[0] if shifted else None
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
