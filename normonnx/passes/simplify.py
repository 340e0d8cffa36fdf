"""Exact simplifications other tools make and a deployed model should have: what onnxsim and
onnxslim do to other exporters' files, done here so that a fold's output is never slower than theirs.

* ``pad-into-conv``: ``Pad(x, constant 0, spatial pads) -> Conv`` becomes one Conv with the pads
  added to its own (AveragePool too, when it counts padding); tf2onnx and paddle2onnx write them.
* ``identity-arithmetic``: ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` whose constant cannot change
  x's shape by broadcasting (every dim 1 and rank no higher, or x's static shape) go away.
* ``static-shape-parts``: ``Gather(Shape(x), i)`` and ``Slice(Shape(x), a, b)`` that pick only dims
  of x that shape inference knows become constants, though x's batch is dynamic (the attention
  reshapes of a transformer export), so that the Reshapes they feed get constant shapes.
* ``reshape-chains``: a Reshape to a constant shape reads through the Reshape / Flatten / Squeeze /
  Unsqueeze before it (they only relabel the same elements in the same order), and a Reshape to the
  shape its input already has goes away.

* ``reshape-through-elementwise``: ``Reshape -> elementwise -> Reshape`` (a GELU between two
  projections) reads through the first Reshape: unary ops and ops with scalar constants commute
  with a reshape, so the middle runs on the flat tensor and one Reshape remains.
* ``transpose-chains``: ``Transpose(Transpose(x, p), q)`` becomes one Transpose (none when the
  permutations cancel).
* ``matmul-bias-as-gemm``: ``MatMul(x, W) + b`` on an x of rank 3 or more (a transformer's
  projections) becomes ``Reshape(x, [-1, K]) -> Gemm(W, b) -> Reshape``: onnxruntime fuses the
  bias into a 2-D Gemm, not into a batched MatMul. Only when at most one leading dim of x is
  unknown, so that the reshape back is constant.

Nothing else changes: a tensor that is a graph output, or that an If/Loop/Scan body reads by
name, is never bypassed.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import is_default_domain
from normonnx.graph.access import constant_value, op_is, producer, static_shape
from normonnx.graph.bridge import detach
from normonnx.passes._base import PassContext


def _names_read_by_bodies(graph: gs.Graph) -> set[str]:
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            for body in value if isinstance(value, list) else [value]:
                if isinstance(body, gs.Graph):
                    for sub in body.nodes:
                        names.update(t.name for t in sub.inputs)
                    names |= _names_read_by_bodies(body)
    return names


def _bypass(node: gs.Node, x: gs.Tensor, ctx: PassContext, protected: set[str]) -> bool:
    """Every reader of ``node``'s output reads ``x`` instead, and the node goes; False if not allowed."""
    y = node.outputs[0]
    if y in ctx.outputs or y.name in protected:
        return False
    for user in list(y.outputs):
        for i, t in enumerate(user.inputs):
            if t is y:
                user.inputs[i] = x
    detach([node])
    return True


def _default_domain(node: gs.Node) -> bool:
    return is_default_domain(node.domain)


class _NodeSimplification:
    """A simplification tried on every node once per round; ``apply`` says whether it changed the graph."""

    name: str
    ops: tuple[str, ...]

    def run(self, ctx: PassContext) -> int:
        protected = _names_read_by_bodies(ctx.graph)
        done = 0
        for node in list(ctx.graph.nodes):
            if node.outputs and node.op in self.ops and _default_domain(node) and self.apply(node, ctx, protected):
                done += 1
        if done:
            ctx.graph.cleanup(remove_unused_graph_inputs=False)
        return done

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        raise NotImplementedError


