"""fold-into-producer: Conv/ConvTranspose/Gemm/MatMul followed by BN or a per-channel Mul/Add."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.passes.fold_into_producer import FoldIntoProducer
from tests.builders import GraphBuilder, apply, assert_parity, bn_params, folded, op_types, refusals

RNG = lambda seed=0: np.random.default_rng(seed)


def _check(model: onnx.ModelProto, expected_ops: list[str]):
    out, ctx = apply(model, FoldIntoProducer())
    onnx.checker.check_model(out, full_check=True)
    assert op_types(out) == expected_ops
    assert_parity(model, out)
    return out, ctx


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (2, True), (6, False)])
def test_conv_bn(dims, group, bias):
    rng = RNG()
    b = GraphBuilder()
    x = b.input("x", [2, 6] + [5] * dims)
    y = b.conv(x, 6, 12 if group != 6 else 6, rng, group=group, bias=bias, dims=dims, pads=[1] * 2 * dims)
    z = b.batchnorm(y, 12 if group != 6 else 6, rng, name="bn")
    b.output(z)
    out, ctx = _check(b.model(), ["Conv"])
    assert "bn" in folded(ctx)
    assert out.graph.output[0].name == z


@pytest.mark.parametrize("group,cin,cout_per_group", [(1, 4, 6), (2, 4, 3), (4, 8, 1), (3, 6, 5)])
def test_conv_transpose_bn_grouped(group, cin, cout_per_group):
    rng = RNG(1)
    b = GraphBuilder()
    x = b.input("x", [2, cin, 5, 5])
    w = b.weight(rng.standard_normal((cin, cout_per_group, 3, 3)) * 0.3)
    y = b.node("ConvTranspose", [x, w], group=group, strides=[2, 2])
    z = b.batchnorm(y, cout_per_group * group, rng)
    b.output(z)
    _check(b.model(), ["ConvTranspose"])


def test_conv_bn_bn_mul_add_chain_folds_completely():
    rng = RNG(2)
    b = GraphBuilder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.conv(x, 3, 4, rng)
    y = b.batchnorm(y, 4, rng)
    y = b.batchnorm(y, 4, rng)
    y = b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (1, 4, 1, 1)))])
    y = b.node("Add", [y, b.weight(rng.standard_normal((4, 1, 1)))])
    y = b.node("Sub", [y, b.weight(rng.standard_normal((1, 4, 1, 1)))])
    y = b.node("Div", [y, b.weight(rng.uniform(0.5, 2, (4, 1, 1)))])
    b.output(y)
    _out, ctx = _check(b.model(), ["Conv"])
    assert len(folded(ctx)) == 6


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(
    "alpha,beta,c_shape", [(1.0, 1.0, (5,)), (0.5, 2.0, (1, 5)), (1.5, 0.25, (3, 5)), (1.0, 1.0, None)]
)
def test_gemm_bn(trans_b, alpha, beta, c_shape):
    rng = RNG(3)
    b = GraphBuilder()
    x = b.input("x", [3, 4])
    w = b.weight(rng.standard_normal((5, 4) if trans_b else (4, 5)))
    ins = [x, w] + ([b.weight(rng.standard_normal(c_shape))] if c_shape else [])
    y = b.node("Gemm", ins, transB=trans_b, alpha=alpha, beta=beta)
    b.output(b.batchnorm(y, 5, rng))
    _check(b.model(), ["Gemm"])


def test_gemm_trans_a_bn():
    rng = RNG(4)
    b = GraphBuilder()
    x = b.input("x", [4, 3])
    y = b.node("Gemm", [x, b.weight(rng.standard_normal((4, 5))), b.weight(rng.standard_normal(5))], transA=1)
    b.output(b.batchnorm(y, 5, rng))
    _check(b.model(), ["Gemm"])


@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_bn_rank2(with_bias):
    rng = RNG(5)
    b = GraphBuilder()
    x = b.input("x", [3, 4])
    y = b.node("MatMul", [x, b.weight(rng.standard_normal((4, 6)))])
    if with_bias:
        y = b.node("Add", [b.weight(rng.standard_normal(6)), y])
    b.output(b.batchnorm(y, 6, rng))
    _check(b.model(), ["MatMul", "Add"])


def test_matmul_rank3_then_channel_mul_add_folds_on_last_axis():
    rng = RNG(6)
    b = GraphBuilder()
    x = b.input("x", [2, 7, 4])
    y = b.node("MatMul", [x, b.weight(rng.standard_normal((4, 6)))])
    y = b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, 6))])
    y = b.node("Add", [y, b.weight(rng.standard_normal(6))])
    b.output(y)
    _check(b.model(), ["MatMul", "Add"])


def test_matmul_rank3_bn_is_refused_because_axis1_is_not_features():
    rng = RNG(7)
    b = GraphBuilder()
    x = b.input("x", [2, 6, 4])
    y = b.node("MatMul", [x, b.weight(rng.standard_normal((4, 6)))])
    b.output(b.batchnorm(y, 6, rng, name="bn"))
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert op_types(out) == ["MatMul", "BatchNormalization"]
    assert "features are on axis 2" in refusals(ctx)["bn"][0]


def _conv_bn_model(rng, **bn_attrs):
    b = GraphBuilder()
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(x, 3, 4, rng, name="conv")
    return b, y


def test_refuses_when_conv_output_has_two_consumers():
    rng = RNG(8)
    b, y = _conv_bn_model(rng)
    z = b.batchnorm(y, 4, rng, name="bn")
    r = b.node("Relu", [y])
    b.output(z)
    b.output(r)
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert "BatchNormalization" in op_types(out)
    assert "2 consumers" in refusals(ctx)["bn"][0]


def test_refuses_when_conv_output_is_a_graph_output():
    rng = RNG(9)
    b, y = _conv_bn_model(rng)
    z = b.batchnorm(y, 4, rng, name="bn")
    b.output(y)
    b.output(z)
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert op_types(out) == ["Conv", "BatchNormalization"]
    assert "graph output" in refusals(ctx)["bn"][0]
    assert_parity(b.model(), out)


def test_refuses_training_mode_bn():
    rng = RNG(10)
    b, y = _conv_bn_model(rng)
    b.output(b.batchnorm(y, 4, rng, name="bn", training_mode=1))
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert "BatchNormalization" in op_types(out)
    assert "training_mode=1" in refusals(ctx)["bn"][0]


def test_refuses_non_constant_bn_parameters():
    rng = RNG(11)
    b, y = _conv_bn_model(rng)
    mean_in = b.input("mean", [4])
    gamma, beta, _, var = bn_params(4, rng)
    z = b.node("BatchNormalization", [y, b.const(gamma), b.const(beta), mean_in, b.const(var)], name="bn")
    b.output(z)
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert "BatchNormalization" in op_types(out)
    assert "mean is the graph input 'mean'" in refusals(ctx)["bn"][0]


@pytest.mark.parametrize(
    "var_value,eps,expect",
    [(-1.0, 1e-5, "<= 0 at channel 2"), (np.nan, 1e-5, "var is nan at channel 2"), (0.0, 0.0, "<= 0 at channel 2")],
)
def test_refuses_bad_variance_and_names_the_channel(var_value, eps, expect):
    rng = RNG(12)
    b, y = _conv_bn_model(rng)
    gamma, beta, mean, var = bn_params(4, rng)
    var[2] = var_value
    z = b.node(
        "BatchNormalization", [y, b.const(gamma), b.const(beta), b.const(mean), b.const(var)], name="bn", epsilon=eps
    )
    b.output(z)
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert "BatchNormalization" in op_types(out)
    assert expect in refusals(ctx)["bn"][0]


def test_fp16_fold_that_would_overflow_is_refused():
    rng = RNG(13)
    b = GraphBuilder(dtype=np.float16)
    x = b.input("x", [1, 3, 6, 6])
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    w[1] = 3000
    y = b.node("Conv", [x, b.weight(w)], name="conv")
    gamma, beta, mean, var = bn_params(4, rng, np.float16)
    var[1] = np.float16(1e-4)
    gamma[1] = 100
    b.output(b.node("BatchNormalization", [y, b.const(gamma), b.const(beta), b.const(mean), b.const(var)], name="bn"))
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert "BatchNormalization" in op_types(out)
    assert "overflow float16" in refusals(ctx)["bn"][0]


def test_fp16_fold_within_range_is_exact_to_fp16_precision():
    from normonnx.validate.parity import Gate

    rng = RNG(14)
    b = GraphBuilder(dtype=np.float16)
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(x, 3, 4, rng)
    b.output(b.batchnorm(y, 4, rng))
    model = b.model()
    out, _ = apply(model, FoldIntoProducer())
    assert op_types(out) == ["Conv"]
    assert out.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert_parity(model, out, gate=Gate(5e-3, 5e-3))


def test_shared_weight_is_cloned_not_mutated():
    rng = RNG(15)
    b = GraphBuilder()
    x = b.input("x", [1, 3, 6, 6])
    w = b.weight(rng.standard_normal((3, 3, 3, 3)), name="shared_w")
    y1 = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    z1 = b.batchnorm(y1, 3, rng)
    y2 = b.node("Conv", [z1, w], pads=[1, 1, 1, 1])
    b.output(y2)
    model = b.model()
    out, _ = apply(model, FoldIntoProducer())
    assert op_types(out) == ["Conv", "Conv"]
    conv2_w = out.graph.node[1].input[1]
    assert conv2_w == "shared_w"
    assert out.graph.node[0].input[1] != "shared_w"
    assert_parity(model, out)


def test_per_channel_mul_that_varies_along_space_is_refused():
    rng = RNG(16)
    b, y = _conv_bn_model(rng)
    z = b.node("Mul", [y, b.weight(rng.standard_normal((1, 1, 6, 6)))], name="mul")
    b.output(z)
    out, ctx = apply(b.model(), FoldIntoProducer())
    assert op_types(out) == ["Conv", "Mul"]
    assert "varies along more than the feature axis" in refusals(ctx)["mul"][0]


def test_custom_domain_conv_is_left_alone():
    rng = RNG(17)
    b = GraphBuilder()
    x = b.input("x", [1, 3, 6, 6])
    w = b.weight(rng.standard_normal((4, 3, 3, 3)))
    b.nodes.append(onnx.helper.make_node("Conv", [x, w], ["y"], name="custom", domain="com.example"))
    b.custom_domains.append("com.example")
    b.output(b.batchnorm("y", 4, rng, name="bn"), shape=[1, 4, 4, 4])
    model = b.model()
    out, ctx = apply(model, FoldIntoProducer())
    assert op_types(out) == ["Conv", "BatchNormalization"]
    assert "bn" in refusals(ctx)


def _bn_then(op_after: str, const_shape, consumers: int = 1):
    """caffe2's BatchNorm + Scale after a Concat (DenseNet's pre-activation): nothing linear before it."""
    rng = RNG(3)
    b = GraphBuilder()
    x = b.input("x", [2, 4, 5, 5])
    y = b.batchnorm(b.node("Relu", [x]), 4, rng, name="bn")
    if op_after == "BatchNormalization":
        z = b.batchnorm(y, 4, rng, name="bn2")
    else:
        z = b.node(op_after, [y, b.const(rng.uniform(0.5, 2.0, const_shape).astype(np.float32))])
    b.output(b.node("Relu", [z]))
    if consumers == 2:
        b.output(b.node("Neg", [y]))
    return b.model()


@pytest.mark.parametrize(
    "op_after, const_shape", [("Mul", (4, 1, 1)), ("Add", (1, 4, 1, 1)), ("Div", (1,)), ("Sub", (4, 1, 1)),
                              ("BatchNormalization", None)],
)  # fmt: skip
def test_an_affine_after_a_batchnorm_goes_into_it(op_after, const_shape):
    model = _bn_then(op_after, const_shape)
    out, _ = apply(model, FoldIntoProducer())
    assert op_types(out) == ["Relu", "BatchNormalization", "Relu"]
    assert_parity(model, out)


def test_an_affine_on_a_batchnorm_read_twice_stays():
    model = _bn_then("Mul", (4, 1, 1), consumers=2)
    out, _ = apply(model, FoldIntoProducer())
    assert op_types(out).count("Mul") == 1
    assert_parity(model, out)


def test_an_affine_varying_along_space_after_a_batchnorm_stays():
    model = _bn_then("Mul", (4, 5, 1))
    out, _ = apply(model, FoldIntoProducer())
    assert "Mul" in op_types(out)
    assert_parity(model, out)


def test_fold_infers_the_rank_a_scale_after_a_batchnorm_needs():
    """No op in this graph reads a shape, yet [C, 1, 1] lines up with the channels only at rank 4."""
    from normonnx.pipelines.fold import fold

    model = _bn_then("Mul", (4, 1, 1))
    out, _ = fold(model)
    assert "Mul" not in op_types(out)
    assert_parity(model, out)
