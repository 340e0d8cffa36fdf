"""``normonnx quantize`` end to end on a model whose normalizations onnxruntime's own flow leaves in float:
a BatchNorm before a conv (no exporter or onnxruntime fusion folds it) and a LayerNorm before a Gemm.

Expected results come from outside the code under test: the graphs are read node by node, and accuracy is
recomputed here with numpy from onnxruntime runs of the written files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from normonnx.pipelines.quantize import quantize_file
from normonnx.validate.parity import Gate
from tests.builders import GraphBuilder
from tests.helpers import digest

C, SIDE, CLASSES = 8, 12, 6


def norm_net(seed: int = 0, bn_spread: float = 1.2) -> onnx.ModelProto:
    """x -> BN -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> LayerNorm -> Gemm.

    The BN's per-channel scale varies by up to ``bn_spread`` either way, as a trained input BN's does; folded
    into the conv after it, a wider spread costs its 8-bit weights precision."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 3, SIDE, SIDE])
    gamma = rng.uniform(1 / bn_spread, bn_spread, 3).astype(np.float32)
    stats = [rng.standard_normal(3) * 0.2, rng.standard_normal(3) * 0.2, np.ones(3)]
    h = b.node("BatchNormalization", [x, b.weight(gamma), *(b.weight(v) for v in stats)], name="bn_before_conv")
    h = b.node("Relu", [b.conv(h, 3, C, rng)])  # unpadded: a BN before it folds exactly
    h = b.node("Relu", [b.conv(h, C, C, rng, pads=[1, 1, 1, 1])])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    h = b.node("Gemm", [h, b.weight(rng.standard_normal((16, C)) * 0.5), b.weight(rng.standard_normal(16))], transB=1)
    gamma, beta = b.weight(rng.uniform(0.5, 2.0, 16)), b.weight(rng.standard_normal(16) * 0.3)
    h = b.node("LayerNormalization", [h, gamma, beta], name="layer_norm", axis=-1)
    out = b.node("Gemm", [h, b.weight(rng.standard_normal((CLASSES, 16))), b.weight(rng.standard_normal(CLASSES))],
                 transB=1, outputs=["logits"])  # fmt: skip
    b.output(out)
    return b.model()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIDE, SIDE)).astype(np.float32)


def _run(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The model, its calibration and held-out data, and normonnx's int8 model with its report."""
    folder = tmp_path_factory.mktemp("int8")
    src, dst = folder / "net.onnx", folder / "net.int8.onnx"
    onnx.save(norm_net(), src)
    np.savez(folder / "calib.npz", x=_images(64, 1))
    np.savez(folder / "held.npz", x=_images(48, 2))
    before = digest(src)
    report = quantize_file(src, dst, data=folder / "calib.npz", held_out=folder / "held.npz", runs=20)
    return folder, src, dst, report, before


def test_the_model_is_written_and_the_input_untouched(quantized):
    _folder, src, dst, report, before = quantized
    assert report.passed and report.output == str(dst) and dst.exists()
    assert digest(src) == before


def test_the_batchnorm_before_the_conv_is_folded_and_the_layernorm_kept_in_float(quantized):
    _, _src, dst, report, _ = quantized
    model = onnx.load(dst)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops  # folded into the conv after it
    assert "Conv" in ops and ops.count("QuantizeLinear") > 0
    # The LayerNorm computes in float with its scale and bias in float (onnxruntime's flow rounds both to 8 bits
    # and puts a QuantizeLinear after it), its output read by the Gemm's own quantization only.
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert all(i in floats and i not in producers for i in norm.input[1:])
    consumers = [n.op_type for n in model.graph.node if norm.output[0] in n.input]
    assert consumers == ["QuantizeLinear"]
    assert {f.op for f in report.kept_float} == {"LayerNormalization"}


def test_onnxruntimes_flow_leaves_the_batchnorm_in_float(quantized):
    _, _, _, report, _ = quantized
    assert "BatchNormalization" in report.baseline.float_ops()
    assert "BatchNormalization" not in report.int8.float_ops()


def test_accuracy_recomputed_from_the_written_files(quantized):
    folder, src, dst, report, _ = quantized
    held = np.load(folder / "held.npz")["x"]
    ref = np.concatenate([_run(src, held[i : i + 8]) for i in range(0, len(held), 8)])
    got = np.concatenate([_run(dst, held[i : i + 8]) for i in range(0, len(held), 8)])
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - got) ** 2))
    assert sqnr >= 20.0
    assert report.int8.worst_sqnr() == pytest.approx(sqnr, abs=0.05)
    assert report.int8.top1["logits"] == pytest.approx(float(np.mean(ref.argmax(1) == got.argmax(1))))
    assert report.int8.worst_sqnr() >= report.baseline.worst_sqnr() - 0.5


