"""rescale-streams (issue 20): tensors beyond the half range carried at 2^-k, exactly.

Each graph is hand-built with a stream whose peak is known; the expected scale and the expected
boundary constants are computed here by hand (powers of two of the original values), and the
rescaled model is run against the original on onnxruntime: a power-of-two scale changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from normonnx.graph.bridge import prepare_graph
from normonnx.passes.manager import Pipeline, Stage
from normonnx.passes.rescale import HEADROOM, RescaleStreams, plan_rescale
from tests.builders import GraphBuilder, decomposed_norm, feeds_for, run_model

LIMIT = 65504.0 / 8  # what normonnx half asks of fp16
C = 8


def _calibrated(model) -> dict[str, float]:
    """Every tensor's peak on the seeded inputs (an independent run of the float32 model)."""
    from normonnx.validate.runners import RunOptions

    names = [o for n in model.graph.node for o in n.output]
    return RunOptions().runner(model).ranges(feeds_for(model), names)


def _rescaled(model):
    plan = plan_rescale(prepare_graph(model, always_infer=True), _calibrated(model), LIMIT)
    out = Pipeline((Stage((RescaleStreams(plan),)),)).apply(model, always_infer=True).model
    return plan, out


def _init(model, name_part: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if name_part in t.name)


def residual_stream(reader: str = "layernorm", gain: float = 2e5):
    """x -> MatMul (weights x gain: the stream's writer) -> Add(MatMul branch) -> ``reader`` -> MatMul -> y."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=18)
    x = b.input("x", [2, 4, C])
    w_in = b.weight(rng.standard_normal((C, C)) * gain / np.sqrt(C), "w_in")
    stream = b.node("MatMul", [x, w_in], name="writer")
    branch = b.node("MatMul", [stream, b.weight(rng.standard_normal((C, C)) * 0.1, "w_branch")], name="branch")
    branch = b.node("Add", [branch, b.weight(rng.standard_normal(C), "b_branch")], name="branch_bias")
    stream = b.node("Add", [stream, branch], name="residual")
    if reader == "layernorm":
        normed = b.node(
            "LayerNormalization", [stream, b.weight(np.ones(C), "gamma"), b.weight(np.zeros(C), "beta")], name="ln"
        )
    elif reader == "decomposed":
        normed = decomposed_norm(b, stream, [-1])
    elif reader == "sigmoid":
        normed = b.node("Sigmoid", [stream], name="sigmoid")
    else:
        normed = stream
    y = b.node("MatMul", [normed, b.weight(rng.standard_normal((C, 3)), "w_head")], name="head", outputs=["y"])
    b.output(y)
    return b.model()


def test_a_residual_stream_carries_one_power_of_two_scale_and_computes_the_same():
    model = residual_stream()
    stream_peak = max(_calibrated(model).values())  # the residual sum: nothing else comes near it
    plan, out = _rescaled(model)
    assert len(plan.regions) == 1, plan.refused
    region = plan.regions[0]
    expected_k = int(np.ceil(np.log2(stream_peak * HEADROOM / LIMIT)))
    assert region.k == expected_k
    assert stream_peak * 2.0**-region.k <= LIMIT / HEADROOM
    s = 2.0**-region.k
    # The writer's weights carry the scale, the branch's bias too; the branch's weights read and write the
    # stream (s/s = 1) and stay; LayerNorm's epsilon is scaled by s^2.
    np.testing.assert_array_equal(_init(out, "w_in__rescaled"), _init(model, "w_in") * np.float32(s))
    np.testing.assert_array_equal(_init(out, "b_branch__rescaled"), _init(model, "b_branch") * np.float32(s))
    assert not any("w_branch__rescaled" in t.name for t in out.graph.initializer)
    ln = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    eps = next(a.f for a in ln.attribute if a.name == "epsilon")
    assert eps == pytest.approx(1e-5 * s * s, rel=1e-6)
    assert {"writer", "ln"} <= set(region.boundary)
    feeds = feeds_for(model)[0]
    np.testing.assert_allclose(run_model(out, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_a_decomposed_normalization_reader_has_its_eps_constant_scaled():
    model = residual_stream("decomposed")
    plan, out = _rescaled(model)
    assert len(plan.regions) == 1, plan.refused
    s = 2.0 ** -plan.regions[0].k
    eps = [float(numpy_helper.to_array(t)) for t in out.graph.initializer if t.name.endswith("__rescaled")
           and numpy_helper.to_array(t).size == 1]  # fmt: skip
    assert eps == [pytest.approx(1e-5 * s * s, rel=1e-6)]
    feeds = feeds_for(model)[0]
    np.testing.assert_allclose(run_model(out, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_a_stream_read_by_a_non_homogeneous_op_is_refused_naming_it():
    plan, _ = _rescaled(residual_stream("sigmoid"))
    assert not plan.regions
    assert len(plan.refused) == 1
    assert "Sigmoid" in plan.refused[0].reason and "sigmoid" in plan.refused[0].reason


def test_a_stream_that_reaches_a_graph_output_is_refused():
    rng = np.random.default_rng(1)
    b = GraphBuilder(opset=18)
    x = b.input("x", [2, C])
    y = b.node("MatMul", [x, b.weight(rng.standard_normal((C, C)) * 1e5, "w")], outputs=["y"])
    b.output(y)
    plan, _ = _rescaled(b.model())
    assert not plan.regions and "graph output" in plan.refused[0].reason


def test_batchnorm_reader_takes_the_scale_in_its_mean_variance_and_epsilon():
    rng = np.random.default_rng(2)
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, C, 4, 4])
    stream = b.node("Conv", [x, b.weight(rng.standard_normal((C, C, 1, 1)) * 1e5, "w")], name="writer")
    stream = b.node("Relu", [stream], name="relu")
    mean, var = rng.standard_normal(C) * 1e4, rng.uniform(1e8, 2e8, C)
    bn_inputs = [stream, b.weight(np.ones(C), "g"), b.weight(np.zeros(C), "beta"), b.weight(mean, "mean"),
                 b.weight(var, "var")]  # fmt: skip
    normed = b.node("BatchNormalization", bn_inputs, name="bn")
    y = b.node("Conv", [normed, b.weight(rng.standard_normal((2, C, 1, 1)), "head")], outputs=["y"])
    b.output(y)
    model = b.model()
    plan, out = _rescaled(model)
    assert len(plan.regions) == 1, plan.refused
    s = np.float32(2.0 ** -plan.regions[0].k)
    np.testing.assert_array_equal(_init(out, "mean__rescaled"), _init(model, "mean") * s)
    np.testing.assert_array_equal(_init(out, "var__rescaled"), _init(model, "var") * s * s)
    feeds = feeds_for(model)[0]
    np.testing.assert_allclose(run_model(out, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-3)


def test_an_embedding_table_writes_the_stream():
    rng = np.random.default_rng(3)
    b = GraphBuilder(opset=18)
    ids = b.input("ids", [1, 5], np.int64)
    table = rng.standard_normal((16, C)).astype(np.float32)
    table[:, 2] *= 1e5  # a massive-activation channel
    stream = b.node("Gather", [b.weight(table, "table"), ids], name="embed")
    normed = b.node(
        "LayerNormalization", [stream, b.weight(np.ones(C), "gamma"), b.weight(np.zeros(C), "beta")], name="ln"
    )
    b.output(b.node("MatMul", [normed, b.weight(rng.standard_normal((C, 2)), "head")], outputs=["y"]))
    model = b.model()
    plan, out = _rescaled(model)
    assert len(plan.regions) == 1, plan.refused
    s = np.float32(2.0 ** -plan.regions[0].k)
    np.testing.assert_array_equal(_init(out, "table__rescaled"), table * s)
    feeds = {"ids": np.array([[0, 3, 7, 15, 2]], np.int64)}
    np.testing.assert_allclose(run_model(out, feeds)["y"], run_model(model, feeds)["y"], rtol=1e-5, atol=1e-4)


def test_clip_bounds_given_as_attributes_are_scaled_with_the_stream():
    """Clip before opset 11 keeps its bounds in attributes: unscaled, clip(s*x, M) != s*clip(x, M) past M."""
    rng = np.random.default_rng(4)
    b = GraphBuilder(opset=10)
    x = b.input("x", [2, C])
    stream = b.node("MatMul", [x, b.weight(rng.standard_normal((C, C)) * 6000, "w")], name="writer")
    clipped = b.node("Clip", [stream], name="clip", min=-40000.0, max=40000.0)
    b.output(b.node("MatMul", [clipped, b.weight(rng.standard_normal((C, 3)) * 1e-3, "head")], outputs=["y"]))
    model = b.model()
    plan, out = _rescaled(model)
    assert len(plan.regions) == 1, plan.refused
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    bounds = {a.name: a.f for a in clip.attribute}
    s = 2.0 ** -plan.regions[0].k
    assert bounds == {"min": pytest.approx(-40000.0 * s), "max": pytest.approx(40000.0 * s)}
    beyond = {"x": feeds_for(model)[0]["x"] * 4}  # past the bounds, where the calibration never went
    np.testing.assert_allclose(run_model(out, beyond)["y"], run_model(model, beyond)["y"], rtol=1e-5, atol=1e-5)


def test_a_batchnorm_with_computed_statistics_refuses_the_region_it_reads():
    rng = np.random.default_rng(5)
    b = GraphBuilder(opset=15)
    x = b.input("x", [2, C, 4, 4])
    h = b.node("Conv", [x, b.weight(rng.standard_normal((C, C, 1, 1)) * 3000, "w")], name="writer")
    mean = b.node("ReduceMean", [x], axes=[0, 2, 3], keepdims=0)
    bn_inputs = [h, b.weight(np.ones(C)), b.weight(np.zeros(C)), mean, b.weight(np.full(C, 1e6))]
    normed = b.node("BatchNormalization", bn_inputs, name="bn")
    b.output(b.node("Conv", [normed, b.weight(rng.standard_normal((2, C, 1, 1)))], outputs=["y"]))
    plan, _ = _rescaled(b.model())
    assert not plan.regions and "computed statistics" in plan.refused[0].reason
