"""Runners (validate.runners): every kind computes what numpy computes, and an isolated one fails in one line.

Expected values come from numpy, never from onnxruntime: float32 onnxruntime against float64 numpy within
1e-5 (relative and absolute), the float64 evaluation within 1e-12, the half-faithful run exactly (both round
the same float32 values to fp16, and fp16 products of fp16 values are exact in float32).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest

from normonnx.isolation import DEFAULT_TIMEOUT, IsolatedRunError
from normonnx.validate.runner import SessionConfig
from normonnx.validate.runners import (
    FaithfulRunner,
    InProcessRunner,
    IsolatedRunner,
    RunOptions,
    measure_interleaved,
)
from tests.builders import GraphBuilder
from tests.helpers import rng

TOL = {"rtol": 1e-5, "atol": 1e-5}
W = rng(1).standard_normal((4, 3)).astype(np.float32)
B = rng(2).standard_normal(3).astype(np.float32)


def affine_relu() -> onnx.ModelProto:
    """y = Relu(x @ W + b), with the MatMul's output named ``xw`` (an intermediate to read back)."""
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 4])
    xw = b.node("MatMul", [x, b.weight(W)], outputs=["xw"])
    b.node("Relu", [b.node("Add", [xw, b.weight(B)])], outputs=["y"])
    b.output("y")
    return b.model()


def expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float64) @ W.astype(np.float64) + B, 0)


FEEDS = [{"x": rng(seed).standard_normal((2, 4)).astype(np.float32)} for seed in (3, 4)]


def _assert_infers(runner) -> None:
    # An input the model does not take is left out, as a check's shared feeds need.
    got = runner.infer([{**f, "unused": np.zeros(1, np.float32)} for f in FEEDS])
    assert len(got) == len(FEEDS)
    for outputs, feed in zip(got, FEEDS, strict=True):
        assert list(outputs) == ["y"]
        np.testing.assert_allclose(outputs["y"], expected(feed["x"]), **TOL)


def test_in_process_runner_computes_what_numpy_does():
    runner = InProcessRunner(affine_relu(), label="affine")
    _assert_infers(runner)
    x = FEEDS[0]["x"]
    np.testing.assert_allclose(runner.intermediates(FEEDS[0], ["xw"])["xw"], x.astype(np.float64) @ W, **TOL)
    peak = max(float(np.abs(expected(f["x"])).max()) for f in FEEDS)
    assert runner.ranges(FEEDS, ["y"])["y"] == pytest.approx(peak, rel=1e-5)
    wide = runner.float64(FEEDS[:1])[0]["y"]
    assert wide.dtype == np.float64
    np.testing.assert_allclose(wide, np.maximum(x.astype(np.float64) @ W.astype(np.float64) + B, 0), rtol=1e-12)


def test_isolated_runner_computes_what_numpy_does_from_bytes_and_from_a_path(tmp_path):
    model = affine_relu()
    _assert_infers(IsolatedRunner(model.SerializeToString(), label="affine bytes"))
    onnx.save(model, tmp_path / "affine.onnx")
    runner = IsolatedRunner(tmp_path / "affine.onnx", label="affine file")
    assert runner.model == str(tmp_path / "affine.onnx") and runner.timeout == DEFAULT_TIMEOUT
    _assert_infers(runner)


def half_scale_shift() -> onnx.ModelProto:
    """y = x * w + c, all in fp16: a product beyond 65504 overflows on a GPU."""
    b = GraphBuilder(opset=17, dtype=np.float16)
    x = b.input("x", [1, 4])
    w = b.weight(np.array([300.0, 2.0, -300.0, 0.5]))
    c = b.weight(np.array([0.1, 0.1, 0.1, 0.1]))
    b.node("Add", [b.node("Mul", [x, w]), c], outputs=["y"])
    b.output("y")
    return b.model()


