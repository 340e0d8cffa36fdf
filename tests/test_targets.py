"""The target table (normonnx/targets.py) checked where it can be: its ort-cpu and openvino rows are run.

Every family's standard op, at every op version the table could claim, as a one-node model with numpy's
reference (families.ref_*) as the expected result:
- a version the row claims native runs on that runtime and matches the reference; on onnxruntime the op
  is still there in the session's optimized graph (a kernel of its own, not its function body inlined);
- a version the row does not claim either fails there, or (onnxruntime) runs only as its function body;
- the decomposed form (normonnx's lowering) runs and matches on both.
A claim that is wrong in either direction fails here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from normonnx import families as F
from normonnx.targets import TARGETS, target

openvino = pytest.importorskip("openvino")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32) * 3 + 1
C, G = 4, 2
SCALE = RNG.uniform(0.5, 2, C).astype(np.float32)
BIAS = RNG.standard_normal(C).astype(np.float32)
LAST = 5
MEAN, VAR = RNG.standard_normal(C).astype(np.float32), RNG.uniform(0.5, 2, C).astype(np.float32)


def _case(family: str, version: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto], np.ndarray]:
    """(node, initializers, expected output) for one op version on X."""
    init = lambda name, v: onnx.numpy_helper.from_array(v, name)
    x64 = X.astype(np.float64)
    if family == "batchnorm":
        node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-5)
        return (
            node,
            [init("s", SCALE), init("b", BIAS), init("m", MEAN), init("v", VAR)],
            F.ref_batchnorm(x64, SCALE, BIAS, MEAN, VAR),
        )
    if family == "instancenorm":
        node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)
        return node, [init("s", SCALE), init("b", BIAS)], F.ref_instancenorm(x64, SCALE, BIAS)
    if family == "layernorm":
        s, b = SCALE[:1].repeat(LAST) * np.linspace(0.5, 1.5, LAST, dtype=np.float32), BIAS[:1].repeat(LAST)
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
        return node, [init("s", s), init("b", b)], F.ref_layernorm(x64, s, b)
    if family == "rmsnorm":
        s = np.linspace(0.5, 1.5, LAST, dtype=np.float32)
        node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-6)
        return node, [init("s", s)], F.ref_rmsnorm(x64, s)
    assert family == "groupnorm"
    if version == 18:  # per group
        s, b = np.array([0.7, 1.6], np.float32), np.array([0.3, -0.2], np.float32)
        expected = F.ref_groupnorm(x64, s.repeat(C // G), b.repeat(C // G), G)
    else:
        s, b = SCALE, BIAS
        expected = F.ref_groupnorm(x64, s, b, G)
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=G, epsilon=1e-5)
    return node, [init("s", s), init("b", b)], expected


VERSIONS = {"batchnorm": (15,), "instancenorm": (6, 22), "layernorm": (17,), "groupnorm": (18, 21), "rmsnorm": (23,)}
CASES = [(f, v) for f, vs in VERSIONS.items() for v in vs]


def _model(family: str, version: int) -> tuple[onnx.ModelProto, np.ndarray]:
    node, inits, expected = _case(family, version)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(X.shape))
    model = helper.make_model(
        helper.make_graph([node], f"{family}{version}", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", max(version, 13))],  # IN-6 at opset 13: normonnx writes 11 on
    )
    model.ir_version = 10
    return model, expected


def _on_onnxruntime(model: onnx.ModelProto) -> tuple[np.ndarray | None, list[str]]:
    """(output or None when it does not load, op types of the session's graph after partitioning)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(tmp, "o.onnx"))
        options.log_severity_level = 4
        try:
            sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:
            return None, []
        ops = [n.op_type for n in onnx.load(str(Path(tmp, "o.onnx"))).graph.node]
        return sess.run(None, {"x": X})[0], ops


def _on_openvino(model: onnx.ModelProto) -> np.ndarray | None:
    from normonnx.validate.openvino_session import OpenVinoSession

    try:
        return OpenVinoSession(model.SerializeToString()).run(None, {"x": X})[0]
    except Exception:
        return None


def _claimed(key: str, family: str, version: int) -> bool:
    return version in TARGETS[key].native.get(family, ())


@pytest.mark.parametrize(("family", "version"), CASES)
def test_ort_cpu_row_is_true(family, version):
    model, expected = _model(family, version)
    out, ops = _on_onnxruntime(model)
    native = out is not None and model.graph.node[0].op_type in ops
    assert native == _claimed("ort-cpu", family, version), (family, version, ops)
    if out is not None:  # whatever runs, runs right (a function body included)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("family", "version"), CASES)
def test_openvino_row_is_true(family, version):
    model, expected = _model(family, version)
    out = _on_openvino(model)
    right = out is not None and np.allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert right == _claimed("openvino", family, version), (family, version, None if out is None else "wrong")


@pytest.mark.parametrize(("family", "version"), CASES)
def test_the_decomposed_form_runs_on_both(family, version):
    """normonnx's lowering of each op version runs right on onnxruntime and on OpenVINO alike."""
    from normonnx.pipelines.emit import emit

    model, expected = _model(family, version)
    lowered, _ = emit(model, None, "decomposed")
    assert all(n.op_type != model.graph.node[0].op_type for n in lowered.graph.node)
    out, _ = _on_onnxruntime(lowered)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_on_openvino(lowered), expected, rtol=1e-4, atol=1e-4)


def test_every_target_names_its_sources_and_opset():
    for t in TARGETS.values():
        assert t.sources and 11 <= t.max_opset <= onnx.defs.onnx_opset_version()
        assert set(t.fastest) <= set(F.WITH_OP) and set(t.native) <= set(F.WITH_OP)


def test_an_unknown_target_is_one_line():
    from normonnx.errors import UnusableInputError

    with pytest.raises(UnusableInputError, match="choose one of ort-cpu"):
        target("tensorrt-7")


def test_openvino_reports_the_graph_output_names_and_why_it_cannot_run():
    """OpenVINO merges an Identity's input and output into one port; the ONNX graph's name is the one reported.
    A model it cannot convert is one line that names the op (its first line names a C++ file)."""
    from normonnx.errors import UnusableInputError
    from normonnx.validate.openvino_session import OpenVinoSession

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("z", "y")]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"]),
             helper.make_node("Neg", ["x"], ["z"])]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    session = OpenVinoSession(model.SerializeToString())
    assert [o.name for o in session.get_outputs()] == ["z", "y"]
    data = RNG.standard_normal((2, 3)).astype(np.float32)
    z, y = session.run(None, {"x": data})
    np.testing.assert_array_equal(y, np.maximum(data, 0))
    np.testing.assert_array_equal(z, -data)
    custom = helper.make_model(
        helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="my.dom")], "g", [x], outs[1:]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.dom", 1)],
    )
    with pytest.raises(UnusableInputError, match=r"No conversion rule found for operations: my\.dom\.Foo"):
        OpenVinoSession(custom.SerializeToString())
