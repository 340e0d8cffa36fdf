"""Exact simplifications other tools make and a deployed model should have: what onnxsim and
onnxslim do to other exporters' files, done here so that a fold's output is never slower than theirs.

* ``pad-into-conv``: ``Pad(x, constant 0, spatial pads) -> Conv`` becomes one Conv with the pads
  added to its own (AveragePool too, when it counts padding); tf2onnx and paddle2onnx write them.
* ``identity-arithmetic``: ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` whose constant cannot change
  x's shape by broadcasting (every dim 1 and rank no higher, or x's static shape) go away.
* ``static-shape-parts``: shape arithmetic (Shape, Cast, Gather, Slice, Squeeze, Unsqueeze, Concat,
  integer math) that only reads dims shape inference knows becomes constants, though x's batch is
  dynamic (the attention reshapes of a transformer export), so the Reshapes get constant shapes;
  a Conv's output whose rank onnx cannot infer still has the weight's rank and channel count.
* ``reshape-chains``: a Reshape to a constant shape reads through the Reshape / Flatten / Squeeze /
  Unsqueeze before it (they only relabel the same elements in the same order), and a Reshape to the
  shape its input already has goes away; ``Unsqueeze(Unsqueeze(x))`` becomes one Unsqueeze.
* ``same-type-cast``: a Cast to the type its input already has goes.
* ``reshape-through-elementwise``: ``Reshape -> elementwise -> Reshape`` (a GELU between two
  projections) reads through the first Reshape: unary ops and ops with scalar constants commute
  with a reshape, so the middle runs on the flat tensor and one Reshape remains.
* ``transpose-chains``: ``Transpose(Transpose(x, p), q)`` becomes one Transpose (none when the
  permutations cancel).
* ``squeeze-through-transpose``: ``Squeeze(Transpose(y, p), s)`` of axes that are 1 in y becomes
  ``Transpose(Squeeze(y), p')``, so that the Squeeze meets the Reshape before it (a qkv split).
* ``constant-if``: an If whose condition is a constant (computed from static shapes inside a
  recurrent model's bodies) is replaced by the branch it takes.
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
from onnx.helper import tensor_dtype_to_np_dtype as onnx_np_dtype

from normonnx.families import is_default_domain
from normonnx.graph.access import bodies, constant_value, op_is, producer, static_shape
from normonnx.graph.bridge import detach
from normonnx.passes._base import PassContext
from normonnx.passes._writer import Writer, contained


def _names_read_by_bodies(graph: gs.Graph) -> set[str]:
    return {t.name for body in bodies(graph) for node in body.nodes for t in node.inputs}


def _bypass(node: gs.Node, x: gs.Tensor, ctx: PassContext, protected: set[str]) -> bool:
    """Every reader of ``node``'s output reads ``x`` instead, and the node goes; False if not allowed."""
    y = node.outputs[0]
    if y in ctx.outputs or y.name in protected:
        return False
    _redirect(y, x)
    detach([node])
    return True


