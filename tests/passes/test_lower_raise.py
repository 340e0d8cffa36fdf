"""lower-* and raise-*: exact both ways, and round trips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.families import BY_OP
from normonnx.passes.lower import Lower
from normonnx.passes.raise_norms import RaiseGroupedInstanceNorm, RaiseMoments
from normonnx.pipelines.emit import emit
from tests.builders import GraphBuilder, apply, assert_parity, decomposed_norm, op_types, refusals
from tests.helpers import rng as seeded

ALL = frozenset({"layernorm", "rmsnorm", "instancenorm", "groupnorm"})


def _ln_model(opset=17, axis=-1, shape=(2, 5, 8)):
    b = GraphBuilder(opset=opset)
    x = b.input("x", list(shape))
    norm_shape = shape[axis:]
    g, beta = b.weight(seeded().uniform(0.5, 2, norm_shape)), b.weight(seeded(1).standard_normal(norm_shape))
    b.output(b.node("LayerNormalization", [x, g, beta], axis=axis, epsilon=1e-5))
    return b.model()


def _op_model(op: str, opset: int, **attrs):
    b = GraphBuilder(opset=opset)
    rng = seeded(2)
    if op == "RMSNormalization":
        x = b.input("x", [2, 5, 8])
        b.output(b.node(op, [x, b.weight(rng.uniform(0.5, 2, 8))], epsilon=1e-6), shape=[2, 5, 8])
    elif op == "InstanceNormalization":
        x = b.input("x", [2, 4, 6, 6])
        b.output(b.node(op, [x, b.weight(rng.uniform(0.5, 2, 4)), b.weight(rng.standard_normal(4))]))
    elif op == "GroupNormalization":
        x = b.input("x", [2, 6, 4, 4])
        n = 3 if opset < 21 else 6
        y = b.node(op, [x, b.weight(rng.uniform(0.5, 2, n)), b.weight(rng.standard_normal(n))], num_groups=3)
        b.output(y, shape=[2, 6, 4, 4])
    elif op == "BatchNormalization":
        x = b.input("x", [2, 4, 6, 6])
        b.output(b.batchnorm(x, 4, rng))
    return b.model()


@pytest.mark.parametrize("opset,axis", [(17, -1), (17, -2), (18, -1), (18, 1)])
def test_layernorm_lower_then_raise_round_trip(opset, axis):
    model = _ln_model(opset, axis)
    low, _ = apply(model, Lower("layernorm"))
    assert "LayerNormalization" not in op_types(low) and "ReduceMean" in op_types(low)
    assert_parity(model, low)
    high, _ = apply(low, RaiseMoments(ALL))
    assert op_types(high) == ["LayerNormalization"]
    assert onnx.helper.get_attribute_value(high.graph.node[0].attribute[0]) in (axis, axis % 3)
    assert_parity(model, high)


@pytest.mark.parametrize(
    "op,opset",
    [("RMSNormalization", 23), ("InstanceNormalization", 17), ("GroupNormalization", 21), ("GroupNormalization", 18)],
)
def test_lowering_is_exact(op, opset):
    model = _op_model(op, opset)
    low, ctx = apply(model, Lower(BY_OP[op].key))
    onnx.checker.check_model(low, full_check=True)
    assert op not in op_types(low), refusals(ctx)
    assert_parity(model, low)


@pytest.mark.parametrize(
    "op,opset", [("RMSNormalization", 23), ("InstanceNormalization", 17), ("GroupNormalization", 21)]
)
def test_raise_after_lower_gives_back_the_op(op, opset):
    model = _op_model(op, opset)
    low, _ = apply(model, Lower(BY_OP[op].key))
    high, _ = apply(low, RaiseMoments(ALL), RaiseGroupedInstanceNorm(ALL))
    assert op_types(high) == [op]
    assert_parity(model, high)


def test_batchnorm_lowers_to_one_mul_and_one_add():
    model = _op_model("BatchNormalization", 15)
    low, _ = apply(model, Lower("batchnorm"))
    assert op_types(low) == ["Mul", "Add"]
    assert_parity(model, low)


@pytest.mark.parametrize("inverse", ["div", "reciprocal", "pow"])
@pytest.mark.parametrize("opset", [13, 18])
def test_decomposed_layernorm_raises_and_lowers_back(inverse, opset):
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 5, 8])
    y = decomposed_norm(b, x, [-1], inverse=inverse)
    y = b.node(
        "Add", [b.node("Mul", [y, b.weight(seeded().uniform(0.5, 2, 8))]), b.weight(seeded(1).standard_normal(8))]
    )
    b.output(y)
    model = b.model()
    up, _ = emit(model, 17 if opset < 17 else opset, "op")
    assert op_types(up) == ["LayerNormalization"]
    assert_parity(model, up)
    down, _ = emit(up, 13, "decomposed")
    assert "LayerNormalization" not in op_types(down)
    assert_parity(model, down)


def test_channels_first_layernorm_raises_with_transposes():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 6, 4, 4])
    y = decomposed_norm(b, x, [1])
    y = b.node("Add", [b.node("Mul", [y, b.weight(seeded().uniform(0.5, 2, (6, 1, 1)))]), b.weight(np.ones((6, 1, 1)))])
    b.output(y)
    model = b.model()
    out, _ = apply(model, RaiseMoments(ALL))
    assert op_types(out) == ["Transpose", "LayerNormalization", "Transpose"]
    assert_parity(model, out)


@pytest.mark.parametrize("inverse", ["div", "reciprocal"])
def test_rmsnorm_forms_raise_at_23_only(inverse):
    b = GraphBuilder(opset=23)
    x = b.input("x", [2, 5, 8])
    b.output(b.node("Mul", [decomposed_norm(b, x, [-1], centered=False, inverse=inverse), b.weight(np.full(8, 1.5))]))
    model = b.model()
    out, _ = apply(model, RaiseMoments(ALL))
    assert op_types(out) == ["RMSNormalization"]
    assert_parity(model, out)


def test_groupnorm_reduce_mean_form_raises():
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 6, 4, 4])
    r = b.node("Reshape", [x, b.const(np.array([2, 3, -1], np.int64))])
    y = b.node("Reshape", [decomposed_norm(b, r, [2]), b.node("Shape", [x])])
    rng = seeded(3)
    b.output(
        b.node("Add", [b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (6, 1, 1)))]), b.weight(np.ones((6, 1, 1)))])
    )
    model = b.model()
    out, _ = apply(model, RaiseMoments(ALL))
    assert op_types(out) == ["GroupNormalization"]
    assert_parity(model, out)


def test_groupnorm_instancenorm_form_with_per_group_affine_raises_exactly():
    rng = seeded(4)
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 6, 4, 4])
    r = b.node("Reshape", [x, b.const(np.array([0, 3, -1], np.int64))])
    n = b.node("InstanceNormalization", [r, b.weight(rng.uniform(0.5, 2, 3)), b.weight(rng.standard_normal(3))])
    y = b.node("Reshape", [n, b.node("Shape", [x])])
    b.output(
        b.node("Add", [b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (6, 1, 1)))]), b.weight(np.ones((6, 1, 1)))])
    )
    model = b.model()
    out, _ = apply(model, RaiseGroupedInstanceNorm(ALL))
    assert op_types(out) == ["GroupNormalization"]
    assert_parity(model, out)


def test_groupnorm_18_to_21_converts_the_per_group_scale():
    """onnx's version converter relabels GN-18 as 21 and keeps scale[G]: onnxruntime then fails."""
    model = _op_model("GroupNormalization", 18)
    out, report = emit(model, 21, "op")
    assert op_types(out) == ["GroupNormalization"] and report.opset == 21
    scale = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert list(scale.dims) == [6]
    assert_parity(model, out)


