"""fold-constants: weight-only subgraphs evaluated once (WS in every form, weight_norm, raw-export junk)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.families import ref_weight_standardize
from normonnx.passes.fold_constants import FoldConstants
from normonnx.pipelines.fold import fold
from tests.builders import GraphBuilder, apply, assert_parity, folded, op_types


def _reduce_mean(b: GraphBuilder, x: str, axes: list[int]) -> str:
    if b.opset >= 18:
        return b.node("ReduceMean", [x, b.const(np.array(axes, np.int64))])
    return b.node("ReduceMean", [x], axes=axes)


def _ws_subgraph(b: GraphBuilder, w: str, eps_in: str, unbiased: bool, fan: int, gain: str | None, scale: bool) -> str:
    axes = [1, 2, 3]
    mean = _reduce_mean(b, w, axes)
    d = b.node("Sub", [w, mean])
    var = _reduce_mean(b, b.node("Pow", [d, b.const(np.array(2.0, np.float32))]), axes)
    if unbiased:
        var = b.node("Mul", [var, b.const(np.array(fan / (fan - 1), np.float32))])
    if eps_in == "var":
        std = b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, np.float32))])])
    else:
        std = b.node("Add", [b.node("Sqrt", [var]), b.const(np.array(1e-5, np.float32))])
    y = b.node("Div", [d, std], name="ws_div")
    if scale:
        y = b.node("Mul", [y, b.const(np.array(fan**-0.5, np.float32))])
    if gain:
        y = b.node("Mul", [y, gain])
    return y


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize(
    "eps_in,unbiased,with_gain,scale",
    [("var", False, False, False), ("std", True, False, False), ("var", True, True, True), ("std", False, True, False)],
)
def test_weight_standardization_variants_fold_to_one_conv(opset, eps_in, unbiased, with_gain, scale):
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=opset)
    x = b.input("x", [1, 4, 8, 8])
    w = b.weight(rng.standard_normal((6, 4, 3, 3)))
    gain = b.weight(rng.uniform(0.5, 2, (6, 1, 1, 1))) if with_gain else None
    ws = _ws_subgraph(b, w, eps_in, unbiased, 36, gain, scale)
    b.output(b.node("Conv", [x, ws, b.weight(rng.standard_normal(6))], pads=[1, 1, 1, 1], name="conv"))
    model = b.model()
    out, ctx = apply(model, FoldConstants())
    onnx.checker.check_model(out, full_check=True)
    assert op_types(out) == ["Conv"]
    assert "conv" in next(iter(folded(ctx).values()))
    assert_parity(model, out)


@pytest.mark.parametrize("outputs", [3, 1])
def test_timm_style_training_mode_batchnorm_on_weight_folds(outputs):
    """torch writes 3 outputs (onnxruntime runs it); the 1-output form needs the reference evaluator."""
    rng = np.random.default_rng(1)
    b = GraphBuilder(opset=15)
    x = b.input("x", [1, 4, 8, 8])
    w_value = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    flat = b.node("Reshape", [b.weight(w_value), b.const(np.array([1, 6, -1], np.int64))])
    ones, zeros = np.ones(6, np.float32), np.zeros(6, np.float32)
    bn = b.node(
        "BatchNormalization",
        [flat, b.const(ones), b.const(zeros), b.const(zeros), b.const(ones)],
        n_out=outputs,
        training_mode=1,
        epsilon=1e-6,
    )
    bn = bn if outputs == 1 else bn[0]
    back = b.node("Reshape", [bn, b.const(np.array([6, 4, 3, 3], np.int64))])
    b.output(b.node("Conv", [x, back], pads=[1, 1, 1, 1]))
    model = b.model()
    out, _ctx = apply(model, FoldConstants())
    assert op_types(out) == ["Conv"]
    w_folded = onnx.numpy_helper.to_array(out.graph.initializer[0])
    expected = ref_weight_standardize(w_value.astype(np.float64), eps=1e-6)
    np.testing.assert_allclose(w_folded, expected, rtol=1e-5, atol=1e-5)
    if outputs == 3:
        assert_parity(model, out)


def test_weight_norm_folds():
    rng = np.random.default_rng(2)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 4, 8, 8])
    v = b.weight(rng.standard_normal((6, 4, 3, 3)))
    g = b.weight(rng.uniform(0.5, 2, (6, 1, 1, 1)))
    norm = b.node("ReduceL2", [v], axes=[1, 2, 3])
    w = b.node("Mul", [g, b.node("Div", [v, norm])])
    b.output(b.node("Conv", [x, w]))
    model = b.model()
    out, ctx = apply(model, FoldConstants())
    assert op_types(out) == ["Conv"]
    assert any(d.family == "weightnorm" and d.folded for d in ctx.decisions)
    assert_parity(model, out)


def test_large_weights_have_no_size_limit():
    rng = np.random.default_rng(3)
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, 256, 6, 6])
    w = b.weight(rng.standard_normal((256, 256, 3, 3)))
    b.output(b.node("Conv", [x, _ws_subgraph(b, w, "var", False, 2304, None, False)], pads=[1, 1, 1, 1]))
    model = b.model()
    out, _ = apply(model, FoldConstants())
    assert op_types(out) == ["Conv"]
    assert_parity(model, out)


def test_raw_dynamo_zero_bias_becomes_an_initializer_and_bn_then_folds():
    rng = np.random.default_rng(4)
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, 3, 8, 8])
    w = b.weight(rng.standard_normal((4, 3, 3, 3)))
    shape = b.node("Shape", [w], start=0, end=1)
    zero = b.node("CastLike", [b.const(np.array(0.0, np.float32)), x])
    bias = b.node("Expand", [zero, shape])
    y = b.node("Conv", [x, w, bias], pads=[1, 1, 1, 1])
    b.output(b.batchnorm(y, 4, rng))
    model = b.model()
    out, _report = fold(model)
    assert op_types(out) == ["Conv"]
    assert_parity(model, out)


def test_expansion_to_a_large_tensor_is_left_computed():
    np.random.default_rng(5)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 64, 128, 128])
    big = b.node(
        "ConstantOfShape",
        [b.const(np.array([1, 64, 128, 128], np.int64))],
        value=onnx.numpy_helper.from_array(np.array([0.5], np.float32)),
    )
    b.output(b.node("Add", [x, big]))
    model = b.model()
    out, _ = apply(model, FoldConstants())
    assert op_types(out) == ["ConstantOfShape", "Add"]
    assert sum(len(t.raw_data) for t in out.graph.initializer) < 1024
    assert_parity(model, out)


def test_constant_graph_output_and_random_ops_stay():
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 3])
    c = b.node("Add", [b.const(np.ones(3, np.float32)), b.const(np.ones(3, np.float32))])
    r = b.node("RandomNormal", [], shape=[2, 3], dtype=1)
    b.output(c, shape=[3])
    b.output(b.node("Add", [x, r]))
    out, _ = apply(b.model(), FoldConstants())
    assert op_types(out) == ["Add", "RandomNormal", "Add"]


def test_weight_computed_from_a_graph_input_is_reported_not_folded():
    from normonnx.pipelines.inspect import inspect_model

    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 4, 8, 8])
    w_in = b.input("w", [6, 4, 3, 3])
    b.output(b.node("Conv", [x, _ws_subgraph(b, w_in, "var", False, 36, None, False)]))
    ins = inspect_model(b.model())
    (item,) = ins.norms
    assert item.family == "weightstd" and not item.folded
    assert "graph input" in item.why


def test_only_the_nodes_evaluated_are_written_out(monkeypatch):
    """Writing every constant node out at each survey cost more than evaluating them (picodet: 5070
    node exports for 878 evaluated): a constant node no batch evaluates is never written out."""
    import normonnx.passes.fold_constants as fc

    written: list[str] = []
    real = fc.node_proto
    monkeypatch.setattr(fc, "node_proto", lambda node: written.append(node.name) or real(node))
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 4, 8, 8])
    w = b.const(rng.standard_normal((6, 4, 3, 3)).astype(np.float32))
    b.output(b.node("Conv", [x, _ws_subgraph(b, w, "var", False, 36, None, False)]))
    kept = b.node("Add", [b.const(np.ones(3, np.float32)), b.const(np.ones(3, np.float32))], name="kept_add")
    b.output(kept, shape=[3])
    model = b.model()
    out, _ = apply(model, FoldConstants())
    assert "ReduceMean" not in op_types(out) and "kept_add" in [n.name for n in out.graph.node]
    assert_parity(model, out)
    evaluated = {n.name for n in model.graph.node} - {"kept_add"} - {n.name for n in out.graph.node}
    assert written and set(written) <= evaluated, (written, evaluated)