def test_faithful_runner_rounds_every_half_tensor_as_a_gpu_stores_it():
    x = np.array([[300.0, 1.2345, 100.0, 3.3]], np.float32)
    f16 = lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
    w, c = f16([300.0, 2.0, -300.0, 0.5]), f16([0.1] * 4)
    with np.errstate(over="ignore"):
        want = f16(f16(f16(x) * w) + c)
    assert np.isinf(want[0, 0]) and np.isfinite(want[0, 1])  # 300 * 300 overflows fp16; the rest does not
    runner = FaithfulRunner(half_scale_shift(), label="scale and shift")
    (got,) = runner.infer([{"x": x}])
    assert got["y"].dtype == np.float32  # half outputs come back in float32, holding fp16 values
    np.testing.assert_array_equal(got["y"], want)


def test_an_onnxruntime_failure_in_an_isolated_runner_is_one_line_naming_the_run():
    runner = IsolatedRunner(affine_relu().SerializeToString(), label="affine (reference)")
    with pytest.raises(IsolatedRunError) as caught:
        runner.infer([{"x": np.zeros((3,), np.float32)}])  # rank 1 where the model takes [2, 4]
    message = str(caught.value)
    assert message.startswith("affine (reference): ") and "\n" not in message
    assert "rank" in message.lower() or "dimension" in message.lower()
    assert caught.value.exit_code == 2


def _slow_model() -> bytes:
    """2000 chained 512x512 MatMuls: seconds of work however warm the worker is (200 took under 0.2 s here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(512, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x" if k == 0 else f"h{k}", "w"], [f"h{k + 1}"]) for k in range(2000)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 512])
    y = helper.make_tensor_value_info("h2000", TensorProto.FLOAT, [512, 512])
    model = helper.make_model(
        helper.make_graph(nodes, "slow", [x], [y], [w]), opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    return model.SerializeToString()


def test_an_isolated_runner_stops_a_run_past_its_timeout():
    runner = IsolatedRunner(_slow_model(), label="slow model", timeout=0.2)
    with pytest.raises(IsolatedRunError, match=r"^slow model: no answer within 0 s; stopped it$"):
        runner.infer([{"x": np.ones((512, 512), np.float32)}])
    assert IsolatedRunner(affine_relu().SerializeToString(), label="after").infer(FEEDS)  # a fresh worker answers


def test_run_options_choose_the_kind_once():
    model = affine_relu()
    isolated, here = RunOptions(timeout=5), RunOptions(isolated=False)
    assert type(isolated.runner("m.onnx")) is IsolatedRunner and isolated.runner("m.onnx").label == "m.onnx"
    assert isolated.runner(b"bytes").timeout == 5 and isolated.runner(b"bytes").label == "model"
    assert type(isolated.runner(model)) is InProcessRunner  # a model validated in memory runs here
    assert type(here.runner("m.onnx")) is InProcessRunner and type(here.runner(b"bytes")) is InProcessRunner
    runner = isolated.runner("m.onnx", SessionConfig(optimize=True), label="candidate")
    plain = runner.derived(label="bisection", optimize=False)
    assert (plain.label, plain.config.optimize, type(plain)) == ("bisection", False, IsolatedRunner)
    assert (runner.label, runner.config.optimize) == ("candidate", True)  # derived, not changed


def test_models_timed_together_run_the_same_way():
    options = RunOptions()
    runners = {"a": options.runner("a.onnx", SessionConfig(optimize=True)), "b": options.runner("b.onnx")}
    with pytest.raises(ValueError, match="one SessionConfig"):
        measure_interleaved(runners, [{}, {}], label="bench")


def test_the_execution_module_imports_no_driver():
    """validate.execute is what a child runs: it imports none of the modules that decide what to run
    (probe once imported it back, inside a function)."""
    source = Path(__file__).resolve().parents[2] / "normonnx" / "validate" / "execute.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    drivers = ("probe", "runners", "verify", "check", "benchmark")
    assert not [m for m in imported if any(m.endswith(f"validate.{d}") for d in drivers)]