def test_eps_in_std_is_refused_with_the_reason():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    b.output(decomposed_norm(b, x, [-1], eps_in_std=True))
    out, ctx = apply(b.model(), RaiseMoments(ALL))
    assert "LayerNormalization" not in op_types(out)
    assert any("standard deviation" in r for rs in refusals(ctx).values() for r in rs)


def test_shared_intermediate_is_refused():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    mean = b.node("ReduceMean", [x], axes=[-1])
    d = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Pow", [d, b.const(np.array(2.0, np.float32))])], axes=[-1])
    y = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, np.float32))])])], name="norm")
    b.output(y)
    b.output(b.node("Relu", [mean]))
    out, ctx = apply(b.model(), RaiseMoments(ALL))
    assert "LayerNormalization" not in op_types(out)
    assert "also used by Relu" in refusals(ctx)["norm"][0]


def test_layernorm_with_used_statistics_outputs_is_lowered_with_them():
    """Mean and InvStdDev are written from the subgraph's own mean and std (numpy: the expected values)."""
    import onnxruntime as ort

    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    y, mean, inv = b.node("LayerNormalization", [x, b.weight(np.linspace(0.5, 2, 8))], n_out=3, name="ln")
    for t in (y, mean, inv):
        b.output(t)
    out, _ = apply(b.model(), Lower("layernorm"))
    assert "LayerNormalization" not in op_types(out)
    data = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32) * 3 + 1
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data})
    mu, var = data.mean(-1, keepdims=True), data.var(-1, keepdims=True)
    np.testing.assert_allclose(got[1], mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], 1 / np.sqrt(var + 1e-5), rtol=1e-5)
    np.testing.assert_allclose(got[0], (data - mu) / np.sqrt(var + 1e-5) * np.linspace(0.5, 2, 8), rtol=1e-4, atol=1e-5)


