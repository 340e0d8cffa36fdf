"""The simplification rules (pad_into_conv.py, identity_arithmetic.py, ...): each removes what it says and
changes no output; what is not exact stays, and says why where that helps."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.passes import NO_FAMILY, FoldOptions
from normonnx.pipelines.fold import fold
from tests.builders import GraphBuilder, assert_parity, op_types, run_model
from tests.helpers import rng


def padded_conv(mode: str = "constant", value: float = 0.0, pads=(0, 0, 1, 2, 0, 0, 2, 1), opset: int = 17):
    r = rng()
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 3, 8, 8])
    inputs = [x, b.const(np.array(pads, np.int64))]
    if value != 0.0 or mode == "constant":
        inputs.append(b.const(np.array(value, np.float32)))
    y = b.node("Pad", inputs, mode=mode)
    y = b.conv(y, 3, 4, r, pads=[1, 1, 1, 1])
    b.output(y)
    return b.model()


def test_a_zero_pad_merges_into_the_conv_pads():
    model = padded_conv()
    out, report = fold(model)
    assert "Pad" not in op_types(out) and report.rewrites["pad-into-conv"] == 1
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    pads = next(list(a.ints) for a in conv.attribute if a.name == "pads")
    assert pads == [2, 3, 3, 2]  # the conv's own 1 on each side plus the Pad's (1, 2) begin and (2, 1) end
    assert_parity(model, out)


@pytest.mark.parametrize(
    "mode, value, pads",
    [
        ("reflect", 0.0, (0, 0, 1, 1, 0, 0, 1, 1)),
        ("constant", 0.5, (0, 0, 1, 1, 0, 0, 1, 1)),
        ("constant", 0.0, (0, 1, 1, 1, 0, 0, 1, 1)),  # a padded channel is not a Conv's padding
    ],
)
def test_pads_a_conv_cannot_express_stay(mode, value, pads):
    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3, 8, 8])
    y = b.node("Pad", [x, b.const(np.array(pads, np.int64)), b.const(np.array(value, np.float32))], mode=mode)
    cin = 3 + pads[1] + pads[5]
    y = b.conv(y, cin, 4, r)
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert "Pad" in op_types(out)
    assert_parity(model, out)


def arithmetic(op: str, const: np.ndarray, x_shape=("batch", 4, 5), const_first: bool = False):
    b = GraphBuilder(opset=17)
    x = b.input("x", list(x_shape))
    c = b.const(const.astype(np.float32))
    y = b.node(op, [c, x] if const_first else [x, c])
    y = b.node("Relu", [y])
    b.output(y)
    return b.model()


@pytest.mark.parametrize(
    "op, const, first",
    [("Mul", np.ones((1, 1)), False), ("Mul", np.ones(1), True), ("Div", np.ones((4, 1)), False),
     ("Add", np.zeros((1, 1, 1)), True), ("Sub", np.zeros(1), False)],
)  # fmt: skip
def test_identity_arithmetic_goes(op, const, first):
    model = arithmetic(op, const, const_first=first)
    out, report = fold(model)
    assert op not in op_types(out) and report.rewrites["identity-arithmetic"] == 1
    assert_parity(model, out, shapes={"x": (2, 4, 5)})


@pytest.mark.parametrize(
    "op, const, first, why",
    [
        ("Mul", np.ones((3, 1, 1, 1)), False, "broadcasting to a higher rank changes the shape"),
        ("Mul", np.full((1, 1), 2.0), False, "not one"),
        ("Div", np.ones(1), True, "1 / x is no identity"),
        ("Sub", np.zeros(1), True, "0 - x is no identity"),
        ("Add", np.full(1, -0.0), False, "x + (-0.0) keeps a -0.0 that x + 0 would not"),
    ],
)
def test_arithmetic_that_is_no_identity_stays(op, const, first, why):
    model = arithmetic(op, const, const_first=first)
    out, _ = fold(model)
    assert op in op_types(out), why
    assert_parity(model, out, shapes={"x": (2, 4, 5)})


def test_an_identity_whose_output_is_a_graph_output_stays():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4])
    y = b.node("Mul", [x, b.const(np.ones(1, np.float32))])
    b.output(y)
    out, _ = fold(b.model())
    assert op_types(out) == ["Mul"]


def test_a_reshape_reads_through_the_relabelling_before_it():
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 4, 6])
    y = b.node("Flatten", [x], axis=1)
    y = b.node("Unsqueeze", [y, b.const(np.array([1], np.int64))])
    y = b.node("Reshape", [y, b.const(np.array([-1, 2, 12], np.int64))])
    y = b.node("Relu", [y])
    b.output(y)
    model = b.model()
    out, report = fold(model)
    assert op_types(out) == ["Reshape", "Relu"] and report.rewrites["reshape-chains"] >= 1
    assert_parity(model, out, shapes={"x": (3, 4, 6)})


def test_a_reshape_with_a_zero_keeps_what_it_reads():
    """Reshape's 0 copies a dim of its input: [B, 24] -> [0, 4, 6] depends on the Flatten before it."""
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 4, 6])
    y = b.node("Flatten", [x], axis=1)
    y = b.node("Reshape", [y, b.const(np.array([0, 6, 4], np.int64))])
    y = b.node("Relu", [y])
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert "Flatten" in op_types(out)
    assert_parity(model, out, shapes={"x": (3, 4, 6)})


