"""Every user mistake is one line on stderr with exit 2 that names the file or option: no traceback,
no internal error, nothing written, the inputs untouched."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest

from tests.conftest import conv_bn_model
from tests.helpers import digest

HAS_TORCH = importlib.util.find_spec("torch") is not None
ZOO = "normonnx.zoo:resnet_bn"


def _setup(tmp):
    model = tmp / "model.onnx"
    onnx.save(conv_bn_model(), model)
    (tmp / "text.onnx").write_text("not a model")
    (tmp / "a_file").write_text("x")
    np.savez(tmp / "wrong.npz", images=np.zeros((4, 5), np.float32))
    np.save(tmp / "plain.npy", np.zeros((2, 3, 16, 16), np.float32))
    np.savez(tmp / "extra.npz", input=np.zeros((2, 3, 16, 16), np.float32), other=np.zeros(3, np.float32))
    np.savez(tmp / "wrongdim.npz", input=np.zeros((2, 4, 16, 16), np.float32))
    onnx.save(conv_bn_model(1), tmp / "second.onnx")
    (tmp / "bad.json").write_text("{not json")
    np.savez(tmp / "one.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    onnx.save(_quantized_model(), tmp / "int8.onnx")
    onnx.save(_custom_op_model(), tmp / "custom.onnx")
    np.savez(tmp / "custom.npz", input=np.zeros((8, 3, 8, 8), np.float32))
    return model


def _custom_op_model() -> onnx.ModelProto:
    """Conv -> com.example:MyRelu: an op onnxruntime has no kernel for."""
    from tests.builders import GraphBuilder

    b = GraphBuilder(opset=17)
    x = b.input("input", [1, 3, 8, 8])
    y = b.conv(x, 3, 4, np.random.default_rng(0))
    b.nodes.append(onnx.helper.make_node("MyRelu", [y], ["out"], name="my_relu", domain="com.example"))
    b.custom_domains.append("com.example")
    b.output("out", shape=[1, 4, 6, 6])
    return b.model()


def _quantized_model() -> onnx.ModelProto:
    """A QDQ file, as onnxruntime's quantizer writes one: x -> QuantizeLinear -> DequantizeLinear -> Relu."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# (arguments, what the one line must say). {m} is a valid model, {t} the temporary folder.
