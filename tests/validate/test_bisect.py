"""Bisection (issue 12): the responsible transformation in at most log2(N) + 2 runs, and a fold whose
one rewrite breaks parity delivered without that rewrite."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx.pipelines.check import check
from normonnx.validate.bisect import bisect
from normonnx.validate.parity import Gate


@pytest.mark.parametrize("n, culprit", [(1, 0), (2, 1), (5, 3), (8, 0), (8, 7), (13, 6)])
def test_bisection_finds_the_one_culprit_within_the_bound(n, culprit):
    names = [f"t{k}" for k in range(n)]
    runs = []

    def fails(applied: frozenset[str]) -> bool:
        runs.append(applied)
        return names[culprit] in applied

    found = bisect("things", names, fails)
    assert found.culprit == names[culprit]
    assert found.runs == len(runs) <= math.log2(n) + 2


def test_a_failure_that_needs_two_together_blames_neither():
    names = [f"t{k}" for k in range(6)]
    found = bisect("things", names, lambda applied: {"t1", "t4"} <= applied)
    assert found.culprit is None and "several" in found.note


def fp16_layernorm_model() -> onnx.ModelProto:
    """fp16 ops a LayerNorm is written with, among nodes other transformers change without changing a
    value (an Identity, two equal ReLUs, two equal constants). Unfused, onnxruntime's CPU rounds every
    intermediate to fp16; its fused LayerNormalization computes in fp32 inside, 1e-3 apart."""
    rng = np.random.default_rng(0)
    d, f16 = 64, (lambda a: np.asarray(a).astype(np.float16))
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axis"),
        numpy_helper.from_array(f16(2.0), "two"),
        numpy_helper.from_array(f16(1e-5), "eps"),
        numpy_helper.from_array(f16(rng.uniform(0.5, 1.5, d)), "gamma"),
        numpy_helper.from_array(f16(rng.uniform(-0.5, 0.5, d)), "beta"),
        numpy_helper.from_array(f16(rng.standard_normal(d) * 3), "bias"),
        numpy_helper.from_array(f16(2.0), "two_again"),
    ]
    n = helper.make_node
    nodes = [
        n("Identity", ["x"], ["xi"]), n("Add", ["xi", "bias"], ["h"]),
        n("ReduceMean", ["h", "axis"], ["mu"], keepdims=1), n("Sub", ["h", "mu"], ["d"]),
        n("Pow", ["d", "two"], ["sq"]), n("ReduceMean", ["sq", "axis"], ["var"], keepdims=1),
        n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
        n("Div", ["d", "sd"], ["xn"]), n("Mul", ["xn", "gamma"], ["xg"]), n("Add", ["xg", "beta"], ["ln"]),
        n("Relu", ["ln"], ["r1"]), n("Relu", ["ln"], ["r2"]), n("Mul", ["r2", "two_again"], ["r2s"]),
        n("Add", ["r1", "r2s"], ["out"]),
    ]  # fmt: skip
    shape = [2, 5, d]
    graph = helper.make_graph(
        nodes, "ln16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, shape)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_onnxruntime_transformer_that_changes_the_result_is_named(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "ln16.onnx"
    onnx.save(fp16_layernorm_model(), path)
    gate = Gate(1e-4, 1e-4)
    result = check(path, against=path, optimize=True, default_gate=gate)
    assert not result.passed
    b = result.bisection
    assert b.culprit is not None and b.culprit.startswith("LayerNormFusion"), b
    assert len(b.candidates) >= 4 and b.runs <= math.log2(len(b.candidates)) + 2
    # The verdict checked with onnxruntime itself: with that one transformer disabled the optimized
    # session computes what the unoptimized one does; with it, not.
    x = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float16)

    def run(level, disabled=()):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        kwargs = {"disabled_optimizers": list(disabled)} if disabled else {}
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **kwargs)
        return sess.run(None, {"x": x})[0].astype(np.float32)

    plain = run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert np.abs(run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, [b.culprit]) - plain).max() <= 1e-4
    assert np.abs(run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL) - plain).max() > 1e-4


def test_a_fold_whose_one_rewrite_breaks_parity_is_delivered_without_it(tmp_path, monkeypatch):
    """A bug planted in the BN arithmetic for one BN (the one with epsilon 1e-3): the fold of that BN is
    wrong, every other one is right."""
    from normonnx import foldmath as _foldmath
    from normonnx.pipelines.fold import fold_file
    from tests.validate.test_localize import conv_bn_chain

    model = conv_bn_chain()
    planted = next(n for n in model.graph.node if n.name == "bn3")
    next(a for a in planted.attribute if a.name == "epsilon").f = 1e-3
    onnx.save(model, tmp_path / "chain.onnx")
    honest = _foldmath.batchnorm_affine

    def buggy(gamma, beta, mean, var, eps):
        affine = honest(gamma, beta, mean, var, eps)
        if abs(eps - 1e-3) < 1e-9:
            return _foldmath.ChannelAffine(affine.scale * 1.01, affine.shift)
        return affine

    monkeypatch.setattr(_foldmath, "batchnorm_affine", buggy)
    report = fold_file(tmp_path / "chain.onnx", tmp_path / "out.onnx")
    assert report.output == str(tmp_path / "out.onnx") and report.parity.passed
    assert (
        report.bisection.culprit == "bn3" and report.bisection.runs <= math.log2(len(report.bisection.candidates)) + 2
    )
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.name for n in out.graph.node if n.op_type == "BatchNormalization"] == ["bn3"]
    assert any("bn3 kept: folding it broke parity" in note for note in report.notes), report.notes
    assert len(report.folded) == 5


def test_an_emit_whose_one_rewrite_breaks_parity_is_delivered_without_it(tmp_path, monkeypatch):
    """A bug planted in the LayerNorm lowering of one node (ln2 is written with epsilon 1)."""
    from normonnx.graph.access import describe
    from normonnx.passes import lower
    from normonnx.pipelines.emit import emit_file

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(4):
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), f"g{i}"),
                  numpy_helper.from_array(rng.uniform(-0.5, 0.5, 16).astype(np.float32), f"b{i}")]  # fmt: skip
        nodes.append(helper.make_node("LayerNormalization", [prev, f"g{i}", f"b{i}"], [f"ln{i}_out"], name=f"ln{i}"))
        nodes.append(helper.make_node("Relu", [f"ln{i}_out"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "lns", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, 5, 16])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "lns.onnx")
    honest = lower.LOWERINGS["layernorm"]

    def buggy(node, ctx):
        if describe(node) != "ln2":
            return honest(node, ctx)
        eps = node.attrs.get("epsilon", 1e-5)
        node.attrs["epsilon"] = 1.0  # read when the subgraph is planned: the node itself stays as it was
        try:
            return honest(node, ctx)
        finally:
            node.attrs["epsilon"] = eps

    monkeypatch.setitem(lower.LOWERINGS, "layernorm", buggy)
    report = emit_file(tmp_path / "lns.onnx", tmp_path / "out.onnx", norm_style="decomposed")
    assert report.output == str(tmp_path / "out.onnx") and report.parity.passed
    assert report.bisection.culprit == "ln2"
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.name for n in out.graph.node if n.op_type == "LayerNormalization"] == ["ln2"]
    assert any(note.startswith("ln2 left as it was: rewriting it broke parity") for note in report.notes)


def test_check_optimize_names_the_transformer_on_the_command_line(cli, tmp_path):
    path = tmp_path / "ln16.onnx"
    onnx.save(fp16_layernorm_model(), path)
    r = cli("check", path, "--against", path, "--optimize", "--atol", "1e-4", "--rtol", "1e-4")
    assert r.code == 1, r.err
    line = next(ln for ln in r.out.splitlines() if ln.startswith("bisection over"))
    assert "onnxruntime graph transformers: LayerNormFusion" in line, r.out
