"""normonnx check: catches planted errors and names the node, passes correct folds, gates fp16 as specified."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from normonnx.graph.precision import to_float16
from normonnx.pipelines.check import check
from normonnx.pipelines.fold import fold
from tests.builders import GraphBuilder
from tests.conftest import NO_MATPLOTLIB, conv_bn_model, skip_without


def _perturb(model: onnx.ModelProto, init_name: str, factor: float = 1.01, index: int = 0) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    t = next(t for t in out.graph.initializer if t.name == init_name)
    a = onnx.numpy_helper.to_array(t).copy()
    a.flat[index] = a.flat[index] * factor if np.isfinite(factor) else factor
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    return out


def deep_residual(blocks: int = 26, channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """2 convs per block, BN after each, identity skips: 52 conv layers, stable like a trained ResNet."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("input", [1, channels, 12, 12])
    for i in range(blocks):
        y = x
        for j in range(2):
            w = rng.standard_normal((channels, channels, 3, 3)) * (2 / (9 * channels)) ** 0.5 * 0.5
            y = b.node("Conv", [y, b.weight(w)], pads=[1, 1, 1, 1], name=f"conv{i}_{j}")
            y = b.batchnorm(y, channels, rng, name=f"bn{i}_{j}")
            if j == 0:
                y = b.node("Relu", [y])
        x = b.node("Relu", [b.node("Add", [x, b.node("Mul", [y, b.const(np.array(0.2, np.float32))])])])
    b.output(x, shape=[1, channels, 12, 12])
    return b.model()


def test_correct_fold_of_a_52_conv_network_passes_the_plain_gate(tmp_path):
    ref = deep_residual()
    folded, report = fold(ref)
    assert report.after.norms == {}
    result = check(folded, against=ref)
    assert result.passed
    assert all(o.judged_by == "gate" for o in result.parity.outputs)
    assert result.localization is None


def test_planted_error_is_caught_and_localized_to_its_node(tmp_path):
    ref = deep_residual(blocks=6)
    folded, _ = fold(ref)
    conv = next(n for n in folded.graph.node if n.name == "conv3_1")
    bad = _perturb(folded, conv.input[1], 1.01, index=5)
    result = check(bad, against=ref)
    assert not result.passed
    assert result.localization is not None and result.localization.first.node == "conv3_1"
    assert result.localization.compared > 10


def test_nan_in_the_candidate_fails():
    ref = conv_bn_model()
    bad = _perturb(ref, ref.graph.node[0].input[1], float("nan"))
    result = check(bad, against=ref)
    assert not result.passed
    assert "NaN/Inf" in result.parity.outputs[0].reason


@pytest.mark.parametrize(
    "evaluator, gate, note",
    [("onnxruntime", 5e-3, "converted to float16"), (None, 1e-2, "the reference cast to the half type")],
)
def test_fp16_candidate_within_the_gate_and_the_baseline_passes(evaluator, gate, note):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    result = check(to_float16(folded), against=ref, evaluator=evaluator)
    assert result.passed, result.to_dict()
    assert result.fp16_baseline is not None and note in result.notes[0]
    assert result.parity.outputs[0].threshold == pytest.approx(gate * max(1, result.parity.outputs[0].ref_max))
    assert (result.parity.outputs[0].judged_by == "half-faithful") == (evaluator is None)


@pytest.mark.parametrize("evaluator, reason", [("onnxruntime", "unmodified fp16 model"), (None, "plain half cast")])
def test_fp16_candidate_worse_than_twice_the_baseline_fails(tmp_path, evaluator, reason):
    ref = conv_bn_model()
    base = to_float16(ref)
    onnx.save(base, tmp_path / "base16.onnx")
    # 0.2% off in one layer: about 4x what fp16 rounding costs, yet inside the 5e-3 gate
    noisy = onnx.ModelProto()
    noisy.CopyFrom(ref)
    w = next(t for t in noisy.graph.initializer if t.name == noisy.graph.node[0].input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(1.002), w.name))
    result = check(to_float16(noisy), against=ref, fp16_baseline=tmp_path / "base16.onnx", evaluator=evaluator)
    out = result.parity.outputs[0]
    assert not result.passed and reason in out.reason, out
    assert out.max_abs <= out.threshold  # the gate alone would have passed it


