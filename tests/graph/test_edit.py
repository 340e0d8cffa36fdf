"""graph.edit's verbs for constants, outputs and dead nodes: what they rewire, and what they leave alone."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import GraphOutputs
from normonnx.graph.edit import cleanup, prune, replace_output, tidy, to_constant


def chain() -> tuple[gs.Graph, list[gs.Node], list[gs.Variable]]:
    """x -> Relu -> a -> Neg -> b -> Abs -> y (the graph output), and a Shape of a on the side."""
    x, a, b, y, s = (gs.Variable(n, np.float32) for n in ("x", "a", "b", "y", "s"))
    nodes = [
        gs.Node("Relu", "relu", inputs=[x], outputs=[a]),
        gs.Node("Neg", "neg", inputs=[a], outputs=[b]),
        gs.Node("Abs", "abs", inputs=[b], outputs=[y]),
        gs.Node("Shape", "shape", inputs=[a], outputs=[s]),
    ]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y]), nodes, [x, a, b, y, s]


def test_to_constant_keeps_the_readers_and_drops_the_producer():
    _, (relu, neg, *_), (_, a, *_) = chain()
    to_constant(a, np.ones(3, np.float32))
    assert isinstance(a, gs.Constant) and not a.inputs and not relu.outputs
    assert neg.inputs[0] is a


def test_replace_output_puts_the_new_tensor_in_place_under_the_old_name():
    graph, _, (_, _, b, y, _) = chain()
    replace_output(graph, y, b)
    assert graph.outputs == [b] and b.name == "y"


def test_prune_removes_what_only_fed_the_dead_node():
    graph, (relu, neg, abs_, shape), (_, _, b, _, s) = chain()
    to_constant(b, np.ones(3, np.float32))  # neg is left without outputs: relu still feeds the Shape
    prune([neg], GraphOutputs(graph))
    assert not neg.inputs and relu.outputs and abs_.inputs == [b]
    to_constant(s, np.array([3], np.int64))
    prune([shape], GraphOutputs(graph))
    assert not shape.inputs and not relu.inputs and not relu.outputs


def test_prune_keeps_a_node_whose_output_is_a_graph_output():
    graph, (*_, abs_, _), (_, _, _, y, _) = chain()
    prune([abs_], GraphOutputs(graph))
    assert abs_.outputs == [y] and y.inputs == [abs_]


def test_tidy_cleans_up_only_when_a_node_feeds_no_output():
    graph, (*_, shape), _ = chain()
    assert tidy(graph) and shape not in graph.nodes  # the Shape's output is read by nothing
    assert not tidy(graph) and len(graph.nodes) == 3


def test_cleanup_removes_dead_constant_nodes_without_formatting_them(monkeypatch):
    """graphsurgeon prints each node it removes into a log message; a dead Constant node's value would be
    printed too. The cleanup removes dead nodes itself first: graphsurgeon is left nothing to print."""
    graph, (*_, abs_, _), (*_, y, _) = chain()
    big = gs.Variable("big", np.float32)
    dead_constant = gs.Node("Constant", "dead", attrs={"value": gs.Constant("v", np.ones((64, 64), np.float32))},
                            outputs=[big])  # fmt: skip
    graph.nodes.append(dead_constant)
    printed = []
    monkeypatch.setattr(gs.Node, "__str__", lambda node: printed.append(node.name) or node.name)
    cleanup(graph)
    assert [n.name for n in graph.nodes] == ["relu", "neg", "abs"]
    assert printed == []
    assert not dead_constant.outputs and not big.inputs and y.inputs == [abs_]


def test_cleanup_keeps_what_an_if_body_reads_from_outside():
    """A tensor read only inside an If's branch (graphsurgeon lists the branch's node among its readers) stays."""
    graph, _, (*_, s) = chain()
    cond, out, inner = gs.Variable("cond", bool), gs.Variable("out", np.float32), gs.Variable("inner", np.float32)
    branch = gs.Graph(nodes=[gs.Node("Identity", inputs=[s], outputs=[inner])], outputs=[inner])
    graph.inputs.append(cond)
    graph.nodes.append(gs.Node("If", "if", inputs=[cond], outputs=[out],
                               attrs={"then_branch": branch, "else_branch": branch}))  # fmt: skip
    graph.outputs.append(out)
    cleanup(graph)
    assert "shape" in [n.name for n in graph.nodes]  # its output s is read only by the branch


def test_constant_value_with_a_bound_never_reads_a_larger_weight(monkeypatch):
    """Passes looking for shapes and scalars ask with a bound: a weight past it is not read (converted)."""
    from normonnx.graph import access

    read = []
    real = access.stored_values
    monkeypatch.setattr(access, "stored_values", lambda c: read.append(c.name) or real(c))
    weight, shape = gs.Constant("w", np.ones((256, 256), np.float32)), gs.Constant("s", np.array([2, 3], np.int64))
    assert access.constant_value(weight, max_elements=64) is None and read == []
    np.testing.assert_array_equal(access.constant_value(shape, max_elements=64), [2, 3])
    assert access.constant_value(weight).shape == (256, 256) and read == ["s", "w"]
