"""graph/bridge.py: renames reach into control-flow bodies; constants on disk are read, not pinned;
nothing graphsurgeon drops (node and graph metadata, node doc strings) is lost on the way through it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from normonnx.graph.bridge import (
    inherit_metadata,
    node_metadata,
    prepare_graph,
    rename_inputs,
    to_graph,
    to_model,
)
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


F = onnx.TensorProto.FLOAT
SCOPES = "pkg.torch.onnx.name_scopes"


def _tag(proto: onnx.NodeProto | onnx.GraphProto, tag: str) -> None:
    """Metadata and a doc string of its own on a node or graph (the torch exporter writes scopes so)."""
    proto.metadata_props.add(key=SCOPES, value=repr(["", tag, proto.name]))
    proto.metadata_props.add(key="tag", value=tag)
    proto.doc_string = f"doc of {tag}"


def _annotated_model() -> onnx.ModelProto:
    """x -> Neg -> Relu -> Abs -> If(cond); the then body holds another If (bodies two deep). Every node
    and every graph carries metadata and a doc string of its own."""
    deep_then = helper.make_graph([helper.make_node("Add", ["a", "a"], ["u"], name="deep_add")], "deep_then", [],
                                  [helper.make_tensor_value_info("u", F, [2])])  # fmt: skip
    deep_else = helper.make_graph([helper.make_node("Mul", ["a", "a"], ["v"], name="deep_mul")], "deep_else", [],
                                  [helper.make_tensor_value_info("v", F, [2])])  # fmt: skip
    inner = helper.make_node("If", ["cond"], ["t"], name="inner_if", then_branch=deep_then, else_branch=deep_else)
    then = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("t", F, [2])])
    other = helper.make_graph([helper.make_node("Sqrt", ["a"], ["e"], name="else_sqrt")], "else", [],
                              [helper.make_tensor_value_info("e", F, [2])])  # fmt: skip
    nodes = [
        helper.make_node("Neg", ["x"], ["n"], name="neg"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Abs", ["r"], ["a"], name="abs"),
        helper.make_node("If", ["cond"], ["y"], name="outer_if", then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes, "main",
        [helper.make_tensor_value_info("x", F, [2]), helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", F, [2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for g in _all_graphs(model.graph):
        _tag(g, f"graph {g.name}")
        for node in g.node:
            _tag(node, node.name)
    model.metadata_props.add(key="model", value="kept")
    model.doc_string = "the model's doc"
    return model


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(a.g)


def _entries(model: onnx.ModelProto) -> dict[str, tuple[str, dict[str, str]]]:
    """Node or graph name -> (doc string, metadata), at any depth."""
    out = {}
    for g in _all_graphs(model.graph):
        out[f"graph {g.name}"] = (g.doc_string, {p.key: p.value for p in g.metadata_props})
        for n in g.node:
            out[n.name] = (n.doc_string, {p.key: p.value for p in n.metadata_props})
    return out


def _expected(model: onnx.ModelProto, *, without: tuple[str, ...] = ()) -> dict[str, tuple[str, dict[str, str]]]:
    """What each node and graph was given by ``_tag`` (written out, not read back from the model)."""
    out = {}
    for g in _all_graphs(model.graph):
        tag = f"graph {g.name}"
        out[tag] = (f"doc of {tag}", {SCOPES: repr(["", tag, g.name]), "tag": tag})
        for n in g.node:
            if n.name not in without:
                out[n.name] = (f"doc of {n.name}", {SCOPES: repr(["", n.name, n.name]), "tag": n.name})
    return out


def test_node_and_graph_metadata_survive_the_round_trip_at_any_depth():
    model = _annotated_model()
    out = to_model(to_graph(model), model)
    onnx.checker.check_model(out, full_check=True)
    assert _entries(out) == _expected(model)
    assert {p.key: p.value for p in out.metadata_props} == {"model": "kept"}
    assert out.doc_string == "the model's doc"


def test_metadata_follows_its_node_through_reordering_and_cleanup():
    """Nothing is matched by position: the nodes are sorted from reverse order, one is removed."""
    model = _annotated_model()
    graph = prepare_graph(model)
    by_name = {n.name: n for n in graph.nodes}
    by_name["abs"].inputs[0] = by_name["neg"].outputs[0]  # Relu is bypassed, then cleaned up
    by_name["relu"].outputs.clear()
    graph.nodes.reverse()
    out = to_model(graph, model, sort=True)
    onnx.checker.check_model(out, full_check=True)
    assert [n.name for n in out.graph.node] == ["neg", "abs", "outer_if"]
    assert _entries(out) == _expected(model, without=("relu",))
    x = np.array([-1.0, 4.0], np.float32)
    np.testing.assert_allclose(run_model(out, {"x": x, "cond": np.array(False)})["y"], np.sqrt(np.abs(-x)))


def test_renamed_nodes_and_inputs_keep_their_metadata():
    model = _annotated_model()
    graph = to_graph(model)
    graph.nodes[0].name = "negate"
    out = to_model(graph, model)
    assert _entries(out)["negate"] == _expected(model)["neg"]
    renamed = rename_inputs(model, ["pixels", "flag"])
    assert _entries(renamed) == _expected(model)


def test_node_metadata_reads_what_the_exporter_recorded():
    graph = to_graph(_annotated_model())
    relu = next(n for n in graph.nodes if n.name == "relu")
    assert node_metadata(relu) == {SCOPES: repr(["", "relu", "relu"]), "tag": "relu"}
    assert node_metadata(gs.Node("Relu", name="made")) == {}


def test_new_nodes_inherit_their_anchors_metadata_and_keep_their_own():
    model = _annotated_model()
    graph = to_graph(model)
    by_name = {n.name: n for n in graph.nodes}
    anchor, own = by_name["relu"], by_name["neg"]
    made = gs.Node("Identity", name="made", inputs=[anchor.outputs[0]], outputs=[gs.Variable("m", F, [2])])
    graph.nodes.append(made)
    inherit_metadata([made, own, anchor], anchor)
    assert node_metadata(made) == node_metadata(anchor) == {SCOPES: repr(["", "relu", "relu"]), "tag": "relu"}
    assert node_metadata(own) == {SCOPES: repr(["", "neg", "neg"]), "tag": "neg"}
    graph.outputs.append(made.outputs[0])
    out = to_model(graph, model)
    written = next(n for n in out.graph.node if n.name == "made")
    assert {p.key: p.value for p in written.metadata_props} == {SCOPES: repr(["", "relu", "relu"]), "tag": "relu"}
    assert written.doc_string == ""  # a doc string describes the anchor itself
    assert _entries(out)["relu"] == _expected(model)["relu"]


def test_an_anchor_without_metadata_gives_none():
    made = gs.Node("Identity", name="made")
    inherit_metadata([made], gs.Node("Relu", name="bare"))
    assert node_metadata(made) == {}


def test_value_info_and_local_functions_keep_their_metadata():
    model = _annotated_model()
    vi = helper.make_tensor_value_info("n", F, [2], doc_string="negated")
    vi.metadata_props.add(key="vi", value="n")
    model.graph.value_info.append(vi)
    out = to_model(to_graph(model), model)
    kept = next(v for v in out.graph.value_info if v.name == "n")
    assert kept.doc_string == "negated" and {p.key: p.value for p in kept.metadata_props} == {"vi": "n"}

    body = helper.make_node("Relu", ["i"], ["o"], name="fn_relu", doc_string="inside")
    body.metadata_props.add(key=SCOPES, value="['', 'fn', 'relu']")
    fn = helper.make_function("local", "Twice", ["i"], ["o"], [body], [helper.make_opsetid("", 17)])
    fn.metadata_props.add(key="fn", value="twice")
    call = helper.make_node("Twice", ["x"], ["y"], name="call", domain="local")
    io = [helper.make_tensor_value_info(name, F, [2]) for name in ("x", "y")]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(helper.make_graph([call], "g", io[:1], io[1:]), functions=[fn], opset_imports=opsets)
    out = to_model(to_graph(model), model)
    onnx.checker.check_model(out, full_check=True)
    (written,) = out.functions
    assert {p.key: p.value for p in written.metadata_props} == {"fn": "twice"}
    assert written.node[0].doc_string == "inside"
    assert {p.key: p.value for p in written.node[0].metadata_props} == {SCOPES: "['', 'fn', 'relu']"}


def test_onnx_version_converter_keeps_the_metadata():
    from normonnx.graph.opsets import convert_opset

    model = _annotated_model()
    out = convert_opset(model, 18)
    assert _entries(out) == _expected(model)


def _conv_bn_relu() -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Relu, each node with the scopes the dynamo exporter writes."""
    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.3).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(rng.uniform(lo, hi, c).astype(np.float32), name)
              for name, lo, hi in (("s", 0.5, 1.5), ("b", -0.3, 0.3), ("m", -0.2, 0.2), ("v", 0.5, 2.0))]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="node_conv2d", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="node_batch_norm"),
        helper.make_node("Relu", ["bn"], ["y"], name="node_relu"),
    ]
    for node, scope in zip(nodes, ("block.conv", "block.bn", "block.act"), strict=True):
        node.metadata_props.add(key=SCOPES, value=repr(["", "block", scope, node.name]))
        node.doc_string = f"from {scope}"
    shape = [1, c, 6, 6]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, shape)],
                              [helper.make_tensor_value_info("y", F, shape)], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_keeps_the_surviving_convs_metadata():
    from normonnx.pipelines.fold import fold
    from normonnx.validate.scopes import module_path

    folded, _ = fold(_conv_bn_relu())
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    conv, relu = folded.graph.node
    assert {p.key: p.value for p in conv.metadata_props} == {SCOPES: repr(["", "block", "block.conv", "node_conv2d"])}
    assert conv.doc_string == "from block.conv"
    assert module_path(conv) == "block.conv" and module_path(relu) == "block.act"