def test_a_reshape_to_the_shape_it_has_goes():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4, 6])
    y = b.node("Reshape", [b.node("Relu", [x]), b.const(np.array([2, 4, 6], np.int64))])
    y = b.node("Sigmoid", [y])
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert op_types(out) == ["Relu", "Sigmoid"]
    assert_parity(model, out)


def attention_like(batch="batch"):
    """A transformer projection: [S, B, C] -> MatMul + bias -> GELU -> MatMul + bias, and a Reshape whose
    target is computed from Shape(x) with the one dynamic dim (what dynamo writes for attention heads)."""
    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", [5, batch, 8])
    h = b.node("MatMul", [x, b.weight(r.standard_normal((8, 16)))])
    h = b.node("Add", [h, b.weight(r.standard_normal(16))])
    g = b.node("Div", [h, b.const(np.array(1.4142135, np.float32))])
    g = b.node("Erf", [g])
    g = b.node("Add", [g, b.const(np.array(1.0, np.float32))])
    h = b.node("Mul", [b.node("Mul", [h, g]), b.const(np.array(0.5, np.float32))])
    h = b.node("MatMul", [h, b.weight(r.standard_normal((16, 8)))])
    h = b.node("Add", [b.weight(r.standard_normal(8)), h])
    shape = b.node("Shape", [x])
    dyn = b.node("Slice", [shape, b.const(np.array([1], np.int64)), b.const(np.array([2], np.int64))])
    heads = b.node("Gather", [shape, b.const(np.array([0, 2], np.int64))])  # 5 and 8: static
    target = b.node("Concat", [heads, dyn], axis=0)
    y = b.node("Reshape", [h, target])
    y = b.node("Transpose", [b.node("Transpose", [y], perm=[1, 0, 2])], perm=[0, 2, 1])
    b.output(y)
    return b.model()


def test_transformer_projections_become_gemms_and_their_shape_arithmetic_constants():
    model = attention_like()
    out, report = fold(model)
    ops = op_types(out)
    assert ops.count("Gemm") == 2 and "MatMul" not in ops, ops
    assert not {"Shape", "Slice", "Concat", "Gather"} & set(ops), ops
    assert ops.count("Transpose") == 1
    for name in ("matmul-bias-as-gemm", "static-shape-parts", "transpose-chains"):
        assert report.rewrites[name] >= 1, name
    assert_parity(model, out, shapes={"x": (5, 3, 8)})


def test_a_projection_with_two_unknown_leading_dims_stays_a_matmul():
    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", ["s", "batch", 8])
    h = b.node("MatMul", [x, b.weight(r.standard_normal((8, 4)))])
    h = b.node("Add", [h, b.weight(r.standard_normal(4))])
    b.output(h)
    model = b.model()
    out, _ = fold(model)
    assert "MatMul" in op_types(out)
    assert_parity(model, out, shapes={"x": (2, 3, 8)})


def test_transposes_that_cancel_go():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3, 4])
    y = b.node("Transpose", [b.node("Transpose", [x], perm=[2, 0, 1])], perm=[1, 2, 0])
    y = b.node("Relu", [y])
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert op_types(out) == ["Relu"]
    assert_parity(model, out)


