"""graph/bridge.py: renames reach into control-flow bodies; constants on disk are read, not pinned."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from normonnx.graph.bridge import rename_inputs
from tests.builders import run_model


def _if_model() -> onnx.ModelProto:
    """y = If(cond, then: x + 1, else: x * 2), the bodies reading the outer input x."""
    f = onnx.TensorProto.FLOAT
    one = helper.make_tensor("one", f, [], [1.0])
    two = helper.make_tensor("two", f, [], [2.0])
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["c1"], value=one), helper.make_node("Add", ["x", "c1"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", f, [2])],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["c2"], value=two), helper.make_node("Mul", ["x", "c2"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", f, [2])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("x", f, [2]), helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_renamed_inputs_are_renamed_inside_if_bodies():
    model = _if_model()
    renamed = rename_inputs(model, ["pixels", "flag"])
    onnx.checker.check_model(renamed, full_check=True)
    assert [i.name for i in renamed.graph.input] == ["pixels", "flag"]
    bodies = [a.g for a in renamed.graph.node[0].attribute]
    assert all("x" not in n.input for b in bodies for n in b.node)
    x = np.array([1.5, -2.0], np.float32)
    for cond, expected in ((True, x + 1), (False, x * 2)):
        out = run_model(renamed, {"pixels": x, "flag": np.array(cond)})
        np.testing.assert_array_equal(out["y"], expected)


def test_a_name_already_taken_moves_out_of_the_way():
    model = _if_model()
    renamed = rename_inputs(model, ["y", "cond"])  # the output is called y: it must move
    onnx.checker.check_model(renamed, full_check=True)
    assert [i.name for i in renamed.graph.input] == ["y", "cond"]
    assert renamed.graph.output[0].name != "y"
    x = np.array([3.0, 4.0], np.float32)
    out = run_model(renamed, {"y": x, "cond": np.array(False)})
    np.testing.assert_array_equal(next(iter(out.values())), x * 2)
