"""normonnx half (issue 11): half precision whose normalizations do not overflow, judged in half-faithful
arithmetic. Expected values come from numpy (float64 and per-op float16 rounding), never from the
code under test."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx.graph.precision import to_float16
from normonnx.pipelines.check import check
from normonnx.pipelines.half import half_file, half_model
from normonnx.validate.faithful import faithful_copy
from tests.builders import run_model
from tests.conftest import NO_SYMPY_FOR_TORCH, skip_without

D = 64


def decomposed_layernorm(scale: float = 300.0, rms: bool = False) -> onnx.ModelProto:
    """MatMul (weights x ``scale``: activations of a few hundred) then a LayerNorm (or RMSNorm) written out."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axis"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, D).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, D).astype(np.float32), "beta"),
        numpy_helper.from_array((rng.standard_normal((D, D)) * scale / np.sqrt(D)).astype(np.float32), "w"),
    ]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["h"])]
    centered = "h"
    if not rms:
        nodes += [n("ReduceMean", ["h", "axis"], ["mu"], keepdims=1), n("Sub", ["h", "mu"], ["d"])]
        centered = "d"
    nodes += [
        n("Pow", [centered, "two"], ["sq"]), n("ReduceMean", ["sq", "axis"], ["var"], keepdims=1),
        n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]), n("Div", [centered, "sd"], ["xn"]),
        n("Mul", ["xn", "gamma"], ["xg"]), n("Add", ["xg", "beta"], ["y"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, D])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def numpy_fp16_layernorm(x: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    """The same LayerNorm in numpy, every op's result rounded to float16 (what a GPU stores)."""
    p = {t.name: numpy_helper.to_array(t).astype(np.float16) for t in model.graph.initializer}
    r = lambda a: np.asarray(a, np.float32).astype(np.float16)
    h = r(x.astype(np.float16).astype(np.float32) @ p["w"].astype(np.float32))
    mu = r(h.astype(np.float32).mean(-1, keepdims=True))
    d = r(h.astype(np.float32) - mu)
    var = r((r(d.astype(np.float32) ** 2)).astype(np.float32).mean(-1, keepdims=True))
    sd = r(np.sqrt(r(var.astype(np.float32) + np.float32(p["eps"]))))
    y = r(r(r(d.astype(np.float32) / sd) * p["gamma"].astype(np.float32)) + p["beta"].astype(np.float32))
    return y.astype(np.float32)


def test_the_faithful_evaluator_rounds_every_op_as_numpy_does_in_float16():
    model = decomposed_layernorm(scale=10.0)
    x = np.random.default_rng(3).standard_normal((2, 5, D)).astype(np.float32)
    got = run_model(faithful_copy(to_float16(model)), {"x": x})["y"]
    np.testing.assert_allclose(got, numpy_fp16_layernorm(x, model), rtol=0, atol=2e-3)


def test_a_plain_cast_that_passes_on_onnxruntime_cpu_fails_half_faithfully_and_normonnx_half_does_not(tmp_path):
    model = decomposed_layernorm()
    onnx.save(model, tmp_path / "ln.onnx")
    onnx.save(to_float16(model), tmp_path / "plain.onnx")
    on_cpu = check(tmp_path / "plain.onnx", against=tmp_path / "ln.onnx", evaluator="onnxruntime")
    faithful = check(tmp_path / "plain.onnx", against=tmp_path / "ln.onnx")
    assert on_cpu.passed, "premise: onnxruntime's CPU computes fp16 in fp32 and hides the overflow"
    assert not faithful.passed and faithful.parity.outputs[0].judged_by == "half-faithful"
    report = half_file(tmp_path / "ln.onnx", tmp_path / "ln.fp16.onnx")
    assert report.passed and report.output, report.to_dict()
    # The written-out LayerNorm runs as LayerNormalization-17 in half: stash_type=1 keeps its statistics float32.
    written = onnx.load(tmp_path / "ln.fp16.onnx")
    ln = [n for n in written.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln) == 1 and helper.get_attribute_value(next(a for a in ln[0].attribute if a.name == "stash_type")) == 1
    assert not report.kept and any("LayerNormalization-17" in n for n in report.notes)
    assert report.linear_ops_half == (1, 1) and report.weight_bytes_half > 0.8
    again = check(tmp_path / "ln.fp16.onnx", against=tmp_path / "ln.onnx")
    assert again.passed
    ref = run_model(model, {"x": (x := np.random.default_rng(9).standard_normal((2, 5, D)).astype(np.float32))})["y"]
    got = run_model(faithful_copy(onnx.load(tmp_path / "ln.fp16.onnx")), {"x": x})["y"]
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("rms", [False, True])
def test_large_activation_norms_convert_within_the_gate(dtype, rms):
    out, report = half_model(decomposed_layernorm(scale=400.0, rms=rms), dtype)
    assert report.passed, report.to_dict()
    half = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
    weights = {t.name: t.data_type for t in out.graph.initializer}
    assert weights["w"] == half  # the MatMul runs in the half type


def test_stash_type_is_honoured_by_the_faithful_evaluator():
    """LayerNormalization on fp16 data: stash_type=1 computes the statistics in float32 and stays exact to
    fp16 rounding; stash_type=0 computes them in fp16, where x^2 of values near 300 overflows."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 5, D)) * 300).astype(np.float32)

    def ln(stash: int) -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(np.ones(D, np.float16), "g"),
            numpy_helper.from_array(np.zeros(D, np.float16), "b"),
        ]
        node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], stash_type=stash)
        graph = helper.make_graph(
            [node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 5, D])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 5, D])], inits,
        )  # fmt: skip
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    x64 = x.astype(np.float16).astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    stash_one = run_model(faithful_copy(ln(1)), {"x": x})["y"]
    stash_zero = run_model(faithful_copy(ln(0)), {"x": x})["y"]
    assert np.abs(stash_one - expected).max() < 1e-2
    assert not np.isfinite(stash_zero).all() or np.abs(stash_zero - expected).max() > 0.1


def test_half_on_the_command_line_writes_a_verified_model(cli, tmp_path):
    onnx.save(decomposed_layernorm(), tmp_path / "ln.onnx")
    r = cli("half", tmp_path / "ln.onnx", "-o", tmp_path / "ln.fp16.onnx", "--report", tmp_path / "r.json")
    assert r.code == 0, r.err
    assert "raised from subgraphs to 1 LayerNormalization-17" in r.out and "judged by: half-faithful" in r.out
    assert (tmp_path / "ln.fp16.onnx").is_file() and (tmp_path / "r.json").is_file()
    r = cli("half", tmp_path / "missing.onnx", "-o", tmp_path / "x.onnx")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_bn", "bit_ws_gn", "vit_ln", "rms_transformer", "style_in"])
def test_reference_zoo_models_convert(tmp_path, name):
    """One model per normalization family (benchmarks/half.md has all ten), in both half types."""
    pytest.importorskip("torch")
    from normonnx.pipelines.export import export_file
    from normonnx.zoo import CHECKPOINTS

    src = tmp_path / f"{name}.onnx"
    export_file(f"normonnx.zoo:{name}", src, checkpoint=str(CHECKPOINTS / f"{name}.safetensors"), opset=18)
    for dtype in ("fp16", "bf16"):
        report = half_file(src, tmp_path / f"{name}.{dtype}.onnx", dtype)
        assert report.passed, report.to_dict()
        assert all(o.nonfinite_mismatch == 0 for o in report.parity.outputs)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda(), reason="no CUDA device: scripts/gpu_half_check.sh runs where one is lent")
def test_the_faithful_evaluator_predicts_torchs_cuda_half_kernels():
    from scripts.gpu_half_check import main

    assert main() == 0


def test_export_with_precision_writes_the_verified_half_model(tmp_path):
    pytest.importorskip("torch")
    skip_without("sympy", NO_SYMPY_FOR_TORCH)
    from normonnx.pipelines.export import export_file
    from normonnx.zoo import CHECKPOINTS

    out = tmp_path / "vit.fp16.onnx"
    report = export_file(
        "normonnx.zoo:vit_ln", out, checkpoint=str(CHECKPOINTS / "vit_ln.safetensors"), opset=18, precision="fp16"
    )
    assert report.passed and report.half.passed and report.output == str(out)
    weights = [t.data_type for t in onnx.load(out).graph.initializer if t.data_type != TensorProto.INT64]
    assert weights and all(dt == TensorProto.FLOAT16 for dt in weights)


@pytest.mark.slow
def test_convert_with_precision_adds_the_half_model_and_times_it(cli, tmp_path):
    pytest.importorskip("torch")
    from normonnx.zoo import CHECKPOINTS

    ckpt = CHECKPOINTS / "rms_transformer.safetensors"
    r = cli("convert", "normonnx.zoo:rms_transformer", "--checkpoint", ckpt, "-o", tmp_path / "c", "--precision",
            "fp16", "--no-floor", "--runs", "10")  # fmt: skip
    assert r.code == 0, r.err
    assert (tmp_path / "c" / "model.fp16.onnx").is_file()
    assert "fp16" in (tmp_path / "c" / "report.json").read_text()


def test_half_over_a_folder_writes_each_file_and_a_summary(cli, tmp_path):
    (tmp_path / "in").mkdir()
    onnx.save(decomposed_layernorm(), tmp_path / "in" / "a.onnx")
    onnx.save(decomposed_layernorm(rms=True), tmp_path / "in" / "b.onnx")
    r = cli("half", tmp_path / "in", "-o", tmp_path / "out", "--dtype", "bf16")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.onnx", "b.onnx", "summary.json"]
    rows = __import__("json").loads((tmp_path / "out" / "summary.json").read_text())["files"]
    assert [row["verdict"] for row in rows] == ["PASSED", "PASSED"]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_an_ir_version_3_file_whose_initializers_are_inputs_converts(tmp_path, dtype):
    """The old model zoo lists every initializer as a graph input: those declarations follow the data's type."""
    from tests.pipelines.test_other_exporters import zoo_style_conv_bn

    model = zoo_style_conv_bn()
    model.graph.node.append(helper.make_node("Relu", [model.graph.output[0].name], ["relu_out"]))
    model.graph.output[0].name = "relu_out"
    onnx.save(model, tmp_path / "zoo.onnx")
    report = half_file(tmp_path / "zoo.onnx", tmp_path / "zoo.half.onnx", dtype)
    assert report.passed, report.to_dict()
    out = onnx.load(tmp_path / "zoo.half.onnx")
    declared = {i.name: i.type.tensor_type.elem_type for i in out.graph.input}
    assert all(declared[t.name] == t.data_type for t in out.graph.initializer if t.name in declared)


def test_a_model_with_if_bodies_converts_around_them_and_keeps_what_they_read_in_float32(tmp_path):
    rng = np.random.default_rng(0)
    shared = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "shared")
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    then = helper.make_graph([helper.make_node("MatMul", ["h", "shared"], ["t"])], "t", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])  # fmt: skip
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "e", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])])  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="producer"),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"),
         helper.make_node("MatMul", ["x", "shared"], ["z0"], name="outside"),
         helper.make_node("Relu", ["z0"], ["z"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])], [shared, w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = half_model(model)
    assert report.passed, report.to_dict()
    kept = {k.node: k.reason for k in report.kept}
    assert "branch" in kept and "producer" in kept and "relu" not in kept
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types["shared"] == TensorProto.FLOAT  # a body reads it: the body is not converted
    x = rng.standard_normal((2, 4)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        ref = run_model(model, feeds)
        got = run_model(out, {"x": x.astype(np.float16), "c": np.array(c)})
        for name in ("y", "z"):
            assert np.abs(got[name].astype(np.float32) - ref[name]).max() <= 1e-2 * max(1.0, np.abs(ref[name]).max())


def test_layernorm_statistics_outputs_stay_float32(tmp_path):
    """onnx's backend test: LayerNormalization with its Mean and InvStdDev as graph outputs; with stash_type=1
    those are float32 whatever the data type."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, 8).astype(np.float32), "b")]  # fmt: skip
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv_std"], axis=-1)
    graph = helper.make_graph(
        [node], "ln3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 3, 1]),
         helper.make_tensor_value_info("inv_std", TensorProto.FLOAT, [2, 3, 1])], inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ln3.onnx")
    report = half_file(tmp_path / "ln3.onnx", tmp_path / "ln3.fp16.onnx")
    assert report.passed, report.to_dict()
    types = {o.name: o.type.tensor_type.elem_type for o in onnx.load(tmp_path / "ln3.fp16.onnx").graph.output}
    assert types == {"y": TensorProto.FLOAT16, "mean": TensorProto.FLOAT, "inv_std": TensorProto.FLOAT}


def test_an_fp16_model_with_if_bodies_is_widened_into_its_bodies_repaired_and_checked(tmp_path):
    rng = np.random.default_rng(1)
    c1 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float16), "c1")
    then = helper.make_graph([helper.make_node("Add", ["h", "c1"], ["t"])], "t", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT16, [2, 4])], [c1])  # fmt: skip
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "e", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT16, [2, 4])])  # fmt: skip
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])], [w],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if16.onnx")
    report = half_file(tmp_path / "if16.onnx", tmp_path / "repaired.onnx")
    assert report.passed and any("widened exactly" in n for n in report.notes), report.to_dict()
    assert check(tmp_path / "if16.onnx").passed
    x = rng.standard_normal((2, 4)).astype(np.float16)
    expected = x.astype(np.float32) @ numpy_helper.to_array(w).astype(np.float32) + numpy_helper.to_array(c1)
    got = run_model(onnx.load(tmp_path / "repaired.onnx"), {"x": x, "c": np.array(True)})["y"]
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
