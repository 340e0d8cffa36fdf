"""Reading a node as a per-channel affine y = s * x + t.

Inference BatchNormalization is one (on axis 1); so is a Mul, Add, Sub or Div
by a constant that varies along one axis only (FrozenBatchNorm, exported
scales, a bias added after a MatMul). The reader returns the float64 vectors
over the channel axis the caller names, or the reason the node is not such
an affine there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx import foldmath as fm  # pure float64 math: the bottom layer
from normonnx.graph.access import constant_value, describe, is_constant, is_empty, is_training_batchnorm, op_is

ARITHMETIC_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass
class AffineNode:
    node: gs.Node
    data: gs.Tensor  # the non-constant input
    affine: fm.ChannelAffine
    family: str  # "batchnorm" or "affine"


def batchnorm_problem(node: gs.Node, opset: int) -> str | None:
    """Why a BatchNormalization is not an inference-time constant affine (None if it is)."""
    name = describe(node)
    if opset < 7:
        return f"{name}: BatchNormalization before opset 7 (is_test, consumed_inputs) is not supported"
    if node.attrs.get("spatial", 1) == 0:
        return f"{name}: spatial=0 (per-activation statistics) is not supported"
    if is_training_batchnorm(node, opset):
        return f"{name}: training mode (training_mode=1 or statistics outputs) normalizes with batch statistics"
    labels = ("scale", "B", "mean", "var")
    for label, t in zip(labels, node.inputs[1:5], strict=False):
        if not is_constant(t):
            if not t.inputs:
                return f"{name}: {label} is the graph input '{t.name}' (a caller may override it), not a constant"
            return f"{name}: {label} is not a constant (computed by {t.inputs[0].op})"
    return None


def _batchnorm(node: gs.Node, opset: int, channel_axis: int, channels: int) -> AffineNode | str:
    problem = batchnorm_problem(node, opset)
    if problem:
        return problem
    if channel_axis == -1:
        return f"{describe(node)}: the rank of its input is unknown, so axis 1 cannot be matched to the features"
    if channel_axis != 1:
        return f"{describe(node)}: normalizes axis 1, but the features are on axis {channel_axis}"
    gamma, beta, mean, var = (constant_value(t) for t in node.inputs[1:5])
    eps = float(node.attrs.get("epsilon", 1e-5))
    try:
        affine = fm.batchnorm_affine(gamma, beta, mean, var, eps)
    except fm.FoldMathError as e:
        return f"{describe(node)}: {e}"
    if affine.channels != channels:
        return f"{describe(node)}: has {affine.channels} channels, the linear op {channels}"
    return AffineNode(node, node.inputs[0], affine, "batchnorm")


def varying_axes(value: np.ndarray, rank: int) -> list[int]:
    """The axes of a rank-``rank`` tensor along which ``value`` varies once broadcast against it."""
    aligned = (1,) * (rank - value.ndim) + tuple(value.shape)
    return [i for i, d in enumerate(aligned) if d != 1]


def is_channel_constant(value: np.ndarray | None) -> bool:
    """A float constant of rank 2 or more that varies along exactly one axis (a per-channel scale or shift,
    whatever the layout); what ``inspect`` lists as an affine, and ``channel_vector`` reads on a given axis."""
    return (
        value is not None and value.dtype.kind == "f" and value.ndim >= 2 and len(varying_axes(value, value.ndim)) == 1
    )


def channel_vector(value: np.ndarray, rank: int | None, channel_axis: int, channels: int) -> np.ndarray | str:
    """A constant that broadcasts along ``channel_axis`` only, as a float64 vector of ``channels``."""
    value = np.asarray(value)
    if value.dtype.kind != "f":
        return f"constant is {value.dtype}, not float"
    if value.size == 1 and (value.ndim <= 1 or (rank is not None and value.ndim <= rank)):
        return np.full(channels, float(value.reshape(-1)[0]))
    if rank is None:
        if value.ndim == 1 and channel_axis == -1:
            rank = 1
        else:
            return f"constant of shape {list(value.shape)} against an output of unknown rank"
    if value.ndim > rank:
        return f"constant of shape {list(value.shape)} would broadcast the output to rank {value.ndim}"
    axis = channel_axis % rank
    aligned = (1,) * (rank - value.ndim) + value.shape
    if any(i != axis for i in varying_axes(value, rank)):
        return f"constant of shape {list(value.shape)} varies along more than the feature axis {axis}"
    if aligned[axis] not in (1, channels):
        return f"constant has {aligned[axis]} channels, the linear op {channels}"
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _arithmetic(node: gs.Node, data: gs.Tensor, rank: int | None, channel_axis: int, channels: int) -> AffineNode | str:
    if len(node.inputs) != 2 or any(is_empty(t) for t in node.inputs):
        return f"{describe(node)}: not a binary {node.op}"
    data_first = node.inputs[0] is data
    other = node.inputs[1] if data_first else node.inputs[0]
    value = constant_value(other)
    if value is None:
        return f"{describe(node)}: its other operand is not a constant"
    vec = channel_vector(value, rank, channel_axis, channels)
    if isinstance(vec, str):
        return f"{describe(node)}: {vec}"
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "Mul":
        affine = fm.ChannelAffine(vec, zeros)
    elif node.op == "Add":
        affine = fm.ChannelAffine(ones, vec)
    elif node.op == "Sub":
        affine = fm.ChannelAffine(ones, -vec) if data_first else fm.ChannelAffine(-ones, vec)
    else:  # Div
        if not data_first:
            return f"{describe(node)}: divides a constant by the data"
        if np.any(vec == 0):
            return f"{describe(node)}: divides by zero at channel {int(np.flatnonzero(vec == 0)[0])}"
        affine = fm.ChannelAffine(1.0 / vec, zeros)
    return AffineNode(node, data, affine, "affine")


def read_affine(
    node: gs.Node, data: gs.Tensor, opset: int, rank: int | None, channel_axis: int | None, channels: int
) -> AffineNode | str | None:
    """``node`` applied to ``data`` as a channel affine; a reason; or None when it is no candidate at all."""
    if op_is(node, "BatchNormalization"):
        if node.inputs[0] is not data:
            return None
        if channel_axis is None:
            return f"{describe(node)}: rank of its input is unknown, so its channel axis cannot be matched"
        return _batchnorm(node, opset, channel_axis, channels)
    if op_is(node, *ARITHMETIC_OPS):
        if channel_axis is None:
            return f"{describe(node)}: the feature axis of its input is unknown"
        return _arithmetic(node, data, rank, channel_axis, channels)
    return None
