"""fold-into-consumer: an inference BatchNorm placed before Conv / Gemm / MatMul."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.passes.fold_into_consumer import FoldIntoConsumer
from tests.builders import GraphBuilder, apply, assert_parity, bn_params, folded, op_types, refusals


def _bn_conv(rng, conv_attrs, group=1, cin=6, cout=4, dims=2, zero_shift=False):
    b = GraphBuilder()
    x = b.input("x", [2, cin] + [7] * dims)
    if zero_shift:
        gamma, _, _, var = bn_params(cin, rng)
        zeros = np.zeros(cin, np.float32)
        z = b.node("BatchNormalization", [x, b.const(gamma), b.const(zeros), b.const(zeros), b.const(var)], name="bn")
    else:
        z = b.batchnorm(x, cin, rng, name="bn")
    y = b.conv(z, cin, cout, rng, group=group, name="conv", dims=dims, **conv_attrs)
    b.output(y)
    return b.model()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("group,cin,cout", [(1, 6, 4), (2, 6, 4), (6, 6, 6), (3, 6, 9)])
@pytest.mark.parametrize("attrs", [{}, {"strides": None, "dilations": None}])
def test_unpadded_conv_folds_exactly(dims, group, cin, cout, attrs):
    attrs = {k: [2] * dims for k in attrs}
    model = _bn_conv(np.random.default_rng(0), attrs, group, cin, cout, dims)
    out, ctx = apply(model, FoldIntoConsumer())
    onnx.checker.check_model(out, full_check=True)
    assert op_types(out) == ["Conv"]
    assert "conv" in folded(ctx)["bn"]
    assert_parity(model, out)


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"}])
def test_padded_conv_is_refused_with_the_reason(attrs):
    model = _bn_conv(np.random.default_rng(1), attrs)
    out, ctx = apply(model, FoldIntoConsumer())
    assert op_types(out) == ["BatchNormalization", "Conv"]
    assert "zero-pads its input" in refusals(ctx)["bn"][0]


def test_padded_conv_folds_when_the_shift_is_zero():
    model = _bn_conv(np.random.default_rng(2), {"pads": [1, 1, 1, 1]}, zero_shift=True)
    out, _ = apply(model, FoldIntoConsumer())
    assert op_types(out) == ["Conv"]
    assert_parity(model, out)


def test_same_padding_with_1x1_kernel_folds():
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", [2, 6, 7, 7])
    z = b.batchnorm(x, 6, rng, name="bn")
    b.output(b.conv(z, 6, 4, rng, k=1, auto_pad="SAME_UPPER", strides=[2, 2]))
    model = b.model()
    out, _ = apply(model, FoldIntoConsumer())
    assert op_types(out) == ["Conv"]
    assert_parity(model, out)


def test_conv_transpose_after_bn_is_refused_unless_shift_is_zero():
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    x = b.input("x", [2, 4, 5, 5])
    z = b.batchnorm(x, 4, rng, name="bn")
    b.output(b.node("ConvTranspose", [z, b.weight(rng.standard_normal((4, 3, 3, 3)))]))
    out, ctx = apply(b.model(), FoldIntoConsumer())
    assert op_types(out) == ["BatchNormalization", "ConvTranspose"]
    assert "fewer taps" in refusals(ctx)["bn"][0]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_after_bn(trans_b):
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", [3, 4])
    z = b.batchnorm(x, 4, rng)
    w = b.weight(rng.standard_normal((5, 4) if trans_b else (4, 5)))
    b.output(b.node("Gemm", [z, w, b.weight(rng.standard_normal(5))], transB=trans_b, alpha=0.7, beta=1.3))
    model = b.model()
    out, _ = apply(model, FoldIntoConsumer())
    assert op_types(out) == ["Gemm"]
    assert_parity(model, out)


def test_gemm_trans_a_is_refused():
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    x = b.input("x", [4, 4])
    z = b.batchnorm(x, 4, rng, name="bn")
    b.output(b.node("Gemm", [z, b.weight(rng.standard_normal((4, 5)))], transA=1))
    _out, ctx = apply(b.model(), FoldIntoConsumer())
    assert "transA=1" in refusals(ctx)["bn"][0]


@pytest.mark.parametrize("bias", [True, False])
def test_matmul_after_bn_rank2(bias):
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", [3, 4])
    z = b.batchnorm(x, 4, rng)
    y = b.node("MatMul", [z, b.weight(rng.standard_normal((4, 5)))])
    if bias:
        y = b.node("Add", [y, b.weight(rng.standard_normal(5))])
    b.output(y)
    model = b.model()
    out, _ = apply(model, FoldIntoConsumer())
    assert op_types(out) == ["MatMul", "Add"]
    assert_parity(model, out)


def test_bn_with_two_consumers_is_refused():
    rng = np.random.default_rng(8)
    b = GraphBuilder()
    x = b.input("x", [2, 6, 7, 7])
    z = b.batchnorm(x, 6, rng, name="bn")
    b.output(b.conv(z, 6, 4, rng))
    b.output(b.node("Relu", [z]))
    _out, ctx = apply(b.model(), FoldIntoConsumer())
    assert "2 consumers" in refusals(ctx)["bn"][0]
