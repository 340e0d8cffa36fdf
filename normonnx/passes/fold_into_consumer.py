"""fold-into-consumer: an inference BatchNorm placed before a linear op goes into its weights.

Before::

    x -> BatchNormalization -> z -> Conv|ConvTranspose|Gemm|MatMul(+Add) -> y

After::

    x -> Conv|ConvTranspose|Gemm|MatMul(+Add)' -> y

Formula, with z = s * x + t per input channel i:
Conv: W'[o, i, k] = W[o, i, k] * s[i] and b'[o] = b[o] + sum_{i,k} W[o, i, k] * t[i]
(i over the input channels of o's group). Gemm/MatMul: B'[k, :] = s[k] * B[k, :]
and C' = beta * C + alpha * (t @ B). Computed in float64, cast back.

Preconditions: z has exactly one consumer, that op's data input, and is not
a graph output; BN is in inference mode with constant, finite parameters;
the op's weights are constants. The bias term is the same at every output
position only when no output reads the zero padding: so a Conv with padding
(explicit pads or SAME auto_pad with a kernel larger than 1) is folded only
when t == 0, and a ConvTranspose (whose border outputs see fewer taps) only
when t == 0; otherwise the fold is refused with that reason. Gemm needs
transA=0 and MatMul an input of rank 2, so that BN's axis 1 is the input
features.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import LINEAR_OPS
from normonnx.graph.access import describe, op_is, rank_of, sole_consumer
from normonnx.graph.edit import detach, set_input
from normonnx.passes._linear import AffineFold, fold_affine_before, read_linear
from normonnx.passes.rules import PassContext, Refusal
from normonnx.recognize.affine import read_affine


def pads_reach_data(conv: gs.Node) -> bool:
    """True when some output of the Conv reads zero padding."""
    pads = list(conv.attrs.get("pads", []))
    if any(p != 0 for p in pads):
        return True
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        weight = conv.inputs[1]
        kernel = list(conv.attrs.get("kernel_shape", getattr(weight, "shape", [0, 0, 2])[2:]))
        dilations = list(conv.attrs.get("dilations", [1] * len(kernel)))
        return any((k - 1) * d > 0 for k, d in zip(kernel, dilations, strict=False))
    return False


class FoldIntoConsumer:
    name = "fold-into-consumer"

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node if op_is(node, "BatchNormalization") else None

    def check(self, node: gs.Node, ctx: PassContext) -> AffineFold | Refusal:
        why = self._problem(node, ctx)
        return why if isinstance(why, AffineFold) else Refusal(describe(node), "batchnorm", why)

    def rewrite(self, plan: AffineFold, ctx: PassContext) -> str:
        x = plan.node.inputs[0]

        def unhook() -> None:
            detach([plan.node])
            set_input(plan.lin.node, 0, x)

        fold_affine_before(plan.lin, plan.affine.affine, ctx, unhook)
        return f"into the following {plan.lin.kind} {plan.lin.name}"

    @staticmethod
    def _problem(node: gs.Node, ctx: PassContext) -> AffineFold | str:
        user = sole_consumer(node.outputs[0], ctx.outputs)
        if isinstance(user, str):
            return f"output {user}"
        if not op_is(user, *LINEAR_OPS):
            return f"its output goes to {user.op} {describe(user)}, not a linear op"
        if user.inputs[0] is not node.outputs[0]:
            return f"its output is not the data input of {describe(user)}"
        lin = read_linear(user, ctx)
        if isinstance(lin, str):
            return lin
        rank = rank_of(node.inputs[0]) or rank_of(node.outputs[0])
        if lin.kind in ("Conv", "ConvTranspose"):
            rank = lin.weight.ndim
        elif lin.kind == "Gemm":
            if lin.node.attrs.get("transA", 0):
                return f"{describe(user)} has transA=1: BN's axis 1 is not its input features"
            rank = 2
        elif rank != 2:
            return f"{describe(user)} input has rank {rank}: BN's axis 1 is not the MatMul's input features"
        affine = read_affine(node, node.inputs[0], ctx.graph.opset, rank, 1, lin.in_channels)
        if affine is None or isinstance(affine, str):
            return affine or "not an inference BatchNormalization"
        if np.any(affine.affine.shift != 0):
            if lin.kind == "ConvTranspose":
                return f"{describe(user)} is a ConvTranspose: its border outputs see fewer taps of the shift"
            if lin.kind == "Conv" and pads_reach_data(user):
                return (
                    f"{describe(user)} zero-pads its input (pads={list(user.attrs.get('pads', []))},"
                    f" auto_pad={user.attrs.get('auto_pad', 'NOTSET')}): the border would see the shift as 0;"
                    " exact only without padding"
                )
        return AffineFold(describe(node), "batchnorm", node, lin, affine)