CASES = [
    (["fold", "{t}/missing.onnx", "-o", "{t}/o.onnx"], "no such file"),
    (["fold", "{t}/text.onnx", "-o", "{t}/o.onnx"], "not an ONNX model"),
    (["fold", "{m}", "-o", "{m}"], "refusing to write over the input"),
    (["fold", "{m}", "-o", "{t}/nofolder/o.onnx"], "does not exist"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--shape", "nosuch:1,3,16,16"], "no such input"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--shape", "input:x"], "--shape"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--jobs", "2"], "--jobs 2: applies to many-file runs"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--jobs", "0"], "--jobs 0"),
    (["fold", "{m}"], "no output given"),
    (["fold", "{t}", "-o", "{t}/o.onnx"], "is a directory"),
    (["fold", "{m}", "{m}", "-o", "{t}/a_file"], "not a folder"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--report", "{t}/nofolder/r.json"], "does not exist"),
    (["emit", "{m}", "-o", "{t}/o.onnx", "--opset", "5"], "--opset 5"),
    (["emit", "{m}", "-o", "{t}/o.onnx", "--norm-style", "fancy"], "--norm-style"),
    (["inspect", "{t}/missing.onnx"], "no such file"),
    (["check", "{m}", "--against", "{t}/missing.onnx"], "no such file"),
    (["check", "{m}", "--against", "{m}", "--shape", "nosuch:1,3,16,16"], "no such input"),
    (["check", "{m}", "--against", "{m}", "--tol", "nosuch=1e-3"], "--tol nosuch"),
    (["check", "{m}", "--against", "{m}", "--tol", "x"], "--tol"),
    (["check", "{m}", "--against", "{m}", "--atol", "-1"], "--atol -1"),
    (["check", "{m}", "--against", "{m}", "--samples", "0"], "--samples 0"),
    (["check", "{m}", "--against", "{m}", "--checkpoint", "{t}/w.safetensors"], "--checkpoint"),
    (["check", "{m}", "--against", "{m}", "--inputs", "{t}/missing.npz"], "missing.npz"),
    (["check", "{m}", "--against", "{m}", "--map", "{t}/bad.json"], "bad.json"),
    (["check", "{m}", "--against", "{m}", "--provider", "cuda"], "CUDAExecutionProvider"),
    (["check", "{m}", "--against", "{m}", "--save-inputs", "{t}/nofolder/i.npz"], "does not exist"),
    (["quantize", "{t}/int8.onnx", "-o", "{t}/o.onnx"], "already quantized (1 DequantizeLinear, 1 QuantizeLinear)"),
    (["quantize", "{m}", "-o", "{t}/o.onnx", "--data", "{t}/one.npz"], "one input set"),
    (["quantize", "{m}", "-o", "{t}/o.onnx", "--data", "{t}/wrongdim.npz"], "where the model fixes 3"),
    (["quantize", "{m}", "-o", "{t}/o.onnx", "--data", "{t}/extra.npz"], "is no input of the model"),
    (["quantize", "{m}", "-o", "{t}/o.onnx", "--held-out", "{t}/one.npz"], "--held-out"),
    (["quantize", "{m}", "-o", "{t}/o.onnx", "--min-sqnr", "1000"], "--min-sqnr 1000"),
    (["quantize", "{m}", "-o", "{m}"], "refusing to write over the input"),
    (["quantize", "{t}/custom.onnx", "-o", "{t}/o.onnx", "--data", "{t}/custom.npz"], "com.example"),
    (["bench", "{m}", "--runs", "0"], "--runs 0"),
    (["bench", "{m}", "--threads", "-2"], "--threads -2"),
    (["bench", "{m}", "--shape", "nosuch:1,3,16,16"], "no such input"),
    (["bench", "{t}/missing.onnx"], "no such file"),
    (["export", "nomodule", "-o", "{t}/o.onnx"], "expected MODULE:FACTORY"),
    (["export", "no_such_module_xyz:f", "-o", "{t}/o.onnx"], "cannot import"),
    (["convert", ZOO, "-o", "{t}/out", "--runs", "0"], "--runs 0"),
    (["demo", "--runs", "0"], "--runs 0"),
    # found by an adversarial review
    (["check", "{m}", "--against", "{m}", "--save-inputs", "{m}"], "would overwrite"),
    (["check", "{m}", "--against", "{m}", "--save-inputs", "{t}/s.npz", "--save-outputs", "{t}/s.npz"], "same file"),
    (["check", "{m}", "--against", "{m}", "--inputs", "{t}/plain.npy"], "single .npy"),
    (["check", "{m}", "--against", "{m}", "--inputs", "{t}/extra.npz"], "'other' is no input"),
    (["check", "{m}", "--against", "{m}", "--inputs", "{t}/wrongdim.npz"], "where the model fixes 3"),
    (["check", "{m}", "--against", "{m}", "--inputs", "{t}/text.onnx"], "not an .npz"),
    (["check", "{m}", "--against", "{m}", "--fp16-baseline", "{t}/missing.onnx"], "no such file"),
    (["check", "{m}", "--against", "{m}", "--fp16-baseline", "{m}"], "applies only to an fp16 candidate"),
    (["check", "{m}", "--against", "{t}/nothing", "-o", "{t}/checked"], "no such file or folder"),
    (["check", "{m}", "--against", "{m}", "--tol", "out=1,2,3"], "--tol"),
    (["check", "{m}", "--against", "{m}", "--rtol", "inf"], "finite"),
    (["fold", "{m}", "{t}/second.onnx"], "exists; to replace it"),
    (["fold", "{m}", "-o", "{t}/o.onnx", "--report", "{t}"], "names a directory"),
    (["demo", "-o", "{t}/a_file"], "not a folder"),
    (["demo", "--opset", "9", "-o", "{t}/demo"], "--opset 9"),
    # issue 22: targets and a second runtime
    (["emit", "{m}", "-o", "{t}/o.onnx", "--target", "tensorrt-7"], "--target"),
    (["emit", "{m}", "-o", "{t}/o.onnx", "--target", "tensorrt-8.6", "--opset", "18"], "takes opsets up to 17"),
    (["check", "{m}", "--against", "{m}", "--runtime", "openvino", "--provider", "cuda"], "CPU plugin only"),
    (["inspect", "{m}", "--target", "nosuch"], "--target"),
]
TORCH_CASES = [
    (["export", ZOO, "-o", "{t}/o.onnx", "--input-shape", "1,x"], "--input-shape"),
    (["export", ZOO, "-o", "{t}/o.onnx", "--opset", "9"], "--opset 9"),
    (["export", ZOO, "-o", "{t}/o.onnx", "--checkpoint", "{t}/missing.pt"], "no such file"),
    (["check", "{m}", "--torch", ZOO, "--checkpoint", "{t}/missing.pt"], "no such file"),
    (["convert", ZOO, "-o", "{t}/a_file"], "not a folder"),
    (["convert", ZOO, "-o", "{t}/out", "--data", "{t}/wrong.npz", "--no-floor"], "--data"),
    (["demo", "--only", "nosuch", "-o", "{t}/demo"], "unknown zoo models"),
    (["demo", "--only", "", "-o", "{t}/demo"], "unknown zoo models"),
    (["export", ZOO, "-o", "{t}/edir/"], "ends with a slash"),
    (
        ["export", "normonnx.zoo:style_in", "-o", "{t}/o.onnx", "--dynamic", "x:2:h", "--dynamic", "x:2:w"],
        "already dynamic",
    ),
]


