"""Whether a model is already quantized, and how much quantization it carries."""

from __future__ import annotations

from collections import Counter

import onnx

from normonnx.graph.modelio import iter_nodes

# Ops that only exist in a quantized model: QDQ pairs, onnxruntime's QOperator kernels, integer GEMMs,
# dynamic and weight-only quantization.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def _is_quantized_op(op: str) -> bool:
    return op in _QUANTIZED_OPS or op.startswith(("QLinear", "QGemm", "MatMulNBits", "DynamicQuantize"))


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """The quantized ops of ``model`` (bodies included) and how many of each; empty for a float model."""
    return dict(sorted(Counter(n.op_type for n in iter_nodes(model.graph) if _is_quantized_op(n.op_type)).items()))


def qdq_count(model: onnx.ModelProto) -> int:
    """QuantizeLinear and DequantizeLinear nodes: the conversions a QDQ model carries."""
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in iter_nodes(model.graph))
