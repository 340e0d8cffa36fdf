"""graph/shapes.py: the model shape inference sees keeps every small constant and every constant stored in
onnx's typed fields (shape operands, which data propagation reads), and only the type of large raw weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normonnx.graph.shapes import inferred


def _reshape_by_a_sliced_shape(typed: bool) -> onnx.ModelProto:
    """y = Reshape(x, Slice(table, 0, 3)): a 600-entry int64 table whose first three entries are y's shape."""
    table = np.arange(600, dtype=np.int64)
    table[:3] = [1, 4, 64]
    if typed:
        shape_table = helper.make_tensor("table", onnx.TensorProto.INT64, [600], table.tolist())  # int64_data
    else:
        shape_table = numpy_helper.from_array(table, "table")  # raw_data, 4800 bytes: only its type is kept
    starts, ends = numpy_helper.from_array(np.array([0]), "starts"), numpy_helper.from_array(np.array([3]), "ends")
    nodes = [
        helper.make_node("Slice", ["table", "starts", "ends"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [shape_table, starts, ends],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dims(graph: onnx.GraphProto, name: str) -> list:
    (vi,) = [v for v in [*graph.output, *graph.value_info] if v.name == name]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_a_shape_table_in_typed_fields_is_kept_for_data_propagation():
    assert _dims(inferred(_reshape_by_a_sliced_shape(typed=True)), "y") == [1, 4, 64]


def test_a_large_raw_weight_is_kept_by_its_type_only():
    dims = _dims(inferred(_reshape_by_a_sliced_shape(typed=False)), "y")
    assert len(dims) == 3 and dims != [1, 4, 64]  # its values were not there to propagate
