"""A rule written outside normonnx, in one file, runs through the public pass manager like normonnx's own:
its rewrites and refusals are recorded, undone works by anchor, and the model comes back checked."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from normonnx.graph.access import describe
from normonnx.graph.edit import bypass
from normonnx.passes import NO_FAMILY, FoldOptions, NodePlan, PassContext, Pipeline, Refusal, Stage


class ReluOfRelu:
    """Before: Relu(Relu(x)). After: Relu(x). Exact: Relu is idempotent. Refused when the inner
    Relu's output is a graph output (its name must stay)."""

    name = "relu-of-relu"
    ops = ("Relu",)

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        return node if inner is not None and inner.op == "Relu" else None

    def check(self, node: gs.Node, ctx: PassContext) -> NodePlan | Refusal:
        if node.inputs[0] in ctx.outputs:
            return Refusal(describe(node), NO_FAMILY, f"'{node.inputs[0].name}' is a graph output")
        return NodePlan(describe(node), NO_FAMILY, node)

    def rewrite(self, plan: NodePlan, ctx: PassContext) -> str:
        inner = plan.node.inputs[0]
        bypass(inner.inputs[0], inner.inputs[0].inputs[0])
        return "inner Relu removed"


def _model(inner_is_output: bool = False) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Neg", ["x"], ["n"], name="neg"),
        helper.make_node("Relu", ["n"], ["r1"], name="relu1"),
        helper.make_node("Relu", ["r1"], ["y"], name="relu2"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    if inner_is_output:
        outputs.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _pipeline() -> Pipeline:
    return Pipeline((Stage((ReluOfRelu(),)),))


def test_a_rule_from_a_test_file_runs_through_the_public_manager():
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    outcome = _pipeline().apply(model)
    assert [n.op_type for n in outcome.model.graph.node] == ["Neg", "Relu"]
    assert [n.op_type for n in model.graph.node] == ["Neg", "Relu", "Relu"]  # the caller's model is untouched
    (got,) = ReferenceEvaluator(outcome.model).run(None, {"x": x})
    np.testing.assert_array_equal(got, np.maximum(-x, 0))
    assert outcome.rewrites == {"relu-of-relu": 1}
    assert [(d.node, d.pass_name, d.folded, d.detail) for d in outcome.decisions] == [
        ("relu2", "relu-of-relu", True, "inner Relu removed")
    ]


def test_its_refusal_names_the_node_and_the_reason():
    outcome = _pipeline().apply(_model(inner_is_output=True))
    assert [n.op_type for n in outcome.model.graph.node] == ["Neg", "Relu", "Relu"]
    assert [(d.node, d.folded, d.detail) for d in outcome.decisions] == [("relu2", False, "'r1' is a graph output")]


def test_undone_leaves_its_rewrite_out_by_anchor():
    outcome = _pipeline().apply(_model(), FoldOptions(undone=frozenset({"relu2"})))
    assert [n.op_type for n in outcome.model.graph.node] == ["Neg", "Relu", "Relu"]
    assert not outcome.decisions[0].folded


class _BreaksTheGraph:
    """A faulty rule: it makes a node read a tensor nothing produces."""

    name = "breaks-the-graph"
    ops = ("Neg",)

    def match(self, node, ctx):
        return node

    def check(self, node, ctx):
        return NodePlan(describe(node), NO_FAMILY, node)

    def rewrite(self, plan, ctx):
        plan.node.inputs[0] = gs.Variable("nowhere", dtype=np.float32, shape=[2, 3])
        return "rewired to nothing"


def test_a_result_onnx_cannot_accept_is_an_error_not_a_model():
    from normonnx.errors import OutputError

    with pytest.raises(OutputError, match=r"fails onnx\.checker"):
        Pipeline((Stage((_BreaksTheGraph(),)),)).apply(_model())
