"""The linear ops a channel affine folds into: Conv, ConvTranspose, Gemm, MatMul(+Add).

A :class:`Linear` reads one op's constant weight and bias in float64 and
writes new ones back as fresh initializers (never mutating one that another
node may share). It knows, for its kind, which axis of its output carries the
output features and which axis of its data input carries the input features,
and applies the folding math of :mod:`normonnx.foldmath` accordingly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx import foldmath as fm
from normonnx.families import LINEAR_OPS
from normonnx.graph.access import constant_value, describe, input_or_none, op_is, rank_of, shape_of, sole_consumer
from normonnx.graph.edit import set_input, set_outputs
from normonnx.passes.rules import PassContext
from normonnx.recognize.affine import AffineNode


@dataclass
class Linear:
    node: gs.Node
    weight: np.ndarray  # as stored (model dtype)
    bias: np.ndarray | None  # as stored; Gemm's C or MatMul's Add constant
    bias_add: gs.Node | None  # MatMul only: the Add that carries the bias
    output: gs.Tensor  # after the bias Add for MatMul

    @property
    def kind(self) -> str:
        return self.node.op

    @property
    def name(self) -> str:
        return describe(self.node)

    @property
    def dtype(self) -> np.dtype:
        return self.weight.dtype

    @property
    def group(self) -> int:
        return int(self.node.attrs.get("group", 1))

    @property
    def trans_b(self) -> bool:
        return bool(self.node.attrs.get("transB", 0))

    @property
    def out_channels(self) -> int:
        w = self.weight.shape
        if self.kind in ("Conv", "ConvTranspose"):
            return fm.conv_output_channels(w, self.group, self.kind == "ConvTranspose")
        return w[0] if (self.kind == "Gemm" and self.trans_b) else w[-1]

    @property
    def in_channels(self) -> int:
        w = self.weight.shape
        if self.kind in ("Conv", "ConvTranspose"):
            return fm.conv_input_channels(w, self.group, self.kind == "ConvTranspose")
        return w[1] if (self.kind == "Gemm" and self.trans_b) else w[0]

    def output_rank(self) -> int | None:
        """Rank of the output tensor, when known."""
        if self.kind in ("Conv", "ConvTranspose"):
            return self.weight.ndim
        if self.kind == "Gemm":
            return 2
        rank = rank_of(self.output) or rank_of(self.node.outputs[0])
        if rank is not None:
            return rank
        a_rank = rank_of(self.node.inputs[0])
        return max(a_rank, 2) if a_rank is not None else None

    def output_feature_axis(self) -> int | None:
        """The axis of the output that carries output features (None if unknown)."""
        if self.kind in ("Conv", "ConvTranspose", "Gemm"):
            return 1
        rank = self.output_rank()
        return None if rank is None else rank - 1


@dataclass(frozen=True)
class AffineFold:
    """A checked fold of a channel affine node into a linear op: what the fold rules rewrite."""

    anchor: str
    family: str
    node: gs.Node  # the affine (BatchNormalization, Mul, Add, ...)
    lin: Linear
    affine: AffineNode


def read_linear(node: gs.Node, ctx: PassContext) -> Linear | str:
    """The node as a foldable linear op, or why it is not one."""
    if not op_is(node, *LINEAR_OPS):
        return f"{describe(node)} is {node.op}, not one of {'/'.join(LINEAR_OPS)}"
    weight_tensor = input_or_none(node, 1)
    weight = constant_value(weight_tensor) if weight_tensor is not None else None
    if weight is None:
        if weight_tensor is not None and not weight_tensor.inputs:
            return f"weight of {describe(node)} is the graph input '{weight_tensor.name}' (a caller may override it)"
        src = weight_tensor.inputs[0].op if weight_tensor is not None else "nothing"
        return f"weight of {describe(node)} is not a constant (computed by {src})"
    if weight.dtype.kind != "f" or weight.dtype.itemsize < 2:
        return f"weight of {describe(node)} is {weight.dtype}, not a float type"
    if not np.isfinite(weight).all():
        bad = np.unravel_index(int(np.flatnonzero(~np.isfinite(weight))[0]), weight.shape)
        trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
        axis = 1 if node.op == "ConvTranspose" else 0 if node.op == "Conv" or trans_b else -1
        return f"weight of {describe(node)} holds {weight[bad]} at output channel {bad[axis]}"
    if node.op in ("Conv", "ConvTranspose") and weight.ndim < 3:
        return f"weight of {describe(node)} has rank {weight.ndim}"
    if node.op in ("Gemm", "MatMul") and weight.ndim != 2:
        return f"weight of {describe(node)} has rank {weight.ndim}, not 2"
    if node.op == "Gemm" and node.attrs.get("broadcast", 1) == 0 and ctx.graph.opset < 7:
        return f"{describe(node)} uses Gemm's pre-opset-7 broadcast=0"
    bias, bias_add, output = None, None, node.outputs[0]
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        bias_tensor = input_or_none(node, 2)
        if bias_tensor is not None:
            bias = constant_value(bias_tensor)
            if bias is None:
                return f"bias of {describe(node)} is not a constant"
    else:
        bias_add, bias = _matmul_bias(node, ctx)
        if bias_add is not None:
            output = bias_add.outputs[0]
    return Linear(node, weight, bias, bias_add, output)


def _matmul_bias(node: gs.Node, ctx: PassContext) -> tuple[gs.Node | None, np.ndarray | None]:
    """The Add right after a MatMul that adds a constant along the feature axis."""
    user = sole_consumer(node.outputs[0], ctx.outputs)
    if isinstance(user, str) or not op_is(user, "Add") or len(user.inputs) != 2:
        return None, None
    other = user.inputs[1] if user.inputs[0] is node.outputs[0] else user.inputs[0]
    value = constant_value(other)
    if value is None or (value.ndim > 1 and any(d != 1 for d in value.shape[:-1])):
        return None, None
    return user, value


def _current_bias(lin: Linear) -> np.ndarray:
    """The bias as float64 in its own (broadcastable) shape; zeros over the features if absent."""
    if lin.bias is None:
        return np.zeros(lin.out_channels)
    b = np.asarray(lin.bias, dtype=np.float64)
    return b * float(lin.node.attrs.get("beta", 1.0)) if lin.kind == "Gemm" else b


def write_linear(
    lin: Linear,
    ctx: PassContext,
    weight64: np.ndarray,
    bias64: np.ndarray | None,
    output: gs.Tensor,
    detach: Callable[[], None],
) -> None:
    """Store new weight / bias (float64, cast back exactly) and make ``output`` the op's result.

    ``bias64`` broadcasts against the output features; None keeps no bias.
    Raises FoldMathError, with the graph untouched, when a value would not
    survive the cast; otherwise calls ``detach`` (which unhooks the folded
    node) and rewires.
    """
    node = lin.node
    w = fm.cast_exact(weight64, lin.dtype, f"folded weight of {lin.name}", channel_axis=None)
    b = None if bias64 is None else fm.cast_exact(bias64, lin.dtype, f"folded bias of {lin.name}", channel_axis=None)
    detach()
    base = node.inputs[1].name or describe(node)
    set_input(node, 1, ctx.constant(f"{base}_folded", w))
    if lin.kind in ("Conv", "ConvTranspose", "Gemm"):
        if b is not None:
            set_input(node, 2, ctx.constant(f"{describe(node)}_bias_folded", b))
        if lin.kind == "Gemm":
            node.attrs["beta"] = 1.0
        set_outputs(node, output)
        return
    # MatMul: the bias lives in an Add after it.
    if lin.bias_add is not None:
        add = lin.bias_add
        idx = 1 if add.inputs[0] is node.outputs[0] else 0
        if b is None:
            b = np.zeros(lin.out_channels, dtype=lin.dtype)
        set_input(add, idx, ctx.constant(f"{describe(node)}_bias_folded", b))
        set_outputs(add, output)
        return
    if b is None or not np.any(b):
        set_outputs(node, output)
        return
    scaled = gs.Variable(ctx.fresh(f"{output.name}_matmul"), dtype=output.dtype, shape=shape_of(output))
    set_outputs(node, scaled)
    bias_const = ctx.constant(f"{describe(node)}_bias_folded", b)
    add = gs.Node("Add", name=ctx.fresh(f"{describe(node)}_bias"), inputs=[scaled, bias_const], outputs=[output])
    ctx.add_node(add)


def fold_affine_after(
    lin: Linear, affine: fm.ChannelAffine, ctx: PassContext, output: gs.Tensor, detach: Callable[[], None]
) -> None:
    """y = s * lin(x) + t, folded into lin's weight and bias; ``output`` becomes lin's result."""
    s, t = affine.scale, affine.shift
    if lin.kind in ("Conv", "ConvTranspose"):
        w = fm.scale_conv_outputs(lin.weight, s, lin.group, lin.kind == "ConvTranspose")
    else:
        w = fm.scale_matrix_columns(lin.weight, s, lin.kind == "Gemm" and lin.trans_b)
    # Features are the last axis of the bias, so numpy broadcasting lines them up.
    bias = s * _current_bias(lin) + t
    write_linear(lin, ctx, w, bias, output, detach)


def fold_affine_before(lin: Linear, affine: fm.ChannelAffine, ctx: PassContext, detach: Callable[[], None]) -> None:
    """lin(s * x + t), folded into lin's weight and bias (the caller checked exactness).

    ``detach`` must connect lin to x in place of the affine's output.
    """
    s, t = affine.scale, affine.shift
    if lin.kind == "Conv":
        w = fm.scale_conv_inputs(lin.weight, s, lin.group, transposed=False)
        shift = fm.conv_input_shift_response(lin.weight, t, lin.group)
    elif lin.kind == "ConvTranspose":
        w = fm.scale_conv_inputs(lin.weight, s, lin.group, transposed=True)
        shift = np.zeros(lin.out_channels)  # callers only allow t == 0 here
    else:
        trans = lin.kind == "Gemm" and lin.trans_b
        w = fm.scale_matrix_rows(lin.weight, s, trans)
        shift = fm.matrix_input_shift_response(lin.weight, t, trans)
        if lin.kind == "Gemm":
            shift = shift * float(lin.node.attrs.get("alpha", 1.0))
    bias = _current_bias(lin) + shift
    if lin.bias is None and not np.any(shift):
        bias = None
    write_linear(lin, ctx, w, bias, lin.output, detach)