def test_a_qkv_split_becomes_one_reshape_and_one_transpose():
    """dynamo's qkv split: Reshape -> Unsqueeze -> Transpose -> Squeeze of the unsqueezed axis."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [5, "batch", 24])
    y = b.node("Reshape", [x, b.const(np.array([5, -1, 3, 8], np.int64))], allowzero=1)
    y = b.node("Unsqueeze", [y, b.const(np.array([0], np.int64))])
    y = b.node("Transpose", [y], perm=[3, 1, 2, 0, 4])
    y = b.node("Squeeze", [y, b.const(np.array([3], np.int64))])
    y = b.node("Relu", [y])
    b.output(y)
    model = b.model()
    out, report = fold(model)
    assert op_types(out) == ["Reshape", "Transpose", "Relu"], op_types(out)
    assert report.rewrites["squeeze-through-transpose"] == 1
    assert_parity(model, out, shapes={"x": (5, 2, 24)})


def test_broadcast_shape_arithmetic_of_one_named_dim_is_read_as_that_dim():
    """tf2onnx's broadcast shape: Max(Gather(Shape(a)), Gather(Shape(b))) of dims inference named alike."""
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 4, 6])
    s = b.node("Shape", [x])
    dims = b.node(
        "Max",
        [
            b.node("Gather", [s, b.const(np.array([0, 1], np.int64))]),
            b.node("Gather", [s, b.const(np.array([0, 1], np.int64))]),
        ],
    )
    target = b.node("Concat", [dims, b.const(np.array([2, 3], np.int64))], axis=0)
    y = b.node("Reshape", [x, target])
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert op_types(out) == ["Reshape"], op_types(out)
    assert_parity(model, out, shapes={"x": (3, 4, 6)})


def test_a_reshape_to_its_own_shape_with_the_dynamic_batch_as_minus_one_goes():
    """tf2onnx's squeeze-excite: Reshape(GlobalAveragePool(x), [-1, C, 1, 1]) of a dynamic batch."""
    r = rng()
    b = GraphBuilder(opset=13)
    x = b.input("x", ["batch", 4, 6, 6])
    y = b.node("Reshape", [b.node("GlobalAveragePool", [x]), b.const(np.array([-1, 4, 1, 1], np.int64))])
    y = b.conv(y, 4, 4, r, k=1)
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert op_types(out) == ["GlobalAveragePool", "Conv"]
    assert_parity(model, out, shapes={"x": (3, 4, 6, 6)})


def test_a_reshape_that_moves_the_dynamic_dim_stays():
    b = GraphBuilder(opset=13)
    x = b.input("x", ["batch", 4, 1, 1])
    y = b.node("Reshape", [x, b.const(np.array([4, -1, 1, 1], np.int64))])
    y = b.node("Relu", [y])
    b.output(y)
    model = b.model()
    out, _ = fold(model)
    assert "Reshape" in op_types(out)
    assert_parity(model, out, shapes={"x": (3, 4, 1, 1)})


def test_ifs_with_constant_conditions_inside_bodies_take_their_branch():
    """silero's bodies: an If on a condition computed from constants, inside an If on a graph input."""
    from onnx import TensorProto, helper

    def branch(name: str, nodes, out: str):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 3])])

    two = helper.make_tensor("two", TensorProto.INT64, [], [2])
    inner = helper.make_node(
        "If",
        ["is_two"],
        ["inner_out"],
        then_branch=branch("t", [helper.make_node("Relu", ["x"], ["relu_out"])], "relu_out"),
        else_branch=branch("e", [helper.make_node("Neg", ["x"], ["neg_out"])], "neg_out"),
    )
    then = branch(
        "outer_then",
        [
            helper.make_node("Constant", [], ["two_c"], value=two),
            helper.make_node("Equal", ["two_c", "two_c"], ["is_two"]),
            inner,
        ],
        "inner_out",
    )
    other = branch("outer_else", [helper.make_node("Sigmoid", ["x"], ["sig_out"])], "sig_out")
    b = GraphBuilder(opset=17)
    b.input("x", [2, 3])
    b.input("flag", [], dtype=np.bool_)
    b.node("If", ["flag"], outputs=["y"], then_branch=then, else_branch=other)
    b.output("y", shape=[2, 3])
    model = b.model()
    out, report = fold(model)
    body = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in body.node] == ["Relu"], [n.op_type for n in body.node]
    assert report.rewrites["in If/Loop/Scan bodies"] >= 1
    for flag in (True, False):
        feeds = {"x": rng(2).standard_normal((2, 3)).astype(np.float32), "flag": np.array(flag)}
        np.testing.assert_array_equal(run_model(out, feeds)["y"], run_model(model, feeds)["y"])


