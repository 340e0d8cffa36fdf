"""fold-norm-affine (opt-in): LayerNorm/RMSNorm/GroupNorm affines into the following linear op."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from normonnx.passes.fold_norm_affine import FoldNormAffine
from tests.builders import GraphBuilder, apply, assert_parity, decomposed_norm, folded, op_types, refusals
from tests.helpers import rng as seeded


def _const_values(model: onnx.ModelProto, node_index: int, input_index: int) -> np.ndarray:
    name = model.graph.node[node_index].input[input_index]
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_op_form_into_matmul(op):
    rng = seeded()
    b = GraphBuilder(opset=23)
    x = b.input("x", [2, 5, 8])
    ins = [x, b.weight(rng.uniform(0.5, 2, 8))] + (
        [b.weight(rng.standard_normal(8))] if op == "LayerNormalization" else []
    )
    z = b.node(op, ins, axis=-1, name="norm")
    b.output(b.node("MatMul", [z, b.weight(rng.standard_normal((8, 6)))]), shape=[2, 5, 6])
    model = b.model()
    out, ctx = apply(model, FoldNormAffine())
    assert "norm" in folded(ctx)
    assert np.all(_const_values(out, 0, 1) == 1)
    assert op_types(out)[0] == op and "MatMul" in op_types(out)
    assert_parity(model, out)


def test_decomposed_layernorm_into_gemm():
    rng = seeded(1)
    b = GraphBuilder(opset=17)
    x = b.input("x", [4, 8])
    y = decomposed_norm(b, x, [-1])
    y = b.node("Add", [b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, 8))]), b.weight(rng.standard_normal(8))])
    b.output(b.node("Gemm", [y, b.weight(rng.standard_normal((6, 8))), b.weight(rng.standard_normal(6))], transB=1))
    model = b.model()
    out, _ctx = apply(model, FoldNormAffine())
    assert op_types(out).count("Mul") == 0 and op_types(out)[-1] == "Gemm"
    assert_parity(model, out)


@pytest.mark.parametrize(
    "op,opset,attrs,seed",
    [("GroupNormalization", 21, {"num_groups": 3}, 2), ("InstanceNormalization", 17, {}, 7)],
)
def test_per_channel_op_into_1x1_conv_keeps_its_parameter_shapes(op, opset, attrs, seed):
    """GroupNormalization-21 and InstanceNormalization take [C] scale and bias; the unit ones left behind too."""
    rng = seeded(seed)
    b = GraphBuilder(opset=opset)
    x = b.input("x", [2, 6, 5, 5])
    z = b.node(op, [x, b.weight(rng.uniform(0.5, 2, 6)), b.weight(rng.standard_normal(6))], name="norm", **attrs)
    b.output(b.conv(z, 6, 4, rng, k=1), shape=[2, 4, 5, 5])
    model = b.model()
    out, ctx = apply(model, FoldNormAffine())
    assert "norm" in folded(ctx)
    assert _const_values(out, 0, 1).shape == (6,) and np.all(_const_values(out, 0, 1) == 1)
    assert _const_values(out, 0, 2).shape == (6,) and not np.any(_const_values(out, 0, 2))
    onnx.checker.check_model(out, full_check=True)
    assert_parity(model, out)


def test_groupnorm_instancenorm_form_into_conv():
    rng = seeded(3)
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 6, 5, 5])
    r = b.node("Reshape", [x, b.const(np.array([0, 3, -1], np.int64))])
    n = b.node("InstanceNormalization", [r, b.weight(np.ones(3)), b.weight(np.zeros(3))], name="in")
    y = b.node("Reshape", [n, b.node("Shape", [x])])
    y = b.node(
        "Add", [b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (6, 1, 1)))]), b.weight(rng.standard_normal((6, 1, 1)))]
    )
    b.output(b.conv(y, 6, 4, rng, k=1))
    model = b.model()
    out, ctx = apply(model, FoldNormAffine())
    assert "in" in folded(ctx) and "Mul" not in op_types(out)
    assert_parity(model, out)


def test_refusals():
    rng = seeded(4)
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 6, 5, 5])
    z = b.node(
        "GroupNormalization",
        [x, b.weight(rng.uniform(0.5, 2, 6)), b.weight(rng.standard_normal(6))],
        num_groups=3,
        name="gn",
    )
    b.output(b.conv(z, 6, 4, rng, k=3, pads=[1, 1, 1, 1]), shape=[2, 4, 5, 5])
    t = b.input("t", [2, 5, 8])
    ln = b.node("LayerNormalization", [t, b.weight(np.ones(8)), b.weight(np.zeros(8))], name="ln")
    b.output(b.node("MatMul", [ln, b.weight(rng.standard_normal((8, 3)))]), shape=[2, 5, 3])
    b.output(b.node("Relu", [ln]), shape=[2, 5, 8])
    _out, ctx = apply(b.model(), FoldNormAffine())
    why = refusals(ctx)
    assert "zero-pads its input" in why["gn"][0]
    assert "2 consumers" in why["ln"][0]
    assert not folded(ctx)


def test_fold_cli_flag(cli, tmp_path):
    rng = seeded(5)
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    z = b.node("LayerNormalization", [x, b.weight(rng.uniform(0.5, 2, 8)), b.weight(rng.standard_normal(8))], name="ln")
    b.output(b.node("MatMul", [z, b.weight(rng.standard_normal((8, 6)))]), shape=[2, 5, 6])
    path = tmp_path / "ln.onnx"
    onnx.save(b.model(), path)
    r = cli("fold", path, "-o", tmp_path / "plain.onnx", "--json")
    assert r.code == 0 and json.loads(r.out)["folded"] == 0
    r = cli("fold", path, "-o", tmp_path / "affine.onnx", "--norm-affine", "--json")
    assert r.code == 0 and json.loads(r.out)["folded"] == 1


def test_converges_and_never_detaches_a_graph_output():
    rng = seeded(6)
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    z = b.node("LayerNormalization", [x, b.weight(rng.uniform(0.5, 2, 8)), b.weight(rng.standard_normal(8))], name="ln")
    b.output(b.node("MatMul", [z, b.weight(rng.standard_normal((8, 6)))]), shape=[2, 5, 6])
    t = b.input("t", [2, 5, 8])
    y = decomposed_norm(b, t, [-1])
    scaled = b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, 8))])
    b.output(scaled, shape=[2, 5, 8])
    shifted = b.node("Add", [scaled, b.weight(rng.standard_normal(8))])
    b.output(b.node("MatMul", [shifted, b.weight(rng.standard_normal((8, 3)))]), shape=[2, 5, 3])
    model = b.model()
    from normonnx.passes.rules import FoldOptions
    from normonnx.pipelines.fold import fold

    _out, report = fold(model, FoldOptions(fold_norm_affine=True), verify=True)
    assert report.rewrites["fold-norm-affine"] == 1  # the LayerNorm once; the graph output's Mul refused
    assert report.parity.passed
    assert any("graph output" in d.detail for d in report.decisions if not d.folded)


def test_a_width_wise_constant_is_not_taken_for_a_per_channel_one():
    rng = seeded(7)
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4, 4, 4])
    y = decomposed_norm(b, x, [2, 3])
    y = b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, (4,)))], name="mul_w")  # broadcasts along width
    b.output(b.conv(y, 4, 3, rng, k=1), shape=[2, 3, 4, 4])
    model = b.model()
    out, ctx = apply(model, FoldNormAffine())
    assert "Mul" in op_types(out) and not folded(ctx)
    assert_parity(model, out)