def test_export_writes_what_graphsurgeons_exporter_writes():
    """to_model writes each weight into the model once, not through graphsurgeon's exporter (which copies
    a new weight four times): the graph it writes is still, field for field, what ``export_onnx`` writes,
    for stored weights, a replaced one, new ones of every plain dtype and one graphsurgeon converts itself."""
    from normonnx.graph.bridge import _export
    from tests.conftest import conv_bn_model

    model = conv_bn_model()
    graph = to_graph(model)
    stored = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    stored[0].values = np.asarray(stored[0].values) * 2  # a weight a fold replaced
    extra = {
        "i64": np.arange(3, dtype=np.int64),
        "flag": np.array([True, False]),
        "half": np.ones((2, 2), np.float16),
        "complex": np.array([1 + 2j], np.complex64),
    }
    for name, value in extra.items():  # each read by an Identity whose output is a graph output
        result = gs.Variable(f"{name}_out", dtype=value.dtype, shape=list(value.shape))
        graph.nodes.append(gs.Node("Identity", inputs=[gs.Constant(name, value)], outputs=[result]))
        graph.outputs.append(result)

    ours, theirs = _export(graph), gs.export_onnx(graph, do_type_check=False)
    assert ours.graph == theirs.graph
    assert list(ours.opset_import) == list(theirs.opset_import)
    replaced = next(t for t in ours.graph.initializer if t.name == stored[0].name)
    np.testing.assert_array_equal(
        numpy_helper.to_array(replaced), 2 * numpy_helper.to_array(model.graph.initializer[0])
    )


def test_export_writes_if_bodies_as_graphsurgeon_does():
    from normonnx.graph.bridge import _export

    model = _if_model()
    graph = to_graph(model)
    assert _export(graph).graph == gs.export_onnx(graph, do_type_check=False).graph
    written = to_model(graph, model)
    onnx.checker.check_model(written, full_check=True)
    x = np.array([1.5, -2.0], np.float32)
    for cond, expected in ((True, x + 1), (False, x * 2)):
        np.testing.assert_array_equal(run_model(written, {"x": x, "cond": np.array(cond)})["y"], expected)
