"""Down-conversion of what exporters write today (graph/downconvert.py), each adapter against onnx's reference.

Each case is a small model at the newer opset; the expected outputs come from onnx's ReferenceEvaluator
on that model (an implementation independent of normonnx and of onnxruntime), and the converted model
is run on onnxruntime at the older opset. Refusals name the node and the reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from normonnx.errors import UnusableInputError
from normonnx.pipelines.emit import emit

RNG = np.random.default_rng(3)


def _model(nodes, inputs, outputs, opset, inits=()):
    """The model, its outputs typed by onnx's shape inference where the case leaves them shapeless."""
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and known[out.name].type.tensor_type.HasField("shape"):
            out.CopyFrom(known[out.name])
    return model


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _i64(name, values):
    return onnx.numpy_helper.from_array(np.array(values, np.int64), name)


def _f32(name, values):
    return onnx.numpy_helper.from_array(np.array(values, np.float32), name)


def _down_matches(model, opset, feeds, *, atol=1e-6, style="auto"):
    """Convert ``model`` to ``opset``; its onnxruntime outputs equal onnx's reference on the original."""
    expected = ReferenceEvaluator(model).run(None, feeds)
    converted, report = emit(model, opset, style)
    assert converted.opset_import[0].version == opset == report.opset
    onnx.checker.check_model(converted, full_check=True)
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=atol)
    return converted


def _ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("opset", [17, 13, 11])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_18_with_axes_goes_down(opset, mode):
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, axes=[2, 3], antialias=0,
                            keep_aspect_ratio_policy="stretch")  # fmt: skip
    model = _model([node], [_vi("x", [1, 2, 3, 4])], [_vi("y", None)], 18, [_f32("scales", [2.0, 1.5])])
    out = _down_matches(model, opset, {"x": x})
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert not {a.name for a in resize.attribute} & {"axes", "antialias", "keep_aspect_ratio_policy"}


def test_resize_sizes_on_some_axes_use_the_static_others():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", axes=[3])
    model = _model([node], [_vi("x", [1, 2, 3, 4])], [_vi("y", None)], 19, [_i64("sizes", [8])])
    _down_matches(model, 13, {"x": x})


def test_resize_with_antialias_is_refused_by_name():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear", antialias=1)
    model = _model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", None)], 18, [_f32("scales", [1, 1, 0.5, 0.5])])
    with pytest.raises(UnusableInputError, match=r"Resize \(up\): antialias=1 came at opset 18"):
        emit(model, 17)


@pytest.mark.parametrize("opset", [17, 13, 11])
@pytest.mark.parametrize("size", [7, 9])  # uneven and even
def test_split_num_outputs_becomes_sizes(opset, size):
    x = RNG.standard_normal((2, size)).astype(np.float32)
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)
    model = _model([node], [_vi("x", [2, size])], [_vi(n, None) for n in "abc"], 18)
    _down_matches(model, opset, {"x": x})


def test_split_num_outputs_on_a_dynamic_axis_is_computed_at_13_and_refused_at_11():
    node = helper.make_node("Split", ["x"], ["a", "b"], name="halves", axis=1, num_outputs=2)
    model = _model([node], [_vi("x", [2, "n"])], [_vi(n, None) for n in "ab"], 18)
    for n in (5, 6):  # both sizes run on the one converted model
        _down_matches(model, 13, {"x": RNG.standard_normal((2, n)).astype(np.float32)})
    with pytest.raises(UnusableInputError, match=r"Split \(halves\): num_outputs=2 on an axis of unknown size"):
        emit(model, 11)


def test_shape_start_end_becomes_a_slice():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, end=-1)]
    model = _model(nodes, [_vi("x", [2, 3, 4, 5])], [_vi("s", None, TensorProto.INT64)], 18)
    out = _down_matches(model, 13, {"x": x})
    assert _ops(out) == ["Shape", "Slice"]


def test_pad_with_axes_becomes_full_pads():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="constant")
    inits = [_i64("pads", [1, 2, 0, 1]), _i64("axes", [2, -1])]
    model = _model([node], [_vi("x", [1, 2, 3, 4])], [_vi("y", None)], 18, inits)
    _down_matches(model, 13, {"x": x})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [1, -1, None])