def test_latency_is_measured_against_float32_onnxruntime_and_a_noise_floor(quantized):
    _, _, _, report, _ = quantized
    assert set(report.latency) == {"float32", "float32 copy", "normonnx int8", "onnxruntime int8"}
    assert all(s.runs == 20 and s.median_ms > 0 for s in report.latency.values())
    assert {"float32 copy", "normonnx vs onnxruntime int8"} <= set(report.speedups)


def test_the_report_is_plain_json(quantized):
    _, _, _, report, _ = quantized
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON: no Infinity, no NaN
    assert doc["passed"] is True and doc["int8"]["flow"] == "normonnx" and doc["baseline"]["flow"] == "onnxruntime"
    assert doc["int8"]["parity"]["outputs"][0]["min_sqnr_db"] == 20.0
    assert doc["kept_float"][0]["op"] == "LayerNormalization"


def test_a_gate_it_cannot_reach_writes_nothing(quantized, tmp_path):
    folder, src, _, _, _ = quantized
    dst = tmp_path / "never.onnx"
    report = quantize_file(
        src, dst, data=folder / "calib.npz", held_out=folder / "held.npz", min_sqnr=200.0, baseline=False, bench=False
    )
    assert not report.passed and report.output is None and not dst.exists()
    assert "SQNR" in report.int8.parity.outputs[0].reason


def test_never_worse_than_onnxruntimes_flow(quantized, tmp_path):
    """Folding the LayerNorm's scale (spread 0.5-2 across channels) into the Gemm after it costs that Gemm's
    8-bit weights more than 1 dB on this model: onnxruntime's own model is written instead, and said so."""
    folder, src, _, _, _ = quantized
    dst = tmp_path / "net.int8.onnx"
    report = quantize_file(
        src, dst, data=folder / "calib.npz", held_out=folder / "held.npz", norm_affine=True, bench=False
    )
    assert report.written == "onnxruntime's flow" and report.passed
    assert report.int8.worst_sqnr() < report.baseline.worst_sqnr() - 1.0  # normonnx's own result, still reported
    assert report.parity is report.baseline.parity
    assert any("more accurate by > 1 dB" in n for n in report.notes)
    assert "BatchNormalization" in [n.op_type for n in onnx.load(dst).graph.node]  # theirs, as it is


def test_check_judges_an_int8_candidate_by_sqnr(quantized):
    from normonnx.pipelines.check import check

    folder, src, dst, _, _ = quantized
    np.savez(folder / "held_sets.npz", x=_images(16, 2).reshape(2, 8, 3, SIDE, SIDE))
    report = check(dst, against=src, inputs=str(folder / "held_sets.npz"))
    out = report.parity.outputs[0]
    assert report.passed and out.min_sqnr_db == 20.0 and out.sqnr_db >= 20.0
    assert any("int8 candidate" in n for n in report.notes)
    strict = check(dst, against=src, inputs=str(folder / "held_sets.npz"), gates={"logits": Gate(1e-5, 1e-5)})
    assert not strict.passed  # a float32 gate asked for by name still applies


def test_nothing_is_left_in_the_working_directory(quantized, tmp_path, monkeypatch):
    """Where onnxruntime's symbolic shape inference gives up, it saves its partial model to the working directory
    before raising (tools/symbolic_shape_infer.py): that must not be the user's folder, and the quantizer goes on
    without it, said in the notes."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from normonnx.int8.engine import Int8Settings, quantize

    def gives_up(model, *args, **kwargs):
        onnx.save(model, "sym_shape_infer_temp.onnx")
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(gives_up))
    _, src, _, _, _ = quantized
    monkeypatch.chdir(tmp_path)
    result = quantize(onnx.load(src).SerializeToString(), [{"x": _images(4, 5)}], Int8Settings())
    assert list(tmp_path.iterdir()) == []
    assert any("without symbolic shape inference" in n for n in result.notes)


@pytest.mark.parametrize(
    ("calibrate", "activations", "per_channel"), [("entropy", "uint8", True), ("percentile", "int8", False)]
)
def test_every_calibration_and_activation_type(quantized, tmp_path, calibrate, activations, per_channel):
    """The settings reach onnxruntime's quantizer: the activation type is the QuantizeLinear zero point's, a
    per-tensor weight has one scale, and the result still holds the gate."""
    from normonnx.int8.engine import Int8Settings

    folder, src, _, _, _ = quantized
    settings = Int8Settings(calibrate, activations, per_channel=per_channel)
    report = quantize_file(
        src, tmp_path / "q.onnx", data=folder / "calib.npz", held_out=folder / "held.npz", settings=settings,
        baseline=False, bench=False,
    )  # fmt: skip
    assert report.passed, report.int8.parity.summary()
    model = onnx.load(tmp_path / "q.onnx")
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points == {onnx.TensorProto.UINT8 if activations == "uint8" else onnx.TensorProto.INT8}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    scale = onnx.numpy_helper.to_array(inits[weight_dq.input[1]])
    assert (scale.size > 1) == per_channel
    assert calibrate in report.settings