def duplicated_shape_reads(opset: int = 17, output_duplicate: bool = False):
    """TorchScript's attention reshape: Shape(x) written once per dim read, each index its own constant."""
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["batch", "seq", 8])
    dims = []
    for k in (0, 1):
        shape = b.node("Shape", [x])
        dim = b.node("Gather", [shape, b.const(np.array(k, np.int64))], axis=0)
        dims.append(b.node("Unsqueeze", [dim, b.const(np.array([0], np.int64))]))
    target = b.node("Concat", [*dims, b.const(np.array([2, 4], np.int64))], axis=0)
    y = b.node("Reshape", [x, target])
    b.output(y)
    if output_duplicate:
        b.output(dims[0], dtype=np.int64)
        b.output(dims[1], dtype=np.int64)
    return b.model()


def test_duplicate_shape_reads_merge_and_the_output_is_unchanged():
    model = duplicated_shape_reads()
    out, report = fold(model)
    assert op_types(out).count("Shape") == 1, op_types(out)
    assert report.rewrites["common-subexpressions"] >= 1
    for shape in ((2, 5, 8), (3, 1, 8)):
        assert_parity(model, out, shapes={"x": shape})


def test_duplicates_that_are_graph_outputs_stay():
    model = duplicated_shape_reads(output_duplicate=True)
    out, _ = fold(model)
    assert op_types(out).count("Unsqueeze") == 2
    assert_parity(model, out, shapes={"x": (2, 5, 8)})


@pytest.mark.parametrize("op, attrs", [("RandomNormalLike", {"seed": 1.0}), ("Dropout", {})])
def test_ops_with_a_random_result_never_merge(op, attrs):
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3])
    first, second = b.node(op, [x], **attrs), b.node(op, [x], **attrs)
    b.output(b.node("Add", [first, second]))
    out, _ = fold(b.model())
    assert op_types(out).count(op) == 2


def test_nodes_differing_in_an_attribute_stay_apart():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3])
    b.output(b.node("Add", [b.node("Softmax", [x], axis=0), b.node("Softmax", [x], axis=1)]))
    model = b.model()
    out, _ = fold(model)
    assert op_types(out).count("Softmax") == 2
    assert_parity(model, out)


def test_a_cast_to_the_type_it_has_goes():
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 4])
    n = b.node("Gather", [b.node("Shape", [x]), b.const(np.array(0, np.int64))], axis=0)
    n = b.node("Cast", [n], to=7)  # int64 to int64
    r = b.node("Range", [b.const(np.array(0, np.int64)), n, b.const(np.array(1, np.int64))])
    b.output(b.node("Cast", [r], to=1))  # int64 to float: stays
    model = b.model()
    out, report = fold(model)
    assert op_types(out).count("Cast") == 1 and report.rewrites["same-type-cast"] == 1
    assert_parity(model, out, shapes={"x": (3, 4)})


@pytest.mark.parametrize(
    "opset, first, second, rank",
    [(17, [1], [2], 2), (17, [0], [0], 2), (17, [-1], [0], 2), (11, [1], [1], 2), (17, [0, 2], [1], 1)],
)
def test_unsqueezes_in_a_row_become_one(opset, first, second, rank):
    b = GraphBuilder(opset=opset)
    x = b.input("x", ["batch", 5][:rank])

    def unsqueeze(t, axes):
        if opset >= 13:
            return b.node("Unsqueeze", [t, b.const(np.array(axes, np.int64))])
        return b.node("Unsqueeze", [t], axes=axes)

    b.output(b.node("Relu", [unsqueeze(unsqueeze(x, first), second)]))
    model = b.model()
    out, _ = fold(model)
    assert op_types(out).count("Unsqueeze") == 1, op_types(out)
    shape = (3, 5)[:rank]
    assert_parity(model, out, shapes={"x": shape})
    x = rng().standard_normal(shape).astype(np.float32)
    expected = np.maximum(np.expand_dims(np.expand_dims(x, first), second), 0)  # numpy, not the code under test
    assert run_model(out, {"x": x})[out.graph.output[0].name].shape == expected.shape


