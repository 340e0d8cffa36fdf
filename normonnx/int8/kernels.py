"""What onnxruntime's CPU provider runs in int8, and therefore where a normalization belongs in an int8 model.

Source: onnxruntime/core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc
(``CreateSelectorActionRegistry``): the DQ -> op -> Q groups the CPU provider fuses into an int8 kernel or
drops the Q/DQ around. No rule there names BatchNormalization, LayerNormalization, InstanceNormalization,
GroupNormalization, RMSNormalization or SimplifiedLayerNormalization: on the CPU such a node runs in float
whether it is quantized or not. Quantized, it runs between a DequantizeLinear and a QuantizeLinear, with its
scale and bias rounded to 8 bits (onnxruntime's quantizer, operators/norm.py ``QDQNormalization``) -- cost
and error for nothing. So normonnx leaves every normalization it cannot fold in float. int8 activations
(S8S8) are fused on ARM only (``QDQIsInt8Allowed``): on x86, uint8 activations.

``tests/int8/test_kernels.py`` checks these claims against the installed onnxruntime on every run.
"""

from __future__ import annotations

from normonnx.families import BY_OP

# Ops the CPU provider fuses from DQ -> op -> Q into an int8 kernel (or runs on the int8 data, Q/DQ dropped).
ORT_CPU_INT8 = frozenset(
    {
        "Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "Where", "AveragePool", "GlobalAveragePool",
        "LeakyRelu", "Sigmoid", "Softmax", "ArgMax", "MaxPool", "Resize", "ReduceMax", "ReduceMin", "Split",
        "Expand", "Flatten", "Gather", "GatherElements", "Reshape", "Slice", "Squeeze", "Tile", "Transpose",
        "Unsqueeze",
    }
)  # fmt: skip

NORMALIZATION_OPS = frozenset({*BY_OP, "SimplifiedLayerNormalization", "SkipLayerNormalization"})


def why_float(op: str, form: str) -> str:
    """Why normonnx leaves a normalization (standard ``op`` or a decomposed ``form``) in float for ort-cpu."""
    if form == "op":
        return (
            f"onnxruntime's CPU provider has no int8 kernel for {op}: quantized, it would run in float between"
            " a DequantizeLinear and a QuantizeLinear, with its scale and bias rounded to 8 bits"
        )
    return f"a decomposed {op}: its mean and variance stay in float (8 bits cannot hold a variance)"