def _params():
    for args, expected in CASES:
        yield pytest.param(args, expected, id=" ".join(args[:1] + args[2:])[:60])
    for args, expected in TORCH_CASES:
        marks = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
        yield pytest.param(args, expected, id=" ".join(args[:1] + args[2:])[:60], marks=marks)


def test_there_are_at_least_25_mistakes():
    assert len(CASES) + len(TORCH_CASES) >= 25


@pytest.mark.parametrize(("args", "expected"), list(_params()))
def test_a_mistake_is_one_line_and_exit_2(cli, tmp_path, args, expected):
    model = _setup(tmp_path)
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    argv = [a.format(m=model, t=tmp_path) for a in args]
    r = cli(*argv)
    lines = [line for line in r.err.strip().splitlines() if line]
    assert r.code == 2, (argv, r.code, r.err)
    assert len(lines) == 1 and "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert expected in r.err, (expected, r.err)
    after = {p.name: digest(p) for p in tmp_path.iterdir()}
    assert after == before, "a mistake wrote or changed a file"


def test_many_files_one_broken_is_reported_and_the_rest_are_folded(cli, tmp_path):
    src = tmp_path / "models"
    (src / "sub").mkdir(parents=True)
    for k, path in enumerate([src / "a.onnx", src / "b.onnx", src / "sub" / "c.onnx"]):
        onnx.save(conv_bn_model(k), path)
    (src / "broken.onnx").write_text("not a model")
    r = cli("fold", src, "-o", tmp_path / "out", "--jobs", "2", "--json")
    assert r.code == 2, r.err  # the worst file's code: one unusable input
    summary = json.loads(r.out)
    assert summary == json.loads((tmp_path / "out" / "summary.json").read_text()) | {"seconds": summary["seconds"]}
    verdicts = {row["source"].removeprefix(str(src) + "/"): row["verdict"] for row in summary["files"]}
    assert verdicts == {"a.onnx": "PASSED", "b.onnx": "PASSED", "broken.onnx": "ERROR", "sub/c.onnx": "PASSED"}
    for rel in ("a.onnx", "b.onnx", "sub/c.onnx"):
        folded = onnx.load(tmp_path / "out" / rel)
        assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv"]
    assert not (tmp_path / "out" / "broken.onnx").exists()


def test_an_output_folder_inside_the_input_folder_is_not_read_back(cli, tmp_path):
    src = tmp_path / "models"
    src.mkdir()
    onnx.save(conv_bn_model(), src / "a.onnx")
    for _ in range(2):  # the second run must not find the first run's output
        r = cli("fold", src, "-o", src / "out", "--json")
        assert r.code == 0, r.err
        assert [row["source"] for row in json.loads(r.out)["files"]] == [str(src / "a.onnx")]
    assert not (src / "out" / "out").exists()