def test_softmax_on_any_axis_goes_below_13(op, axis):
    """Before 13 the op flattens at axis (default 1): the last axis is written out, another moved last."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    attrs = {} if axis is None else {"axis": axis}
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 4])], [_vi("y", None)], 13)
    _down_matches(model, 11, {"x": x})


def test_newer_ops_are_written_with_the_ops_that_define_them():
    x = np.array([[-4.0, -3.0, -1.0, 0.0, 0.5, 3.0, 5.0, np.nan]], np.float32)
    nodes = [
        helper.make_node("HardSwish", ["x"], ["h"]),
        helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
        helper.make_node("LessOrEqual", ["x", "zero"], ["le"]),
    ]
    outputs = [_vi("h", None), _vi("ge", None, TensorProto.BOOL), _vi("le", None, TensorProto.BOOL)]
    model = _model(nodes, [_vi("x", [1, 8])], outputs, 14, [_f32("zero", [0.0])])
    out = _down_matches(model, 11, {"x": x})
    assert not {"HardSwish", "GreaterOrEqual", "LessOrEqual"} & set(_ops(out))


def test_reduce_axes_computed_from_the_rank_are_folded_first():
    """The onnx function body of RMSNormalization computes its axes with Shape/Size/Range."""
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Size", ["shape"], ["rank"]),
        helper.make_node("Sub", ["rank", "one"], ["last"]),
        helper.make_node("Range", ["last", "rank", "one"], ["axes"]),
        helper.make_node("ReduceMean", ["x", "axes"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [2, 3, 5])], [_vi("y", [2, 3, 1])], 18, [_i64("one", 1)])
    _down_matches(model, 13, {"x": x})


def test_bodies_of_if_are_converted_too():
    x = RNG.standard_normal((1, 3)).astype(np.float32)
    body = lambda name, axes: helper.make_graph(
        [helper.make_node("Unsqueeze", ["x", axes], [f"{name}_y"])], name, [], [_vi(f"{name}_y", [1, 3, 1])]
    )
    cond = helper.make_node("If", ["c"], ["y"], then_branch=body("then", "ax0"), else_branch=body("else", "ax1"))
    inits = [_i64("ax0", [2]), _i64("ax1", [-1]), onnx.numpy_helper.from_array(np.array(True), "c")]
    model = _model([cond], [_vi("x", [1, 3])], [_vi("y", [1, 3, 1])], 13, inits)
    out = _down_matches(model, 11, {"x": x})
    then = out.graph.node[0].attribute[0].g
    assert [a.name for a in then.node[0].attribute] == ["axes"] and len(then.node[0].input) == 1


def test_local_functions_are_inlined_before_going_down():
    fn = helper.make_function("local", "Squash", ["i"], ["o"], [helper.make_node("ReduceMean", ["i", "ax"], ["o"])],
                              [helper.make_opsetid("", 18)])  # fmt: skip
    fn.node.insert(0, helper.make_node("Constant", [], ["ax"], value=_i64("axv", [1])))
    call = helper.make_node("Squash", ["x"], ["y"], domain="local")
    model = helper.make_model(
        helper.make_graph([call], "g", [_vi("x", [2, 3])], [_vi("y", [2, 1])]),
        functions=[fn], opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
    )  # fmt: skip
    model.ir_version = 10
    _down_matches(model, 13, {"x": RNG.standard_normal((2, 3)).astype(np.float32)})


def _groupnorm21(scale, bias):
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-5)
    return _model([node], [_vi("x", [2, 4, 3, 3])], [_vi("y", [2, 4, 3, 3])], 21, [_f32("s", scale), _f32("b", bias)])


def test_groupnorm_21_with_per_channel_values_is_lowered_below_21():
    model = _groupnorm21([0.5, 1.0, 2.0, 3.0], [0.1, 0.2, -0.3, 0.4])
    x = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    for opset in (20, 18, 17, 13):
        out = _down_matches(model, opset, {"x": x}, atol=1e-5, style="op")
        assert "GroupNormalization" not in _ops(out)


def test_onnxruntime_layernorm_below_17_is_read_as_the_op():
    """onnxruntime's transformers optimizer writes LayerNormalization in the default domain at opset 14."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
    inits = [_f32("s", RNG.uniform(0.5, 2, 4)), _f32("b", RNG.standard_normal(4))]
    model = _model([node], [_vi("x", [2, 3, 4])], [_vi("y", [2, 3, 4])], 14, inits)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for opset, style, has_op in ((17, "op", True), (18, "op", True), (13, "auto", False), (14, "decomposed", False)):
        out, _ = emit(model, opset, style)
        assert ("LayerNormalization" in _ops(out)) == has_op, (opset, style)
        got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)


def test_layernorm_statistics_outputs_are_written_when_lowered():
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=1, epsilon=0.1)
    inits = [_f32("s", RNG.uniform(0.5, 2, (3, 5))), _f32("b", RNG.standard_normal((3, 5)))]
    model = _model([node], [_vi("x", [2, 3, 5])], [_vi(n, None) for n in ("y", "mean", "inv")], 17, inits)
    out = _down_matches(model, 13, {"x": x}, atol=1e-5)
    assert "LayerNormalization" not in _ops(out)


def test_an_input_type_the_older_op_lacks_is_refused():
    node = helper.make_node("Max", ["a", "b"], ["y"], name="biggest")
    model = _model([node], [_vi("a", [2], TensorProto.INT64), _vi("b", [2], TensorProto.INT64)],
                   [_vi("y", None, TensorProto.INT64)], 13)  # fmt: skip
    with pytest.raises(UnusableInputError, match=r"Max \(biggest\) reads tensor\(int64\)"):
        emit(model, 11)


