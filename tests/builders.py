"""Tiny ONNX graphs for tests, built in a few lines each."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normonnx.results import ParityResult
from normonnx.validate.parity import Gate
from normonnx.validate.verify import verify_parity

_counter = itertools.count()


class GraphBuilder:
    """Append nodes; every tensor is named automatically unless named explicitly."""

    def __init__(self, opset: int = 17, ir_version: int = 8, dtype=np.float32) -> None:
        self.opset, self.ir_version, self.dtype = opset, ir_version, np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.custom_domains: list[str] = []

    def input(self, name: str, shape, dtype=None) -> str:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype or self.dtype))
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def const(self, array, name: str | None = None) -> str:
        name = name or f"c{next(_counter)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, array, name: str | None = None) -> str:
        return self.const(np.asarray(array, dtype=self.dtype), name)

    def node(self, op: str, inputs, n_out: int = 1, name: str | None = None, outputs=None, **attrs):
        k = next(_counter)
        outs = outputs or [f"{op.lower()}{k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name or f"{op.lower()}_{k}", **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, name: str, shape=None, dtype=None) -> None:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype or self.dtype))
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self) -> onnx.ModelProto:
        """The model; outputs declared without a shape get the inferred one."""
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.inits)
        imports = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in self.custom_domains]
        m = helper.make_model(graph, opset_imports=imports)
        m.ir_version = self.ir_version
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m, strict_mode=False).graph.output}
        for out in m.graph.output:
            if not out.type.tensor_type.HasField("shape") and out.name in inferred:
                out.CopyFrom(inferred[out.name])
        return m

    # common blocks ---------------------------------------------------------------
    def batchnorm(self, x: str, channels: int, rng, name: str | None = None, eps: float = 1e-5, **attrs) -> str:
        gamma, beta, mean, var = bn_params(channels, rng, self.dtype)
        ins = [x, self.const(gamma), self.const(beta), self.const(mean), self.const(var)]
        return self.node("BatchNormalization", ins, name=name, epsilon=eps, **attrs)

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        rng,
        k: int = 3,
        group: int = 1,
        bias: bool = True,
        name: str | None = None,
        dims: int = 2,
        **attrs,
    ) -> str:
        w = self.weight(rng.standard_normal((cout, cin // group) + (k,) * dims) * 0.2)
        ins = [x, w] + ([self.weight(rng.standard_normal(cout) * 0.1)] if bias else [])
        return self.node("Conv", ins, name=name, group=group, **attrs)


def bn_params(channels: int, rng, dtype=np.float32):
    """Non-trivial statistics: a fold bug cannot hide behind mean 0 / var 1."""
    gamma = rng.uniform(0.5, 2.0, channels)
    beta = rng.standard_normal(channels)
    mean = rng.standard_normal(channels)
    var = rng.uniform(0.2, 3.0, channels)
    return [np.asarray(a, dtype=dtype) for a in (gamma, beta, mean, var)]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def feeds_for(model: onnx.ModelProto, seed: int = 0, shapes=None):
    from normonnx.validate.inputs import seeded_input_sets

    return seeded_input_sets(model, 3, shapes, seed)


def parity(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, gate: Gate | None = None, shapes=None
) -> ParityResult:
    """Both models on ORT CPU, optimizations off, three seeded inputs, no noise-floor leniency."""
    return verify_parity(reference, candidate, shapes=shapes, gate=gate, noise_floor=False)


def assert_parity(reference, candidate, gate: Gate | None = None, shapes=None) -> ParityResult:
    result = parity(reference, candidate, gate, shapes)
    assert result.passed, [(o.name, o.max_abs, o.threshold, o.reason) for o in result.outputs]
    return result


def apply(model: onnx.ModelProto, *passes, options=None):
    """Run the given rules once each, in order, the way fold does; return (model, ctx)."""
    from normonnx.graph.bridge import prepare_graph, to_model
    from normonnx.passes import FoldOptions, PassContext, run_rule

    graph = prepare_graph(model)
    ctx = PassContext(graph, options or FoldOptions())
    for p in passes:
        run_rule(p, ctx)
    return to_model(graph, model), ctx


def refusals(ctx) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in ctx.decisions:
        if not d.folded:
            out.setdefault(d.node, []).append(d.detail)
    return out


def folded(ctx) -> dict[str, str]:
    return {d.node: d.detail for d in ctx.decisions if d.folded}


def reduce_mean(b: GraphBuilder, x: str, axes) -> str:
    """ReduceMean with axes as an attribute (opset < 18) or an input (opset >= 18)."""
    if b.opset >= 18:
        return b.node("ReduceMean", [x, b.const(np.array(axes, np.int64))])
    return b.node("ReduceMean", [x], axes=list(axes))


def decomposed_norm(
    b: GraphBuilder,
    x: str,
    axes,
    *,
    centered: bool = True,
    eps: float = 1e-5,
    inverse: str = "div",
    square: str = "pow",
    eps_in_std: bool = False,
) -> str:
    """The normalization core as exporters write it; ``inverse`` is div | reciprocal | pow."""
    dt = b.dtype
    d = b.node("Sub", [x, reduce_mean(b, x, axes)]) if centered else x
    sq = b.node("Pow", [d, b.const(np.array(2.0, dt))]) if square == "pow" else b.node("Mul", [d, d])
    var = reduce_mean(b, sq, axes)
    eps_c = b.const(np.array(eps, dt))
    if eps_in_std:
        den = b.node("Add", [b.node("Sqrt", [var]), eps_c])
        return b.node("Div", [d, den], name="norm")
    ve = b.node("Add", [var, eps_c])
    if inverse == "div":
        return b.node("Div", [d, b.node("Sqrt", [ve])], name="norm")
    if inverse == "reciprocal":
        return b.node("Mul", [d, b.node("Reciprocal", [b.node("Sqrt", [ve])])], name="norm")
    return b.node("Mul", [d, b.node("Pow", [ve, b.const(np.array(-0.5, dt))])], name="norm")


def run_model(model: onnx.ModelProto, feeds: dict) -> dict:
    """One run on onnxruntime CPU (graph optimizations off): {output name: array}."""
    from normonnx.validate.runners import RunOptions

    return RunOptions().runner(model).infer([feeds])[0]
