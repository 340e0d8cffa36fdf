"""Evaluate a set of constant nodes once, exactly as a runtime would.

The nodes are exported to a small model without inputs and run on
onnxruntime (CPU, graph optimizations off) in a shared isolated child, so a
kernel that crashes cannot take normonnx down; what onnxruntime cannot run (for
example BatchNormalization with training_mode=1 and one output, which timm's
StdConv2d exports) goes to onnx's reference evaluator instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.errors import first_line
from normonnx.graph.bridge import tensor_proto

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Neither onnxruntime nor the reference evaluator could compute the nodes."""


def _build_model(
    nodes: Sequence[onnx.NodeProto],
    leaves: Sequence[gs.Constant],
    outputs: Sequence[gs.Tensor],
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
) -> onnx.ModelProto:
    graph = onnx.GraphProto(name="normonnx_constant_subgraph")
    graph.node.extend(nodes)
    graph.initializer.extend(tensor_proto(leaf) for leaf in leaves)
    for t in outputs:
        graph.output.append(onnx.ValueInfoProto(name=t.name))
    model = onnx.helper.make_model(graph, opset_imports=list(opset_imports))
    model.ir_version = max(ir_version, 7)
    return model


def run_on_onnxruntime(model_bytes: bytes) -> list[np.ndarray]:
    """The model's outputs on onnxruntime CPU, optimizations off (runs in an isolated child)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {})


def _run_onnxruntime(model: onnx.ModelProto) -> list[np.ndarray]:
    from normonnx.isolation import call_in_shared_worker

    return call_in_shared_worker(run_on_onnxruntime, model.SerializeToString(), label="constant evaluation")


def _run_reference(model: onnx.ModelProto) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {})


def _moved_only(
    nodes: Sequence[onnx.NodeProto], leaves: Sequence[gs.Constant], outputs: Sequence[gs.Tensor]
) -> list[np.ndarray] | None:
    """The outputs, here, when every node only moves data (Identity, Transpose): no arithmetic, so numpy
    gives the very bytes a runtime would, without a process for it (TorchScript exports share weights
    through Identity nodes). None when any node computes."""
    if not all(n.op_type in ("Identity", "Transpose") and n.domain in ("", "ai.onnx") for n in nodes):
        return None
    values = {leaf.name: np.asarray(leaf.values) for leaf in leaves}
    for node in nodes:
        x = values.get(node.input[0])
        if x is None:
            return None
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            x = np.ascontiguousarray(np.transpose(x, perm))
        values[node.output[0]] = x
    if not all(t.name in values for t in outputs):
        return None
    return [values[t.name] for t in outputs]


def evaluate_protos(
    nodes: Sequence[onnx.NodeProto],
    leaves: Sequence[gs.Constant],
    outputs: Sequence[gs.Tensor],
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int = 8,
) -> list[np.ndarray]:
    """Values of ``outputs``, computed by ``nodes`` (topologically ordered) from the initializers ``leaves``."""
    moved = _moved_only(nodes, leaves, outputs)
    if moved is not None:
        return moved
    model = _build_model(nodes, leaves, outputs, opset_imports, ir_version)
    errors = []
    for runner in (_run_onnxruntime, _run_reference):
        try:
            return [np.asarray(v) for v in runner(model)]
        except Exception as e:  # either runtime may reject an op; try the other
            errors.append(f"{runner.__name__.lstrip('_')}: {first_line(e)}")
            log.debug("constant evaluation with %s failed: %s", runner.__name__, e)
    raise EvaluationError("; ".join(errors))