# --- found by an adversarial review of the first version


def test_gridsample_20_modes_take_their_older_names():
    x = RNG.standard_normal((1, 2, 4, 5)).astype(np.float32)
    grid = RNG.random((1, 3, 3, 2)).astype(np.float32) * 2 - 1
    for mode in ("linear", "cubic", "nearest"):
        node = helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, align_corners=0)
        model = _model([node], [_vi("x", [1, 2, 4, 5]), _vi("g", [1, 3, 3, 2])], [_vi("y", None)], 20)
        _down_matches(model, 16, {"x": x, "g": grid}, atol=1e-5)


@pytest.mark.parametrize(
    ("node", "inputs", "opset", "expected"),
    [
        (helper.make_node("RoiAlign", ["x", "r", "i"], ["y"]), 16, 13, "coordinate_transformation_mode half_pixel"),
        (helper.make_node("DFT", ["x"], ["y"]), 20, 17, "axis became an input"),
    ],
)
def test_ops_whose_meaning_changed_are_refused(node, inputs, opset, expected):
    ins = [_vi("x", [1, 1, 4, 4]), _vi("r", [1, 4]), _vi("i", [1], TensorProto.INT64)][: len(node.input)]
    model = _model([node], ins, [_vi("y", None)], inputs)
    with pytest.raises(UnusableInputError, match=expected):
        emit(model, opset)


def test_empty_reduce_axes_mean_every_axis_and_empty_squeeze_axes_are_refused():
    x = RNG.standard_normal((2, 1, 4)).astype(np.float32)
    reduce = _model([helper.make_node("ReduceMean", ["x", "ax"], ["y"])], [_vi("x", [2, 1, 4])], [_vi("y", None)],
                    18, [_i64("ax", np.zeros(0, np.int64))])  # fmt: skip
    _down_matches(reduce, 13, {"x": x})
    squeeze = _model([helper.make_node("Squeeze", ["x", "ax"], ["y"])], [_vi("x", [2, 1, 4])], [_vi("y", [2, 1, 4])],
                     13, [_i64("ax", np.zeros(0, np.int64))])  # fmt: skip
    with pytest.raises(UnusableInputError, match="empty axes"):
        emit(squeeze, 11)


def test_batchnorm_parameters_that_do_not_fit_x_exactly_are_not_rounded():
    """Scale 1.0001 would round to 1.0 in fp16 and a variance of 1e10 overflow: the op computes in float32."""
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    inits = [_f32("s", [1.0001, 1.0]), _f32("b", [0.0, 0.0]), _f32("m", [0.0, 1e5]), _f32("v", [1.0, 1e10])]
    model = _model([node], [_vi("x", [1, 2, 3], TensorProto.FLOAT16)], [_vi("y", None, TensorProto.FLOAT16)], 15, inits)
    out = _down_matches(model, 14, {"x": np.array([[[1000, 2, 3], [4, 5, 6]]], np.float16)}, atol=1e-3)
    assert _ops(out) == ["Cast", "BatchNormalization", "Cast"]


def test_a_name_two_branches_define_is_not_read_from_the_wrong_one():
    """Each branch has its own Constant "ax" (axis 1 in one, 2 in the other): no single value to move."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)

    def branch(name, axis):
        nodes = [helper.make_node("Constant", [], ["ax"], value=_i64("v", [axis])),
                 helper.make_node("ReduceSum", ["x", "ax"], [f"{name}_y"], keepdims=1)]  # fmt: skip
        return helper.make_graph(nodes, name, [], [_vi(f"{name}_y", None)])

    cond = helper.make_node("If", ["c"], ["y"], then_branch=branch("t", 1), else_branch=branch("e", 2))
    model = _model([cond], [_vi("x", [2, 3, 4]), _vi("c", [], TensorProto.BOOL)], [_vi("y", None)], 13)
    try:
        converted, _ = emit(model, 11)
    except UnusableInputError:
        return  # refused: exact or nothing
    sess = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0])


def test_normalizations_inside_bodies_are_lowered_too():
    x = RNG.standard_normal((1, 4, 3, 3)).astype(np.float32)

    def branch(name):
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], [f"{name}_y"], axis=-1)
        return helper.make_graph([node], name, [], [_vi(f"{name}_y", [1, 4, 3, 3])])

    cond = helper.make_node("If", ["c"], ["y"], then_branch=branch("t"), else_branch=branch("e"))
    inits = [_f32("s", [1.0, 2.0, 3.0]), _f32("b", [0.1, 0.2, 0.3])]
    model = _model([cond], [_vi("x", [1, 4, 3, 3]), _vi("c", [], TensorProto.BOOL)], [_vi("y", [1, 4, 3, 3])], 17,
                   inits)  # fmt: skip
    _down_matches(model, 13, {"x": x, "c": np.array(True)}, atol=1e-5)