def test_npz_inputs_and_per_output_tolerance(tmp_path):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    data = np.random.default_rng(0).standard_normal((4, 2, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "real.npz", input=data)
    result = check(folded, against=ref, inputs=str(tmp_path / "real.npz"))
    assert result.passed and result.parity.samples == 4
    from normonnx.validate.parity import Gate

    out = ref.graph.output[0].name
    strict = check(folded, against=ref, gates={out: Gate(0.0, 0.0)})
    assert not strict.parity.outputs[0].passed or strict.parity.outputs[0].max_abs == 0


def test_check_cli_exit_codes_json_and_report(cli, tmp_path):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "good.onnx")
    onnx.save(_perturb(folded, folded.graph.node[0].input[1], 1.01), tmp_path / "bad.onnx")
    r = cli("check", tmp_path / "good.onnx", "--against", tmp_path / "ref.onnx", "--json")
    assert r.code == 0
    data = json.loads(r.out)  # stdout is exactly one JSON document; the verdict goes to stderr
    assert data["passed"] and data["schema"] == 1 and r.err.strip().endswith("PASSED")
    r = cli("check", tmp_path / "bad.onnx", "--against", tmp_path / "ref.onnx", "--report", tmp_path / "rep")
    assert r.code == 1 and r.out.strip().endswith("FAILED") and "first divergence: node conv1" in r.out
    r = cli("check", tmp_path / "good.onnx", "--against", tmp_path / "missing.onnx")
    assert r.code == 2 and "no such file" in r.err
    r = cli("check", tmp_path / "good.onnx")
    assert r.code == 2
    skip_without("matplotlib", NO_MATPLOTLIB)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "divergence_path.png",
        "output_errors.png",
        "report.json",
        "report.md",
    ]


def test_unavailable_provider_is_a_clear_one_line_error(cli, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    r = cli("check", tmp_path / "m.onnx", "--against", tmp_path / "m.onnx", "--provider", "cuda")
    assert r.code == 2 and "CUDAExecutionProvider is not available" in r.err
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_torch_reference(tmp_path):
    pytest.importorskip("torch")
    from normonnx.pipelines.export import export_file

    export_file("tests.torchfront.family_nets:groupnorm", tmp_path / "gn.onnx", opset=17)
    result = check(tmp_path / "gn.onnx", torch="tests.torchfront.family_nets:groupnorm")
    assert result.passed and result.reference_kind == "torch"


@pytest.mark.parametrize("elem", [onnx.TensorProto.BOOL, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT])
def test_rank_0_inputs_of_every_kind_are_generated(cli, tmp_path, elem):
    """A Where flag or an If condition is a rank-0 input; seeded feeds must be arrays, not numpy scalars."""
    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    flag = h.make_tensor_value_info("flag", elem, [])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    cond = "flag" if elem == onnx.TensorProto.BOOL else "cond"
    nodes = [h.make_node("Neg", ["x"], ["neg"]), h.make_node("Where", [cond, "x", "neg"], ["y"])]
    if elem != onnx.TensorProto.BOOL:
        nodes.insert(0, h.make_node("Cast", ["flag"], ["cond"], to=onnx.TensorProto.BOOL))
    model = h.make_model(h.make_graph(nodes, "g", [x, flag], [y]), opset_imports=[h.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    r = cli("check", tmp_path / "m.onnx", "--against", tmp_path / "m.onnx")
    assert r.code == 0, r.err
    assert r.out.strip().endswith("PASSED")


@pytest.mark.parametrize("args", [["--atol", "-1"], ["--rtol", "nan"], ["--tol", "output=-1e-3"]])
def test_negative_or_nan_tolerances_are_refused(cli, tmp_path, args):
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    r = cli("check", tmp_path / "m.onnx", "--against", tmp_path / "m.onnx", *args)
    assert r.code == 2 and ">= 0" in r.err and len(r.err.strip().splitlines()) == 1
