"""matmul-bias-as-gemm: ``MatMul(x, W) + b`` on an x of rank 3 or more becomes a 2-D Gemm between Reshapes.

Before::

    x [B, T, K] -> MatMul(W [K, N]) -> y -> Add(b [N]) -> out [B, T, N]

After::

    x -> Reshape([-1, K]) -> Gemm(W, b) -> Reshape([B, T, N], one dim -1 at most) -> out

Formula: a MatMul of a rank-3+ x with a 2-D W multiplies every row of x's last axis by W, which is
what a Gemm does to x flattened to [-1, K]; adding b to each row is Gemm's C. onnxruntime fuses the
bias into a 2-D Gemm, not into a batched MatMul (a transformer's projections).

Preconditions: W is a constant 2-D float matrix [K, N] and x's last dim is K; b is a constant of
W's dtype with N elements, every leading dim 1 and no higher rank than x; at most one leading dim
of x is unknown, so that the reshape back is a constant; y is read by the Add only, is not a graph
output and no If/Loop/Scan body reads it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe, op_is
from normonnx.graph.edit import detach
from normonnx.passes._simplifying import pinned
from normonnx.passes._writer import Writer
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext, Refusal


@dataclass(frozen=True)
class _AsGemm(NodePlan):
    # node: the MatMul
    add: gs.Node
    k: int  # x's last dim, W's rows
    bias: np.ndarray  # [N]
    back: np.ndarray  # the output shape, -1 for the one unknown leading dim


class MatMulBiasAsGemm:
    name = "matmul-bias-as-gemm"
    tidy_first = True
    ops = ("MatMul",)

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, np.ndarray] | None:
        x, weight = node.inputs[0], constant_value(node.inputs[1])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or x.shape is None or len(x.shape) < 3:
            return None
        return node, weight

    def check(self, match: tuple[gs.Node, np.ndarray], ctx: PassContext) -> _AsGemm | Refusal | None:
        node, weight = match
        x, y = node.inputs[0], node.outputs[0]
        if len(y.outputs) != 1:
            return None
        why = pinned(y, ctx)
        if why is not None:
            return Refusal(describe(node), NO_FAMILY, f"its bias Add cannot join it: {why}")
        add = y.outputs[0]
        if not op_is(add, "Add") or len(add.inputs) != 2:
            return None
        bias = constant_value(add.inputs[1] if add.inputs[0] is y else add.inputs[0])
        k, n = weight.shape
        if bias is None or bias.dtype != weight.dtype or bias.size != n or any(d != 1 for d in bias.shape[:-1]):
            return None
        if bias.ndim > len(x.shape):
            return None
        leading = list(x.shape[:-1])
        unknown = [i for i, d in enumerate(leading) if not (isinstance(d, int) and d > 0)]
        if x.shape[-1] != k or len(unknown) > 1:
            return None
        back = np.asarray([-1 if i in unknown else d for i, d in enumerate(leading)] + [n], np.int64)
        return _AsGemm(describe(node), NO_FAMILY, node, add, k, bias.reshape(n), back)

    def rewrite(self, plan: _AsGemm, ctx: PassContext) -> str:
        node = plan.node
        x, w, y, out = node.inputs[0], node.inputs[1], node.outputs[0], plan.add.outputs[0]
        detach([node, plan.add])
        write = Writer(ctx, node.name or y.name)
        flat = write.op("Reshape", [x, write.const("k", np.asarray([-1, plan.k], np.int64))], dtype=x.dtype)
        gemm = write.op("Gemm", [flat, w, write.const("bias", plan.bias)], dtype=out.dtype)
        write.op("Reshape", [gemm, write.const("shape", plan.back)], out=out)
        return "a 2-D Gemm with its bias, between Reshapes"