def test_a_conv_after_an_if_keeps_its_channel_count():
    """silero's last If: Gather(Shape(conv output), 1) == 1 when the conv has one output channel, though
    the conv reads an If's output of unknown rank."""
    from onnx import TensorProto, helper

    def branch(name: str, op: str):
        return helper.make_graph(
            [helper.make_node(op, ["x"], [f"{name}_out"])], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
        )  # fmt: skip

    r = rng()
    b = GraphBuilder(opset=17)
    b.input("x", [2, 3, 6])
    b.input("flag", [], dtype=np.bool_)
    b.node("If", ["flag"], outputs=["h"], then_branch=branch("t", "Relu"), else_branch=branch("e", "Neg"))
    y = b.node("Sigmoid", [b.node("Conv", ["h", b.weight(r.standard_normal((1, 3, 1)).astype(np.float32))])])
    channels = b.node("Gather", [b.node("Shape", [y]), b.const(np.array(1, np.int64))], axis=0)
    is_one = b.node("Equal", [channels, b.const(np.array(1, np.int64))])
    squeeze = helper.make_graph(
        [helper.make_node("Squeeze", [y, "axis1"], ["sq"])], "sq", [],
        [helper.make_tensor_value_info("sq", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )  # fmt: skip
    keep = helper.make_graph(
        [helper.make_node("Identity", [y], ["id"])],
        "id",
        [],
        [helper.make_tensor_value_info("id", TensorProto.FLOAT, None)],
    )
    b.node("If", [is_one], outputs=["z"], then_branch=squeeze, else_branch=keep)
    b.output("z")
    model = b.model()
    out, _ = fold(model)
    assert op_types(out).count("If") == 1, op_types(out)
    for flag in (True, False):
        feeds = {"x": r.standard_normal((2, 3, 6)).astype(np.float32), "flag": np.array(flag)}
        np.testing.assert_allclose(run_model(out, feeds)["z"], run_model(model, feeds)["z"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "mode, value, pads, reason",
    [
        ("reflect", 0.0, (0, 0, 1, 1, 0, 0, 1, 1), "pads in reflect mode"),
        ("constant", 0.5, (0, 0, 1, 1, 0, 0, 1, 1), "a value other than 0"),
        ("constant", 0.0, (0, 1, 1, 1, 0, 0, 1, 1), "the batch or channel axis"),
    ],
)
def test_a_pad_that_stays_says_why(mode, value, pads, reason):
    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3, 8, 8])
    y = b.node("Pad", [x, b.const(np.array(pads, np.int64)), b.const(np.array(value, np.float32))], mode=mode)
    b.output(b.conv(y, 3 + pads[1] + pads[5], 4, r))
    _, report = fold(b.model())
    why = [d.detail for d in report.decisions if d.pass_name == "pad-into-conv" and not d.folded]
    assert why and reason in why[0], why
    assert all(d.family == NO_FAMILY for d in report.decisions if d.pass_name == "pad-into-conv")


def test_an_identity_kept_for_a_graph_output_says_so():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4])
    b.output(b.node("Mul", [x, b.const(np.ones(1, np.float32))]))
    _, report = fold(b.model())
    why = [d.detail for d in report.decisions if d.pass_name == "identity-arithmetic" and not d.folded]
    assert why and "is a graph output" in why[0], why


def test_a_simplification_is_recorded_and_left_undone_by_its_anchor():
    model = arithmetic("Mul", np.ones(1))
    _, report = fold(model)
    done = [d for d in report.decisions if d.pass_name == "identity-arithmetic" and d.folded]
    assert len(done) == 1 and done[0].family == NO_FAMILY and not report.norms
    out, report = fold(model, FoldOptions(undone=frozenset({done[0].node})))
    assert "Mul" in op_types(out) and report.rewrites["identity-arithmetic"] == 0
