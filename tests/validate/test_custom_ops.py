"""--custom-ops: onnxruntime custom-op libraries for every run, and one line with both ways out without one.

The library is onnxruntime-extensions' (ai.onnx.contrib:Inverse); the expected values come from numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

extensions = pytest.importorskip("onnxruntime_extensions")
RNG = np.random.default_rng(0)
W = (RNG.standard_normal((4, 4)) + np.eye(4) * 4).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)
SCALE, VAR = RNG.uniform(0.5, 2, 4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32)
SHIFT, MEAN = (RNG.standard_normal(4) * 0.1).astype(np.float32), (RNG.standard_normal(4) * 0.1).astype(np.float32)


@pytest.fixture
def model(tmp_path):
    """Gemm -> BatchNormalization (foldable) -> ai.onnx.contrib:Inverse (a custom op)."""
    inits = [numpy_helper.from_array(v, n) for n, v in
             (("W", W), ("B", B), ("s", SCALE), ("b", SHIFT), ("m", MEAN), ("v", VAR))]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["g"]),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Inverse", ["n"], ["y"], domain="ai.onnx.contrib"),
    ]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "y"))
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)],
    )
    path = tmp_path / "contrib.onnx"
    onnx.save(proto, path)
    return path


def test_fold_with_the_library_folds_and_verifies(cli, model, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "folded.onnx"
    r = cli("fold", model, "-o", out, "--custom-ops", extensions.get_library_path())
    assert r.code == 0 and "parity PASSED" in r.out, r.err
    folded = onnx.load(out)
    assert [n.op_type for n in folded.graph.node] == ["Gemm", "Inverse"]
    options = ort.SessionOptions()
    options.register_custom_ops_library(extensions.get_library_path())
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    normed = (x @ W + B - MEAN) / np.sqrt(VAR + 1e-5) * SCALE + SHIFT
    np.testing.assert_allclose(got, np.linalg.inv(normed.astype(np.float64)), rtol=1e-3, atol=1e-4)


def test_without_the_library_fold_names_both_ways_out(cli, model, tmp_path):
    out = tmp_path / "folded.onnx"
    r = cli("fold", model, "-o", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "onnxruntime cannot run ai.onnx.contrib:Inverse" in r.err
    assert "--custom-ops LIB" in r.err and "--no-verify" in r.err and "ONNXRuntimeError" not in r.err
    assert not out.exists()
    r = cli("fold", model, "-o", out, "--no-verify")
    assert r.code == 0 and out.exists() and "parity not verified" in r.err + r.out


def test_check_bench_and_inspect(cli, model):
    lib = extensions.get_library_path()
    assert cli("check", model, "--against", model, "--custom-ops", lib).code == 0
    assert cli("bench", model, "--runs", 3, "--warmup", 1, "--custom-ops", lib).code == 0
    r = cli("bench", model, "--runs", 3)
    assert r.code == 2 and "cannot run ai.onnx.contrib:Inverse" in r.err and "--no-verify" not in r.err
    r = cli("inspect", model)
    assert "onnxruntime has no kernel for: ai.onnx.contrib:Inverse (1 node)" in r.out


def test_a_library_that_does_not_exist_or_load_is_one_line(cli, model, tmp_path):
    r = cli("fold", model, "-o", tmp_path / "o.onnx", "--custom-ops", tmp_path / "none.so")
    assert r.code == 2 and "--custom-ops" in r.err and "no such file" in r.err
    (tmp_path / "bad.so").write_bytes(b"not a library")
    r = cli("check", model, "--against", model, "--custom-ops", tmp_path / "bad.so")
    assert r.code == 2 and "onnxruntime cannot load it" in r.err and len(r.err.strip().splitlines()) == 1, r.err