def _redirect(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node reading ``old`` reads ``new`` instead."""
    for user in list(old.outputs):
        for i, t in enumerate(user.inputs):
            if t is old:
                user.inputs[i] = new


class _NodeSimplification:
    """A simplification tried on every node once per round; ``apply`` says whether it changed the graph."""

    name: str
    ops: tuple[str, ...]

    def run(self, ctx: PassContext) -> int:
        protected = _names_read_by_bodies(ctx.graph)
        done = 0
        for node in list(ctx.graph.nodes):
            if node.outputs and op_is(node, *self.ops) and self.apply(node, ctx, protected):
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
        if not op_is(pad, "Pad") or not pad.outputs:
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


class SameTypeCast(_NodeSimplification):
    """A Cast to the type its input already has (TorchScript casts a Gather of a Shape to int64) goes."""

    name = "same-type-cast"
    ops = ("Cast",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        x = node.inputs[0]
        if x.dtype is None or node.attrs.get("to") is None:
            return False
        if np.dtype(x.dtype) != np.dtype(onnx_np_dtype(int(node.attrs["to"]))):
            return False
        return _bypass(node, x, ctx, protected)


_RELABELLING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class ReshapeChains(_NodeSimplification):
    name = "reshape-chains"
    ops = ("Reshape", "Squeeze", "Unsqueeze")

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        if node.op == "Unsqueeze" and self._unsqueeze_pair(node, ctx, protected):
            return True
        if node.op != "Reshape":
            return self._into_reshape(node, ctx, protected)
        if len(node.inputs) < 2:
            return False
        target = constant_value(node.inputs[1])
        if target is None or (np.any(target == 0) and not node.attrs.get("allowzero", 0)):
            return False  # a 0 copies a dim of the input it reads: reading through would change it
        before = producer(node.inputs[0])
        if op_is(before, *_RELABELLING) and before.outputs:
            node.inputs[0] = before.inputs[0]
            return True
        return self._keeps_shape(node.inputs[0], target, node) and _bypass(node, node.inputs[0], ctx, protected)

    @staticmethod
    def _keeps_shape(x: gs.Tensor, target: np.ndarray, node: gs.Node) -> bool:
        """The target is x's own shape: every dim equal and known, but for one -1 (or 0) where x's dim is
        the only one not known (tf2onnx's Reshape(x, [-1, C, 1, 1]) after a pool of a dynamic batch)."""
        dims = x.shape
        target = [int(v) for v in target.reshape(-1)]
        if dims is None or len(dims) != len(target):
            return False
        free = 0
        for d, t in zip(dims, target, strict=True):
            if isinstance(d, int) and d >= 0 and (t == d or (t == 0 and not node.attrs.get("allowzero", 0))):
                continue
            if t == -1 or (t == 0 and not node.attrs.get("allowzero", 0)):
                free += 1
                continue
            return False
        return free <= 1 and all(isinstance(d, int) for d, t in zip(dims, target, strict=True) if t not in (-1, 0))

    @staticmethod
    def _unsqueeze_pair(node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        """``Unsqueeze(Unsqueeze(x, a), b)`` becomes one Unsqueeze (TorchScript's attention mask
        ``[:, None, None, :]``): b's positions are final, a's move past those of b before them."""
        before = producer(node.inputs[0])
        if not op_is(before, "Unsqueeze") or len(before.outputs[0].outputs) != 1:
            return False
        if before.outputs[0] in ctx.outputs or before.outputs[0].name in protected:
            return False
        first, second = _axes(before), _axes(node)
        if first is None or second is None:
            return False
        mid_rank = None if before.inputs[0].shape is None else len(before.inputs[0].shape) + len(first)
        if mid_rank is None and any(a < 0 for a in first + second):
            return False
        if mid_rank is not None:
            first = [a % mid_rank for a in first]
            second = [a % (mid_rank + len(second)) for a in second]
        if len(set(first)) != len(first) or len(set(second)) != len(second):
            return False
        final = set(second)
        free = [k for k in range(max(first, default=-1) + len(second) + 1) if k not in final]
        merged = sorted(final | {free[a] for a in first})
        node.inputs[0] = before.inputs[0]
        if len(node.inputs) > 1:
            node.inputs[1] = ctx.constant(f"{node.name}_axes", np.asarray(merged, np.int64))
        else:
            node.attrs["axes"] = merged
        return True

    @staticmethod
    def _into_reshape(node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        """``Squeeze`` / ``Unsqueeze`` of a Reshape to a constant target: one Reshape to the target with
        those 1s removed or inserted (tf2onnx's einsum writes Reshape then Squeeze)."""
        before = producer(node.inputs[0])
        if not op_is(before, "Reshape") or len(before.outputs[0].outputs) != 1:
            return False
        if before.outputs[0] in ctx.outputs or before.outputs[0].name in protected:
            return False
        target = constant_value(before.inputs[1])
        axes_t = node.inputs[1] if len(node.inputs) > 1 else None
        axes = constant_value(axes_t) if axes_t is not None else node.attrs.get("axes")
        if target is None or axes is None or np.any(target == 0):
            return False
        target, axes = [int(v) for v in target.reshape(-1)], [int(a) for a in np.asarray(axes).reshape(-1)]
        if node.op == "Squeeze":
            axes = sorted({a % len(target) for a in axes})
            if any(target[a] != 1 for a in axes):
                return False
            shape = [d for k, d in enumerate(target) if k not in axes]
        else:
            rank = len(target) + len(axes)
            axes = sorted({a % rank for a in axes})
            rest = iter(target)
            shape = [1 if k in axes else next(rest) for k in range(rank)]
        node.op, node.attrs = "Reshape", {}
        node.inputs.clear()
        node.inputs.extend([before.inputs[0], ctx.constant(f"{node.name}_shape", np.asarray(shape, np.int64))])
        return True


def _axes(node: gs.Node) -> list[int] | None:
    """A Squeeze's or Unsqueeze's constant axes (input from opset 13, attribute before), else None."""
    if len(node.inputs) > 1:
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


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


class StaticShapeParts:
    """Shape arithmetic evaluated as far as shape inference knows the dims, whatever the dynamic ones.

    The values of small integer tensors are followed from ``Shape`` through Cast, Gather, Slice,
    Squeeze, Unsqueeze, Concat, ReduceProd and elementwise integer arithmetic, each dim known or
    not; a tensor whose every element is known becomes a constant (tf2onnx's and dynamo's
    attention reshapes read only the static dims of a tensor with a dynamic batch).
    """

    name = "static-shape-parts"

    def run(self, ctx: PassContext) -> int:
        protected = _names_read_by_bodies(ctx.graph)
        values: dict[int, np.ndarray] = {}  # id(tensor) -> object array of ints, dim names, None for unknown
        done = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs or not is_default_domain(node.domain) or len(node.outputs) != 1:
                continue
            if node.op == "Reshape" and len(node.inputs) > 1 and self._one_dim_left(node, ctx, values):
                done += 1
                continue
            out = node.outputs[0]
            value = self._value(node, values)
            if value is None:
                continue
            values[id(out)] = value
            if node.op == "Shape" and not isinstance(node.inputs[0], gs.Variable):
                continue
            known = all(isinstance(v, int) for v in value.reshape(-1))
            if not known or out in ctx.outputs or out.name in protected or node.op == "Constant":
                continue
            dtype = np.dtype(out.dtype) if out.dtype is not None else np.dtype(np.int64)
            if dtype.kind not in "iub":
                continue
            out.to_constant(np.asarray(value.tolist(), dtype=np.int64).astype(dtype))
            out.inputs.clear()
            done += 1
        if done:
            ctx.graph.cleanup(remove_unused_graph_inputs=False)
        return done

    def _one_dim_left(self, node: gs.Node, ctx: PassContext, values: dict[int, np.ndarray]) -> bool:
        """A Reshape target computed with one unknown dim and every other known and positive becomes a
        constant with -1 there: when the original runs, that dim is the element count over the rest,
        exactly what -1 computes (and the Shape/Gather/Concat arithmetic goes)."""
        if node.attrs.get("allowzero", 0) or isinstance(node.inputs[1], gs.Constant):
            return False
        target = self._known(node.inputs[1], values)
        if target is None or target.ndim != 1:
            return False
        unknown = [k for k, v in enumerate(target) if not isinstance(v, int)]
        if len(unknown) != 1 or any(isinstance(v, int) and v <= 0 for v in target):
            return False
        shape = np.array([v if isinstance(v, int) else -1 for v in target], np.int64)
        node.inputs[1] = ctx.constant(f"{node.name}_shape", shape)
        return True

    @staticmethod
    def _known(t: gs.Tensor, values: dict[int, np.ndarray]) -> np.ndarray | None:
        """The tracked value of ``t``: an object array of ints and None, or None when not tracked."""
        if id(t) in values:
            return values[id(t)]
        value = constant_value(t)
        if value is None or value.dtype.kind not in "iu" or value.size > 64:
            return None
        return np.array([int(v) for v in value.reshape(-1)], dtype=object).reshape(value.shape)

    def _value(self, node: gs.Node, values: dict[int, np.ndarray]) -> np.ndarray | None:
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
        ins = [self._known(t, values) if t.name else None for t in node.inputs]
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
        if not op_is(add, "Add") or len(add.inputs) != 2:
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
        add.outputs.clear()
        detach([node, add])
        write = Writer(ctx, node.name or y.name)
        flat = write.op("Reshape", [x, write.const("k", np.asarray([-1, k], np.int64))], dtype=x.dtype)
        gemm = write.op("Gemm", [flat, w, write.const("bias", bias.reshape(n))], dtype=out.dtype)
        write.op("Reshape", [gemm, write.const("shape", back)], out=out)
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
_ELEMENTWISE = tuple(_UNARY | _BINARY)


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
        if not op_is(start, *_ELEMENTWISE):
            return None
        nodes, stack, seen, first = [], [start], set(), None
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if not op_is(n, *_ELEMENTWISE) or len(n.outputs) != 1:
                return None
            nodes.append(n)
            for t in n.inputs:
                value = constant_value(t)
                if value is not None:
                    if value.size != 1:
                        return None  # a constant that broadcasts along an axis does not commute with a reshape
                    continue
                p = producer(t)
                if op_is(p, "Reshape"):
                    if first is not None and p is not first:
                        return None
                    first = p
                    continue
                if p is None:
                    return None
                stack.append(p)
        if first is None:
            return None
        region = [first, *nodes]
        if top in ctx.outputs or len(top.outputs) > 1 or any(n.outputs[0].name in protected for n in region):
            return None
        return None if contained(region, top, ctx.outputs) is not None else (first, nodes)


class TransposeChains(_NodeSimplification):
    name = "transpose-chains"
    ops = ("Transpose",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        before = producer(node.inputs[0])
        if not op_is(before, "Transpose"):
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


class SqueezeThroughTranspose(_NodeSimplification):
    name = "squeeze-through-transpose"
    ops = ("Squeeze",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        transpose = producer(node.inputs[0])
        if not op_is(transpose, "Transpose") or "perm" not in transpose.attrs:
            return False
        mid = transpose.outputs[0]
        if len(mid.outputs) != 1 or mid in ctx.outputs or mid.name in protected:
            return False
        perm = [int(v) for v in transpose.attrs["perm"]]
        axes_t = node.inputs[1] if len(node.inputs) > 1 else None
        axes = constant_value(axes_t) if axes_t is not None else node.attrs.get("axes")
        dims = transpose.inputs[0].shape
        if axes is None or dims is None or len(dims) != len(perm):
            return False
        squeezed = sorted({int(a) % len(perm) for a in np.asarray(axes).reshape(-1)})
        source_axes = sorted(perm[k] for k in squeezed)
        if any(dims[a] != 1 for a in source_axes):
            return False
        kept = [perm[k] for k in range(len(perm)) if k not in squeezed]
        renumber = {a: i for i, a in enumerate(sorted(kept))}
        source, out = transpose.inputs[0], node.outputs[0]
        node.outputs.clear()
        detach([node, transpose])
        write = Writer(ctx, node.name)
        axes_c = write.const("axes", np.asarray(source_axes, np.int64))
        inner = write.op("Squeeze", [source, axes_c], dtype=out.dtype)
        write.op("Transpose", [inner], {"perm": [renumber[a] for a in kept]}, out=out)
        return True


class ConstantIf(_NodeSimplification):
    name = "constant-if"
    ops = ("If",)

    def apply(self, node: gs.Node, ctx: PassContext, protected: set[str]) -> bool:
        cond = constant_value(node.inputs[0]) if node.inputs else None
        if cond is None or cond.size != 1:
            return False
        branch = node.attrs.get("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
        if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs) or branch.inputs:
            return False
        results = list(branch.outputs)
        outs = list(node.outputs)
        node.outputs.clear()
        detach([node])
        for inner in list(branch.nodes):
            ctx.add_node(inner)
        made_here = {id(t) for n in branch.nodes for t in n.outputs}
        for out, result in zip(outs, results, strict=True):
            if out in ctx.outputs and id(result) in made_here and out.name not in protected:
                # The branch's own result takes the output's place and name: no Identity needed.
                ctx.graph.outputs[[o is out for o in ctx.graph.outputs].index(True)] = result
                ctx.outputs.replace(out, result)
                result.name = out.name
                continue
            if out in ctx.outputs or out.name in protected or result is out:
                Writer(ctx, f"{out.name}/taken").op("Identity", [result], out=out)
                continue
            _redirect(out, result)
        return True
