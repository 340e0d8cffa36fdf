"""Writing small subgraphs: fresh names, opset-aware op spellings, dtype islands.

Lowering and raising passes build a few nodes at a time. Everything that
depends on the opset they are written for (ReduceMean's axes as attribute or
input) or on the data type (an fp32 island for fp16 statistics) is spelled
here once.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.graph.access import numpy_dtype
from normonnx.passes.rules import PassContext

FLOAT32 = onnx.TensorProto.FLOAT
_LOW_PRECISION = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


class Writer:
    """Appends nodes named ``<prefix>/<op>`` to the context's graph."""

    def __init__(self, ctx: PassContext, prefix: str) -> None:
        self.ctx, self.prefix, self.opset = ctx, prefix, ctx.graph.opset
        self.nodes: list[gs.Node] = []

    def op(
        self,
        op_type: str,
        inputs: Sequence[gs.Tensor],
        attrs: dict | None = None,
        *,
        out: gs.Tensor | None = None,
        dtype=None,
    ) -> gs.Tensor:
        """One node; its output is ``out`` when given (to keep a name), else a fresh tensor."""
        ctx = self.ctx
        if out is None:
            out = gs.Variable(ctx.fresh(f"{self.prefix}/{op_type}_out"), dtype=dtype)
        node = gs.Node(
            op_type, name=ctx.fresh(f"{self.prefix}/{op_type}"), attrs=attrs or {}, inputs=list(inputs), outputs=[out]
        )
        ctx.add_node(node)
        self.nodes.append(node)
        return out

    def const(self, name: str, value: np.ndarray) -> gs.Constant:
        return self.ctx.constant(f"{self.prefix}/{name}", np.asarray(value))

    def reduce_mean(self, x: gs.Tensor, axes: Sequence[int], dtype=None) -> gs.Tensor:
        axes = [int(a) for a in axes]
        if self.opset >= 18:
            return self.op(
                "ReduceMean", [x, self.const("axes", np.array(axes, np.int64))], {"keepdims": 1}, dtype=dtype
            )
        return self.op("ReduceMean", [x], {"axes": axes, "keepdims": 1}, dtype=dtype)

    def cast(self, x: gs.Tensor, to: int, dtype=None, out: gs.Tensor | None = None) -> gs.Tensor:
        return self.op("Cast", [x], {"to": to}, out=out, dtype=dtype)

    def scalar(self, name: str, value: float, dtype) -> gs.Constant:
        return self.const(name, np.array(value, dtype=dtype))


def needs_fp32_island(dtype, stash_type: int) -> bool:
    """fp16/bf16 data with statistics stashed in float32 (stash_type=1, the default)."""
    return dtype is not None and numpy_dtype(dtype) in _LOW_PRECISION and stash_type == 1


def channel_shape(rank: int) -> list[int]:
    """[-1, 1, 1, ...]: a per-channel vector broadcast against [N, C, *spatial]."""
    return [-1] + [1] * (rank - 2)


def contained(nodes: Sequence[gs.Node], output: gs.Tensor, graph_outputs) -> str | None:
    """Why ``nodes`` cannot be replaced as a unit computing ``output`` (None if they can).

    Every tensor they produce, except ``output``, must be consumed only
    inside the unit and must not be a graph output.
    """
    members = {id(n) for n in nodes}
    for n in nodes:
        for t in n.outputs:
            if t is output:
                continue
            if t in graph_outputs:
                return f"'{t.name}' inside it is a graph output"
            outside = [u for u in t.outputs if id(u) not in members]
            if outside:
                return f"'{t.name}' inside it is also used by {outside[0].op}"
    return None
