"""Exact simplifications other tools make and a deployed model should have: what onnxsim and
onnxslim do to other exporters' files, done here so that a fold's output is never slower than theirs.

* ``pad-into-conv``: ``Pad(x, constant 0, spatial pads) -> Conv`` becomes one Conv with the pads
  added to its own (AveragePool too, when it counts padding); tf2onnx and paddle2onnx write them.
* ``identity-arithmetic``: ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` whose constant cannot change
  x's shape by broadcasting (every dim 1 and rank no higher, or x's static shape) go away.
* ``reshape-chains``: a Reshape to a constant shape reads through the Reshape / Flatten / Squeeze /
  Unsqueeze before it (they only relabel the same elements in the same order), and a Reshape to the
  shape its input already has goes away.

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


class ReshapeChains:
    name = "reshape-chains"

    def run(self, ctx: PassContext) -> int:
        protected = _names_read_by_bodies(ctx.graph)
        done = 0
        for node in list(ctx.graph.nodes):
            if not node.outputs or not op_is(node, "Reshape") or not _default_domain(node) or len(node.inputs) < 2:
                continue
            target = constant_value(node.inputs[1])
            if target is None or (np.any(target == 0) and not node.attrs.get("allowzero", 0)):
                continue  # a 0 copies a dim of the input it reads: reading through would change it
            before = producer(node.inputs[0])
            if before is not None and before.op in _RELABELLING and _default_domain(before) and before.outputs:
                node.inputs[0] = before.inputs[0]
                done += 1
                continue
            shape, want = static_shape(node.inputs[0]), static_shape(node.outputs[0])
            if (
                shape is not None
                and want is not None
                and list(shape) == list(want)
                and _bypass(node, node.inputs[0], ctx, protected)
            ):
                done += 1
        if done:
            ctx.graph.cleanup(remove_unused_graph_inputs=False)
        return done