class PadIntoConv(_NodeSimplification):
    name = "pad-into-conv"
    ops = ("Conv", "AveragePool")

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        pad = producer(node.inputs[0])
        if not op_is(pad, "Pad") or not _default_domain(pad) or not pad.outputs:
            return False
        if len(pad.outputs[0].outputs) != 1 or pad.outputs[0] in ctx.outputs or pad.outputs[0].name in protected:
            return False
        spatial = self._spatial_pads(pad, node)
        if spatial is None or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return False
        if node.op == "AveragePool" and not node.attrs.get("count_include_pad", 0):
            return False
        own = list(node.attrs.get("pads", [0] * len(spatial)))
        node.attrs["pads"] = [int(a + b) for a, b in zip(own, spatial, strict=True)]
        node.inputs[0] = pad.inputs[0]
        detach([pad])
        return True

    @staticmethod
    def _spatial_pads(pad: gs.Node, node: gs.Node) -> list[int] | None:
        """The Pad's begin/end pads over the spatial axes, as Conv's ``pads``; None unless exact."""
        mode = pad.attrs.get("mode", "constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
            return None
        if len(pad.inputs) > 1:
            pads = constant_value(pad.inputs[1])
            value = constant_value(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2].name else np.zeros(1)
            axes = constant_value(pad.inputs[3]) if len(pad.inputs) > 3 and pad.inputs[3].name else None
            if pads is None or value is None or (len(pad.inputs) > 3 and pad.inputs[3].name and axes is None):
                return None
        else:  # Pad-2: pads and value are attributes
            pads, value, axes = np.asarray(pad.attrs.get("pads", [])), np.asarray(pad.attrs.get("value", 0.0)), None
        if value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
            return None
        pads = np.asarray(pads, np.int64).reshape(-1)
        weight_rank = None
        if node.op == "Conv" and len(node.inputs) > 1:
            shape = static_shape(node.inputs[1])
            weight_rank = len(shape) if shape is not None else None
        rank = weight_rank or (len(node.attrs["kernel_shape"]) + 2 if "kernel_shape" in node.attrs else None)
        if rank is None:
            return None
        if axes is not None:
            full = np.zeros(2 * rank, np.int64)
            for k, axis in enumerate(np.asarray(axes, np.int64).reshape(-1) % rank):
                full[axis], full[axis + rank] = pads[k], pads[k + len(axes)]
            pads = full
        if pads.size != 2 * rank or np.any(pads < 0):
            return None
        begins, ends = pads[:rank], pads[rank:]
        if np.any(begins[:2]) or np.any(ends[:2]):  # batch or channel padding is not a Conv's to make
            return None
        return [*begins[2:].tolist(), *ends[2:].tolist()]


_IDENTITY = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


class IdentityArithmetic(_NodeSimplification):
    name = "identity-arithmetic"
    ops = tuple(_IDENTITY)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        if len(node.inputs) != 2:
            return False
        # Mul and Add are symmetric; Div and Sub only with the constant second.
        for k in (0, 1) if node.op in ("Mul", "Add") else (1,):
            const, x = node.inputs[k], node.inputs[1 - k]
            value = constant_value(const)
            if value is None or value.dtype.kind != "f" or not np.all(value == _IDENTITY[node.op]):
                continue
            if node.op in ("Add", "Sub") and np.any(np.signbit(value)):
                continue  # x + (-0.0) keeps -0.0; x + 0.0 would not: keep it
            if x.dtype is not None and np.dtype(x.dtype) != value.dtype:
                continue
            if self._keeps_shape(x, value) and _bypass(node, x, ctx, protected):
                return True
        return False

    @staticmethod
    def _keeps_shape(x: gs.Tensor, value: np.ndarray) -> bool:
        """Broadcasting ``value`` against x gives x's shape: no higher rank, each dim 1 or x's own (known) size."""
        if x.shape is None or value.ndim > len(x.shape):
            return False
        aligned = list(x.shape)[len(x.shape) - value.ndim :]
        return all(d == 1 or (isinstance(s, int) and s == d) for d, s in zip(value.shape, aligned, strict=True))


_RELABELLING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class ReshapeChains(_NodeSimplification):
    name = "reshape-chains"
    ops = ("Reshape",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        if len(node.inputs) < 2:
            return False
        if self._one_dim_left(node, ctx):
            return True
        target = constant_value(node.inputs[1])
        if target is None or (np.any(target == 0) and not node.attrs.get("allowzero", 0)):
            return False  # a 0 copies a dim of the input it reads: reading through would change it
        before = producer(node.inputs[0])
        if before is not None and before.op in _RELABELLING and _default_domain(before) and before.outputs:
            node.inputs[0] = before.inputs[0]
            return True
        shape, want = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        same = shape is not None and want is not None and list(shape) == list(want)
        return same and _bypass(node, node.inputs[0], ctx, protected)

    @staticmethod
    def _one_dim_left(node: gs.Node, ctx: PassContext) -> bool:
        """``Reshape(x, Concat(d, 65, 16))`` with one computed 1-element piece and constant, positive others
        becomes ``Reshape(x, [-1, 65, 16])``: when the original runs, d is the element count over the
        rest, exactly what -1 computes (the Shape/Slice/Concat arithmetic then goes)."""
        concat = producer(node.inputs[1])
        if not op_is(concat, "Concat") or not _default_domain(concat) or node.attrs.get("allowzero", 0):
            return False
        pieces, dynamic = [], []
        for k, t in enumerate(concat.inputs):
            value = constant_value(t)
            if value is None:
                if static_shape(t) != [1]:
                    return False
                dynamic.append(k)
                pieces.append(np.array([-1], np.int64))
            else:
                pieces.append(np.asarray(value, np.int64).reshape(-1))
        if len(dynamic) != 1:
            return False
        fixed = np.concatenate([p for k, p in enumerate(pieces) if k != dynamic[0]])
        if np.any(fixed <= 0):  # a 0 copies a dim and a -1 infers one: then d is not what -1 computes
            return False
        node.inputs[1] = ctx.constant(f"{node.name}_shape", np.concatenate(pieces))
        return True


class StaticShapeParts(_NodeSimplification):
    name = "static-shape-parts"
    ops = ("Gather", "Slice")

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        shape_node = producer(node.inputs[0])
        if not op_is(shape_node, "Shape") or not _default_domain(shape_node) or node.outputs[0] in ctx.outputs:
            return False
        if node.outputs[0].name in protected:
            return False
        dims = shape_node.inputs[0].shape
        if dims is None:
            return False
        start = int(shape_node.attrs.get("start", 0))
        end = shape_node.attrs.get("end")
        dims = list(dims)[slice(start, None if end is None else int(end))]
        picked = self._picked(node, len(dims))
        if picked is None or not all(isinstance(dims[i], int) and dims[i] >= 0 for i in picked):
            return False
        value = np.asarray([dims[i] for i in picked], np.int64)
        if node.op == "Gather" and np.ndim(constant_value(node.inputs[1])) == 0:
            value = value.reshape(())
        out = node.outputs[0]
        out.to_constant(value)
        out.inputs.clear()
        return True

    @staticmethod
    def _picked(node: gs.Node, rank: int) -> list[int] | None:
        """The positions of the shape vector this Gather or Slice reads (None unless constant)."""
        if node.op == "Gather":
            if int(node.attrs.get("axis", 0)) != 0:
                return None
            index = constant_value(node.inputs[1])
            if index is None or index.dtype.kind not in "iu" or index.ndim > 1:
                return None
            picked = [int(i) % rank if -rank <= int(i) < rank else None for i in np.atleast_1d(index)]
            return None if None in picked else picked
        params = [constant_value(t) if t.name else None for t in node.inputs[1:]]
        if (
            len(params) < 2
            or params[0] is None
            or params[1] is None
            or any(p is None for p, t in zip(params[2:], node.inputs[3:], strict=False) if t.name)
        ):
            return None
        axes = params[2] if len(params) > 2 and params[2] is not None else np.zeros(1, np.int64)
        steps = params[3] if len(params) > 3 and params[3] is not None else np.ones(1, np.int64)
        if np.asarray(axes).reshape(-1).tolist() not in ([0], [-1]) or np.asarray(params[0]).size != 1:
            return None
        begin, stop, step = (int(np.asarray(v).reshape(-1)[0]) for v in (params[0], params[1], steps))
        return list(range(rank))[slice(begin, stop, step)] if step != 0 else None


class MatMulBiasAsGemm(_NodeSimplification):
    name = "matmul-bias-as-gemm"
    ops = ("MatMul",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight = constant_value(w)
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or x.shape is None or len(x.shape) < 3:
            return False
        if len(y.outputs) != 1 or y in ctx.outputs or y.name in protected:
            return False
        add = y.outputs[0]
        if not op_is(add, "Add") or not _default_domain(add) or len(add.inputs) != 2:
            return False
        bias_t = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        bias = constant_value(bias_t)
        k, n = weight.shape
        if bias is None or bias.dtype != weight.dtype or bias.size != n or any(d != 1 for d in bias.shape[:-1]):
            return False
        if bias.ndim > len(x.shape):
            return False
        leading = list(x.shape[:-1])
        unknown = [i for i, d in enumerate(leading) if not (isinstance(d, int) and d > 0)]
        if x.shape[-1] != k or len(unknown) > 1:
            return False
        back = np.asarray([-1 if i in unknown else d for i, d in enumerate(leading)] + [n], np.int64)
        out = add.outputs[0]
        base = node.name or y.name
        flat = gs.Variable(ctx.fresh(f"{base}/flat"), dtype=x.dtype)
        gemm_out = gs.Variable(ctx.fresh(f"{base}/gemm"), dtype=out.dtype)
        ctx.add_node(
            gs.Node(
                "Reshape",
                ctx.fresh(f"{base}/flatten"),
                inputs=[x, ctx.constant(f"{base}/k", np.asarray([-1, k], np.int64))],
                outputs=[flat],
            )
        )
        ctx.add_node(
            gs.Node(
                "Gemm",
                ctx.fresh(f"{base}/gemm"),
                inputs=[flat, w, ctx.constant(f"{base}/bias", bias.reshape(n))],
                outputs=[gemm_out],
            )
        )
        ctx.add_node(
            gs.Node(
                "Reshape",
                ctx.fresh(f"{base}/unflatten"),
                inputs=[gemm_out, ctx.constant(f"{base}/shape", back)],
                outputs=[out],
            )
        )
        add.outputs.clear()
        detach([node, add])
        return True


_UNARY = {
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Abs",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Gelu",
    "Softplus",
    "Elu",
    "Selu",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Mish",
    "Identity",
    "Cast",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}


class ReshapeThroughElementwise(_NodeSimplification):
    name = "reshape-through-elementwise"
    ops = ("Reshape",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None or np.any(target == 0):
            return False
        region = self._region(node.inputs[0], ctx, protected)
        if region is None:
            return False
        first, middle = region
        source = first.inputs[0]
        for n in middle:
            for i, t in enumerate(n.inputs):
                if t is first.outputs[0]:
                    n.inputs[i] = source
            for t in n.outputs:
                t.shape = None  # the middle now runs on the flat shape; inference fills it in again
        return True

    @staticmethod
    def _region(top: gs.Tensor, ctx: PassContext, protected: set[str]):
        """(the Reshape the elementwise nodes above ``top`` read, those nodes) or None unless exact."""
        start = producer(top)
        if start is None or start.op not in _UNARY | _BINARY or not _default_domain(start):
            return None
        nodes, stack, seen, first = [], [start], set(), None
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op not in _UNARY | _BINARY or not _default_domain(n) or len(n.outputs) != 1:
                return None
            nodes.append(n)
            for t in n.inputs:
                value = constant_value(t)
                if value is not None:
                    if value.size != 1:
                        return None  # a constant that broadcasts along an axis does not commute with a reshape
                    continue
                p = producer(t)
                if p is not None and p.op == "Reshape" and _default_domain(p):
                    if first is not None and p is not first:
                        return None
                    first = p
                    continue
                if p is None:
                    return None
                stack.append(p)
        if first is None or first.outputs[0] in ctx.outputs or first.outputs[0].name in protected:
            return None
        members = {id(n) for n in nodes}
        for n in nodes:
            t = n.outputs[0]
            if t in ctx.outputs or t.name in protected:
                return None
            if t is not top and any(id(u) not in members for u in t.outputs):
                return None
        if top.outputs and len(top.outputs) != 1:
            return None
        if any(id(u) not in members for u in first.outputs[0].outputs):
            return None
        return first, nodes


class TransposeChains(_NodeSimplification):
    name = "transpose-chains"
    ops = ("Transpose",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        before = producer(node.inputs[0])
        if not op_is(before, "Transpose") or not _default_domain(before):
            return False
        p, q = before.attrs.get("perm"), node.attrs.get("perm")
        if p is None or q is None or len(p) != len(q):
            return False  # a default perm reverses the axes of a rank we may not know
        combined = [int(p[i]) for i in q]
        node.inputs[0] = before.inputs[0]
        if combined == list(range(len(combined))):
            node.op, node.attrs = "Identity", {}  # stays only where it names a graph output
            _bypass(node, node.inputs[0], ctx, protected)
            return True
        node.attrs["perm"] = combined
        return True
