"""The claims of ``int8/kernels.py`` checked against the installed onnxruntime: which ops its CPU provider
runs in int8 from a DQ -> op -> Q group, and that no normalization op is one of them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx.int8.engine import deployed_ops
from normonnx.int8.kernels import NORMALIZATION_OPS, ORT_CPU_INT8


def _qdq_around(op: str, extra: list[tuple[str, np.ndarray]], quantized_extra: bool = False, **attrs) -> bytes:
    """x -> Q -> DQ -> op -> Q -> DQ -> y, with ``op``'s other inputs constants: float, or stored in uint8
    behind a DequantizeLinear (as onnxruntime's quantizer writes a weight)."""
    scale, zero = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z")
    inits = [scale, zero]
    nodes, names = [], []
    for n, v in extra:
        if quantized_extra:
            inits.append(numpy_helper.from_array(np.clip(np.round(v / 0.05) + 128, 0, 255).astype(np.uint8), n))
            nodes.append(helper.make_node("DequantizeLinear", [n, "s", "z"], [f"{n}_d"]))
            names.append(f"{n}_d")
        else:
            inits.append(numpy_helper.from_array(v, n))
            names.append(n)
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node(op, ["xd", *names], ["t"], name="target", domain=DOMAINS.get(op, ""), **attrs),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports).SerializeToString()


def _float_ops(model: bytes) -> set[str]:
    return {op for _, op, in_float in deployed_ops(model) if in_float}


rng = np.random.default_rng(0)
C = 4
DOMAINS: dict[str, str] = {}  # onnxruntime registers its SimplifiedLayerNormalization (RMSNorm) in onnx's domain
NORMALIZATIONS = {
    "SimplifiedLayerNormalization": [("g", np.ones(8, np.float32))],
    "BatchNormalization": [("g", np.ones(C, np.float32)), ("b", np.zeros(C, np.float32)),
                           ("m", np.zeros(C, np.float32)), ("v", np.ones(C, np.float32))],
    "InstanceNormalization": [("g", np.ones(C, np.float32)), ("b", np.zeros(C, np.float32))],
    "LayerNormalization": [("g", np.ones(8, np.float32)), ("b", np.zeros(8, np.float32))],
}  # fmt: skip


@pytest.mark.parametrize("op", sorted(NORMALIZATIONS))
def test_no_normalization_runs_in_int8_on_the_cpu(op):
    """Every normalization op onnxruntime runs here, between a DequantizeLinear and a QuantizeLinear, still
    computes in float (GroupNormalization-21 and RMSNormalization-23 have no CPU kernel in this onnxruntime)."""
    assert op in NORMALIZATION_OPS
    assert op in _float_ops(_qdq_around(op, NORMALIZATIONS[op])), (
        f"onnxruntime now runs {op} in int8: update kernels.py"
    )


# Ops the table calls int8, each as onnxruntime's quantizer writes it: (quantized constant inputs, attributes).
INT8_CASES = {
    "Conv": ([("w", rng.standard_normal((C, C, 3, 3)).astype(np.float32))], {"pads": [1, 1, 1, 1]}),
    "Add": ([("k", rng.standard_normal((1, C, 1, 1)).astype(np.float32))], {}),
    "Mul": ([("k", rng.standard_normal((1, C, 1, 1)).astype(np.float32))], {}),
    "MatMul": ([("w", rng.standard_normal((8, 8)).astype(np.float32))], {}),
    "AveragePool": ([], {"kernel_shape": [2, 2]}),
    "GlobalAveragePool": ([], {}),
    "Sigmoid": ([], {}),
    "LeakyRelu": ([], {}),
}


@pytest.mark.parametrize("op", sorted(INT8_CASES))
def test_ops_the_table_calls_int8_run_in_int8(op):
    """Between a DequantizeLinear and a QuantizeLinear, onnxruntime's CPU provider replaces the op by an int8
    kernel: no float op of that type is left in the deployed graph."""
    extra, attrs = INT8_CASES[op]
    model = _qdq_around(op, extra, quantized_extra=True, **attrs)
    assert op in ORT_CPU_INT8
    deployed = {o for _, o, _ in deployed_ops(model)}
    assert op not in deployed and op not in _float_ops(model), f"{op} left as a float op: {deployed}"