def test_fp16_lowering_keeps_statistics_in_fp32():
    """x^2 of 1000 overflows fp16 (max 65504): the naive fp16 subgraph divides by inf, ours does not.

    Run with onnx's reference evaluator, which computes fp16 in fp16 as GPU kernels do
    (onnxruntime's CPU provider quietly upcasts fp16 arithmetic to fp32).
    """
    from onnx.reference import ReferenceEvaluator

    b = GraphBuilder(opset=17, dtype=np.float16)
    x = b.input("x", [2, 8])
    b.output(b.node("LayerNormalization", [x, b.weight(np.ones(8)), b.weight(np.zeros(8))], axis=-1))
    model = b.model()
    low, _ = apply(model, Lower("layernorm"))
    assert op_types(low).count("Cast") == 2
    naive = GraphBuilder(opset=17, dtype=np.float16)
    xn = naive.input("x", [2, 8])
    naive.output(decomposed_norm(naive, xn, [-1]))
    data = {"x": (np.random.default_rng(0).standard_normal((2, 8)) * 1000).astype(np.float16)}
    ours = dict(enumerate(ReferenceEvaluator(low).run(None, data)))
    theirs = dict(enumerate(ReferenceEvaluator(naive.model()).run(None, data)))
    expected = data["x"].astype(np.float64)
    expected = (expected - expected.mean(-1, keepdims=True)) / np.sqrt(expected.var(-1, keepdims=True) + 1e-5)
    got = next(iter(ours.values())).astype(np.float64)
    assert np.isfinite(got).all() and np.abs(got - expected).max() < 5e-3
    naive_error = np.abs(np.nan_to_num(next(iter(theirs.values())).astype(np.float64)) - expected).max()
    assert naive_error > 0.5  # the overflowed variance flattens the output


@pytest.mark.parametrize("target,reason", [([2, 0, -1], "G > 0"), ([1, 3, -1], "batch 1"), ([0, -1, 32], "G > 0")])
def test_grouped_views_that_are_not_groupnorm_are_refused(target, reason):
    rng = seeded(8)
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 6, 4, 4])
    r = b.node("Reshape", [x, b.const(np.array(target, np.int64))])
    n = b.node("InstanceNormalization", [r, b.weight(np.ones(3)), b.weight(np.zeros(3))], name="in")
    y = b.node("Reshape", [n, b.node("Shape", [x])])
    b.output(b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (6, 1, 1)))]), shape=[2, 6, 4, 4])
    model = b.model()
    out, ctx = apply(model, RaiseGroupedInstanceNorm(ALL))
    assert "GroupNormalization" not in op_types(out)
    assert reason in refusals(ctx)["in"][0]


def test_bf16_lowering_keeps_statistics_in_fp32():
    import ml_dtypes

    b = GraphBuilder(opset=18, dtype=ml_dtypes.bfloat16)
    x = b.input("x", [2, 8])
    b.output(b.node("LayerNormalization", [x, b.weight(np.ones(8)), b.weight(np.zeros(8))], axis=-1), shape=[2, 8])
    low, _ = apply(b.model(), Lower("layernorm"))
    casts = [n for n in low.graph.node if n.op_type == "Cast"]
    assert [onnx.helper.get_attribute_value(c.attribute[0]) for c in casts] == [
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.BFLOAT16,
    ]
