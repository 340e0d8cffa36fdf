"""scan: every normalization found once, in the form the exporter wrote it."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx.graph.bridge import prepare_graph
from normonnx.recognize.scan import scan
from tests.builders import GraphBuilder, decomposed_norm


def _found(model):
    return [(f.family, f.form) for f in scan(prepare_graph(model))]


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "pow"])
def test_decomposed_layernorm_last_axis(opset, inverse):
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 5, 8])
    y = decomposed_norm(b, x, [-1], inverse=inverse)
    y = b.node("Add", [b.node("Mul", [y, b.weight(np.ones(8))]), b.weight(np.zeros(8))])
    b.output(y)
    assert _found(b.model()) == [("layernorm", "decomposed")]


def test_channels_first_layernorm():
    b = GraphBuilder()
    x = b.input("x", [2, 6, 4, 4])
    b.output(decomposed_norm(b, x, [1]))
    (f,) = scan(prepare_graph(b.model()))
    assert (f.family, f.form) == ("layernorm", "decomposed") and "channels-first" in f.detail


def test_instancenorm_with_per_channel_affine():
    b = GraphBuilder()
    x = b.input("x", [2, 6, 4, 4])
    y = decomposed_norm(b, x, [2, 3], square="mul")
    b.output(b.node("Add", [b.node("Mul", [y, b.weight(np.ones((6, 1, 1)))]), b.weight(np.zeros((6, 1, 1)))]))
    assert _found(b.model()) == [("instancenorm", "decomposed")]


def test_groupnorm_reduce_mean_form():
    b = GraphBuilder()
    x = b.input("x", [2, 6, 4, 4])
    r = b.node("Reshape", [x, b.const(np.array([2, 3, -1], np.int64))])
    y = b.node("Reshape", [decomposed_norm(b, r, [2]), b.const(np.array([2, 6, 4, 4], np.int64))])
    b.output(b.node("Add", [b.node("Mul", [y, b.weight(np.ones((6, 1, 1)))]), b.weight(np.zeros((6, 1, 1)))]))
    assert _found(b.model()) == [("groupnorm", "decomposed")]


def test_groupnorm_instancenorm_form_claims_its_affine():
    b = GraphBuilder()
    x = b.input("x", [2, 6, 4, 4])
    r = b.node("Reshape", [x, b.const(np.array([2, 3, -1], np.int64))])
    n = b.node("InstanceNormalization", [r, b.weight(np.ones(3)), b.weight(np.zeros(3))])
    y = b.node("Reshape", [n, b.const(np.array([2, 6, 4, 4], np.int64))])
    b.output(b.node("Add", [b.node("Mul", [y, b.weight(np.ones((6, 1, 1)))]), b.weight(np.zeros((6, 1, 1)))]))
    assert _found(b.model()) == [("groupnorm", "Reshape/InstanceNormalization/Reshape")]


@pytest.mark.parametrize("inverse", ["div", "reciprocal"])
def test_rmsnorm(inverse):
    b = GraphBuilder()
    x = b.input("x", [2, 5, 8])
    b.output(b.node("Mul", [decomposed_norm(b, x, [-1], centered=False, inverse=inverse), b.weight(np.ones(8))]))
    assert _found(b.model()) == [("rmsnorm", "decomposed")]


def test_eps_in_std_is_recognized_and_labelled():
    b = GraphBuilder()
    x = b.input("x", [2, 5, 8])
    b.output(decomposed_norm(b, x, [-1], eps_in_std=True))
    (f,) = scan(prepare_graph(b.model()))
    assert f.family == "layernorm" and "in std" in f.detail


def test_standard_ops_and_frozen_bn_pair():
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 6, 4, 4])
    y = b.node("LayerNormalization", [x, b.weight(np.ones((6, 4, 4)))], axis=1)
    y = b.node("GroupNormalization", [y, b.weight(np.ones(6)), b.weight(np.zeros(6))], num_groups=3)
    y = b.node("InstanceNormalization", [y, b.weight(np.ones(6)), b.weight(np.zeros(6))])
    y = b.node("Mul", [y, b.weight(np.full((1, 6, 1, 1), 2.0))])
    y = b.node("Add", [y, b.weight(np.full((1, 6, 1, 1), 0.5))])
    b.output(y)
    assert _found(b.model()) == [
        ("layernorm", "op"),
        ("groupnorm", "op"),
        ("instancenorm", "op"),
        ("affine", "Mul/Add per channel"),
    ]


def test_plain_arithmetic_is_not_a_normalization():
    b = GraphBuilder()
    x = b.input("x", [2, 8])
    y = b.node("Div", [x, b.node("Sqrt", [b.node("Add", [x, b.const(np.array(1.0, np.float32))])])])
    b.output(b.node("Mul", [y, b.const(np.array(2.0, np.float32))]))
    assert _found(b.model()) == []


def raw_moments_layernorm(clamp: str | None):
    """LayerNorm with var = E[x^2] - E[x]^2 (jax2tf, tf2onnx), optionally clamped at 0."""
    import numpy as np

    from tests.builders import GraphBuilder, reduce_mean
    from tests.helpers import rng

    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 6, 16])
    mean = reduce_mean(b, x, [-1])
    var = b.node("Sub", [reduce_mean(b, b.node("Mul", [x, x]), [-1]), b.node("Mul", [mean, mean])])
    if clamp == "max":
        var = b.node("Max", [var, b.const(np.array(0.0, np.float32))])
    elif clamp == "relu":
        var = b.node("Relu", [var])
    den = b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, np.float32))])])
    y = b.node("Div", [b.node("Sub", [x, mean]), den])
    y = b.node("Add", [b.node("Mul", [y, b.weight(r.standard_normal(16))]), b.weight(r.standard_normal(16))])
    b.output(y)
    return b.model()


@pytest.mark.parametrize("clamp", [None, "max", "relu"])
def test_layernorm_from_raw_moments_is_recognized_and_raised_exactly(clamp):
    from normonnx.pipelines.emit import emit
    from tests.builders import assert_parity, op_types

    model = raw_moments_layernorm(clamp)
    found = scan(prepare_graph(model))
    assert [(f.family, f.form) for f in found] == [("layernorm", "decomposed")]
    out, _ = emit(model, 17, "op")
    assert op_types(out) == ["LayerNormalization"]
    assert_parity(model, out, shapes={"x": (2, 6, 16)})


def test_tf2onnx_moments_form_with_the_affine_inside_is_a_layernorm():
    """tf2onnx's Keras LayerNormalization: GlobalAveragePool means, y = x * m + (beta - mean * m)."""
    import numpy as np

    from tests.builders import GraphBuilder
    from tests.helpers import rng

    r = rng()
    b = GraphBuilder(opset=15)
    x = b.input("x", ["batch", 6, 16])
    mean = b.node("GlobalAveragePool", [x])
    d = b.node("Sub", [x, mean])
    var = b.node("GlobalAveragePool", [b.node("Mul", [d, d])])
    inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-3, np.float32))])])])
    m = b.node("Mul", [inv, b.weight(r.standard_normal(16))])
    shift = b.node("Sub", [b.weight(r.standard_normal(16)), b.node("Mul", [mean, m])])
    y = b.node("Add", [b.node("Mul", [x, m]), shift])
    b.output(y)
    found = scan(prepare_graph(b.model()))
    assert [(f.family, f.form) for f in found] == [("layernorm", "decomposed")]
    assert "tf2onnx" in found[0].detail and len(found[0].nodes) == 12  # every node of the graph


def test_attention_keys_after_a_layernorm_are_no_weight_standardization():
    """scores = q @ Transpose(LN(x) @ Wk): the keys are MatMul's second input and are computed from a
    decomposed LayerNorm (ReduceMean, Sub), but they are activations: the LayerNorm is found as one."""
    from tests.helpers import rng

    r = rng()
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    h = decomposed_norm(b, x, [-1])
    q = b.node("MatMul", [h, b.weight(r.standard_normal((8, 8)))])
    k = b.node("Transpose", [b.node("MatMul", [h, b.weight(r.standard_normal((8, 8)))])], perm=[0, 2, 1])
    b.output(b.node("Softmax", [b.node("MatMul", [q, k])], axis=-1))
    found = scan(prepare_graph(b.model()))
    assert [(f.family, f.form) for f in found] == [("layernorm", "decomposed")], found
