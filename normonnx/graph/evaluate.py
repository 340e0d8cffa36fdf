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


def _run_onnxruntime(model: onnx.ModelProto) -> list[np.ndarray]:
    from normonnx.graph.constant_run import run_on_onnxruntime
    from normonnx.isolation import call_in_shared_worker

    return call_in_shared_worker(run_on_onnxruntime, model.SerializeToString(), label="constant evaluation")


def _run_reference(model: onnx.ModelProto) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {})


_MOVES = ("Identity", "Transpose")  # ops that only move data: numpy gives the very bytes a runtime would


def _move(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return np.ascontiguousarray(np.transpose(x, perm))
    return x


def _moved_here(
    nodes: Sequence[onnx.NodeProto], leaves: Sequence[gs.Constant]
) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """(values computed here, the nodes left to a runtime). Identity and Transpose of values at hand are
    computed here: no arithmetic, and no weight sent to a process and back for it (TorchScript exports
    share weights through Identity nodes, and transpose every Linear's weight)."""
    values = {leaf.name: np.asarray(leaf.values) for leaf in leaves}
    rest = []
    for node in nodes:
        if node.op_type in _MOVES and node.domain in ("", "ai.onnx") and node.input[0] in values:
            values[node.output[0]] = _move(node, values[node.input[0]])
        else:
            rest.append(node)
    return values, rest


def evaluate_protos(
    nodes: Sequence[onnx.NodeProto],
    leaves: Sequence[gs.Constant],
    outputs: Sequence[gs.Tensor],
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int = 8,
) -> list[np.ndarray]:
    """Values of ``outputs``, computed by ``nodes`` (topologically ordered) from the initializers ``leaves``."""
    values, rest = _moved_here(nodes, leaves)
    wanted = [t for t in outputs if t.name not in values]
    if wanted:
        needed = {name for n in rest for name in n.input if name}
        inputs = [gs.Constant(name, values[name]) for name in sorted(needed & set(values))]
        model = _build_model(rest, inputs, wanted, opset_imports, ir_version)
        values.update(zip((t.name for t in wanted), _run_elsewhere(model), strict=True))
    return [values[t.name] for t in outputs]


def _run_elsewhere(model: onnx.ModelProto) -> list[np.ndarray]:
    """The model's outputs from onnxruntime (in the warm worker), else from onnx's reference evaluator."""
    errors = []
    for runner in (_run_onnxruntime, _run_reference):
        try:
            return [np.asarray(v) for v in runner(model)]
        except Exception as e:  # either runtime may reject an op; try the other
            errors.append(f"{runner.__name__.lstrip('_')}: {first_line(e)}")
            log.debug("constant evaluation with %s failed: %s", runner.__name__, e)
    raise EvaluationError("; ".join(errors))
