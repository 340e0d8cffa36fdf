"""What other exporters' files need (issue 10): each model here is rebuilt, in a few lines, from a
real file or a differential-fuzz reproduction (shared/repros/emit) that failed before."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from normonnx.pipelines.emit import emit
from normonnx.pipelines.fold import fold
from tests.builders import GraphBuilder, assert_parity, op_types, run_model
from tests.helpers import rng


def zoo_style_conv_bn(channels: int = 64) -> onnx.ModelProto:
    """An ir_version 3 model-zoo file: the Conv weight is a ConstantOfShape (the 'light' files), then a BN."""
    r = rng()
    b = GraphBuilder(opset=9, ir_version=3)
    x = b.input("data_0", [1, 3, 8, 8])
    shape = b.const(np.array([channels, 3, 3, 3], np.int64))
    w = b.node("ConstantOfShape", [shape], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.01]))
    y = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    y = b.batchnorm(y, channels, r)
    b.output(y)
    return _initializers_as_inputs(b.model())


def _initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """IR version 3 lists every initializer as a graph input too."""
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return model


def test_constant_of_shape_weights_next_to_a_batchnorm_fold_in_one_run():
    model = zoo_style_conv_bn()
    out, report = fold(model)
    assert "BatchNormalization" not in op_types(out) and "ConstantOfShape" not in op_types(out)
    assert len(report.folded) == 1 and not report.kept
    assert_parity(model, out)


def test_constant_of_shape_weights_no_fold_needs_stay_computed():
    """A 1 KB VGG must not become 500 MB: large weights with no normalization next to them stay computed."""
    b = GraphBuilder(opset=9, ir_version=3)
    x = b.input("data_0", [1, 3, 8, 8])
    shape = b.const(np.array([512, 3, 3, 3], np.int64))
    w = b.node("ConstantOfShape", [shape], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.01]))
    y = b.node("Relu", [b.node("Conv", [x, w], pads=[1, 1, 1, 1])])
    for k in range(40):  # enough of them to pass the growth limit together; each its own value
        shape = b.const(np.array([512, 512, 1, 1], np.int64))
        fill = helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.001 * (k + 1)])
        w = b.node("ConstantOfShape", [shape], value=fill)
        y = b.node("Relu", [b.node("Conv", [y, w])])
    b.output(y)
    model = _initializers_as_inputs(b.model())
    out, _ = fold(model)
    assert op_types(out).count("ConstantOfShape") == 40  # the first weight is small enough to store
    assert out.ByteSize() < 256 * 1024


def test_emit_raises_a_file_older_than_opset_11_to_11(cli, tmp_path):
    src, out = tmp_path / "zoo.onnx", tmp_path / "zoo.emit.onnx"
    onnx.save(zoo_style_conv_bn(), src)
    result = cli("emit", src, "-o", out)
    assert result.code == 0, result.err
    written = onnx.load(out)
    assert next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) == 11


def bn15_fp16_input_fp32_params(exact: bool = False) -> onnx.ModelProto:
    """shared/repros/emit case A: BatchNormalization-15, X in float16, scale/bias/mean/var in float32
    (``exact``: values fp16 holds exactly; else values it would round, and a variance it would overflow)."""
    r = rng()
    b = GraphBuilder(opset=15, dtype=np.float16)
    x = b.input("x", [2, 4, 5, 5])
    if exact:
        params = [b.const(np.array([0.5, 1.0, 1.5, 2.0], np.float32)) for _ in range(4)]
    else:
        values = [np.abs(r.standard_normal(4)).astype(np.float32) + 0.5 for _ in range(4)]
        values[3][0] = 1e10  # a variance above fp16's range
        params = [b.const(v) for v in values]
    y = b.node("BatchNormalization", [x, *params], epsilon=1e-5)
    b.output(y)
    return b.model()


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("opset", [14, 13, 11])
def test_mixed_type_batchnorm_15_down_converts_without_rounding_a_parameter(opset, exact):
    """float32 parameters that fp16 holds exactly are stored in fp16; others stay float32, and the op computes
    there between two Casts (an fp16 copy would round them, or overflow a large variance to inf)."""
    model = bn15_fp16_input_fp32_params(exact)
    out, _ = emit(model, opset, "op")
    onnx.checker.check_model(out, full_check=True)
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    types = {t.name: t.data_type for t in out.graph.initializer}
    if exact:
        cast = bn.input[1:3] if opset == 14 else bn.input[1:]  # opset 14 lets mean and var keep their own type
        assert all(types[name] == onnx.TensorProto.FLOAT16 for name in cast)
    else:
        assert all(types[name] == onnx.TensorProto.FLOAT for name in bn.input[1:])
        assert [n.op_type for n in out.graph.node] == ["Cast", "BatchNormalization", "Cast"]
    feeds = {"x": rng(1).standard_normal((2, 4, 5, 5)).astype(np.float16)}
    y = model.graph.output[0].name
    ref, got = run_model(model, feeds), run_model(out, feeds)
    assert np.isfinite(got[y]).all()
    np.testing.assert_allclose(got[y], ref[y], atol=5e-3, rtol=5e-3)


def test_five_output_training_batchnorm_up_conversion_is_our_one_line(cli, tmp_path):
    b = GraphBuilder(opset=12)
    x = b.input("x", [2, 3, 4, 4])
    params = [b.const(np.ones(3, np.float32)) for _ in range(4)]
    b.node("BatchNormalization", [x, *params], outputs=["y", "rm", "rv", "sm", "sv"])
    b.output("y", shape=[2, 3, 4, 4])
    src = tmp_path / "bn5.onnx"
    onnx.save(b.model(), src)
    result = cli("emit", src, "-o", tmp_path / "out.onnx", "--opset", "14")
    assert result.code == 2 and "5 outputs" in result.err and "emit at opset 13" in result.err
    assert "Assertion" not in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_an_exact_rewrite_is_judged_against_float64_not_against_a_zero_optimizer_noise(cli, tmp_path):
    """shared/repros/emit case C: BN (scale 0.05, shift 100) before an InstanceNorm, decomposed exactly.
    onnxruntime's optimizer has nothing to fuse (noise 0), but the float32 original itself is ~1e-4
    from float64; the rewrite is no further, so it passes, and says against what."""
    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4, 6, 6])
    scale, shift = np.full(4, 0.05, np.float32), np.full(4, 100.0, np.float32)
    mean, var = np.zeros(4, np.float32), np.ones(4, np.float32)
    y = b.node("BatchNormalization", [x, *(b.const(v) for v in (scale, shift, mean, var))], epsilon=0.0)
    y = b.node(
        "InstanceNormalization", [y, b.const(r.standard_normal(4).astype(np.float32)), b.const(np.zeros(4, np.float32))]
    )
    b.output(y)
    src, out = tmp_path / "c.onnx", tmp_path / "c.out.onnx"
    onnx.save(b.model(), src)
    result = cli("emit", src, "-o", out, "--norm-style", "decomposed")
    assert result.code == 0, result.out + result.err
    assert "BatchNormalization" not in op_types(onnx.load(out))


def test_a_fp16_refusal_names_the_fp16_error_not_float32_noise():
    """shared/repros/emit case D's message: an fp16 model's own error is its float16 error."""
    from normonnx.validate.parity import compare, rejudge_with_noise

    ref = [{"y": np.ones(4, np.float16)}]
    noise = compare(ref, [{"y": np.full(4, 1.001, np.float16)}])
    result = rejudge_with_noise(compare(ref, [{"y": np.full(4, 2, np.float16)}]), noise)
    assert not result.passed and "own float16 error" in result.outputs[0].reason


def test_decomposed_style_lowers_a_batchnorm_whose_input_rank_is_unknown():
    """--norm-style decomposed always decomposes: a BN after an op inference cannot see through gets the
    per-channel shape at run time."""
    r = rng()
    b = GraphBuilder(opset=17)
    b.inputs.append(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None))  # no shape, no rank
    y = b.batchnorm("x", 3, r)
    b.output(y, shape=None)
    model = b.model()
    out, _ = emit(model, 17, "decomposed")
    assert "BatchNormalization" not in op_types(out)
    for shape in [(2, 3), (2, 3, 5), (2, 3, 4, 4)]:
        feeds = {"x": rng(1).standard_normal(shape).astype(np.float32)}
        ref, got = run_model(model, feeds), run_model(out, feeds)
        np.testing.assert_allclose(got[y], ref[y], rtol=1e-5, atol=1e-5)
