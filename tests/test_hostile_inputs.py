"""Hostile inputs: a one-line error naming the file, or a correct explained skip; never a traceback,
never a modified input, never a partial output."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.builders import GraphBuilder, bn_params
from tests.conftest import conv_bn_model
from tests.helpers import digest


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _external(tmp: Path, name: str = "m.onnx", **fields) -> Path:
    """conv_bn_model with all weights in weights.bin, then the given external_data fields overwritten."""
    path = tmp / name
    onnx.save(
        conv_bn_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key in fields:
                e.value = str(fields[e.key])
    onnx.save(m, path)
    return path


def _tiny_graph(nodes, opset=17, inits=(), outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4]) for o in outputs],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _constant_with_external(tmp: Path) -> Path:
    value = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        e = value.external_data.add()
        e.key, e.value = k, v
    value.ClearField("raw_data")
    nodes = [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])]
    return _save(_tiny_graph(nodes), tmp / "const.onnx")


def _subgraph_with_external(tmp: Path) -> Path:
    w = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "/etc/shadow"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    w.ClearField("raw_data")
    branch = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    return _save(_tiny_graph([node], inits=[cond]), tmp / "if.onnx")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deeply_nested(tmp: Path, depth: int = 300) -> Path:
    """If inside If inside If ... 300 deep, written byte by byte: protobuf itself cannot build it."""
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]).SerializeToString()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    ).SerializeToString()
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)  # type GRAPH
        node = _field(1, b"cond") + _field(2, b"y") + _field(4, b"If") + _field(5, attribute)
        graph = _field(1, node) + _field(2, b"g") + _field(12, output)
    opset = helper.make_opsetid("", 17).SerializeToString()
    model = _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, opset)  # ir_version 8, graph, opset
    (tmp / "nested.onnx").write_bytes(model)
    return tmp / "nested.onnx"


def _bytes(data: bytes, name: str = "bad.onnx") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _model_with(mutate: Callable[[onnx.ModelProto], None], name: str = "m.onnx") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        m = conv_bn_model()
        mutate(m)
        return _save(m, tmp / name)

    return make


def _symlinked(tmp: Path) -> Path:
    path = _external(tmp, location="link.bin")
    (tmp / "link.bin").symlink_to(tmp / "weights.bin")
    return path


def _hardlinked(tmp: Path) -> Path:
    path = _external(tmp, location="hard.bin")
    os.link(tmp / "weights.bin", tmp / "hard.bin")
    return path


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.onnx")
    return tmp / "pipe.onnx"


def _truncated(tmp: Path) -> Path:
    data = conv_bn_model().SerializeToString()
    return _bytes(data[: len(data) // 2])(tmp)


def _cycle(m: onnx.ModelProto) -> None:
    m.graph.node[0].input[0] = m.graph.node[-1].output[0]


def _duplicate(m: onnx.ModelProto) -> None:
    m.graph.node[1].output[0] = m.graph.node[0].output[0]


def _unknown_op(m: onnx.ModelProto) -> None:
    m.graph.node[2].op_type = "FancyNorm"


def _no_graph(m: onnx.ModelProto) -> None:
    m.ClearField("graph")


REFUSED = {
    "empty file": (_bytes(b""), "is empty"),
    "truncated": (_truncated, "the file is truncated"),
    "random bytes": (_bytes(np.random.default_rng(0).bytes(4096)), "ONNX model"),
    "text": (_bytes(b"ir_version: 8\nthis is not protobuf\n"), "ONNX model"),
    "a tensor, not a model": (
        _bytes(numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString()),
        "ONNX model",
    ),
    "directory": (lambda tmp: (tmp / "dir.onnx").mkdir() or tmp / "dir.onnx", "is a directory"),
    "/dev/zero": (lambda tmp: Path("/dev/zero"), "not a regular file"),
    "fifo": (_fifo, "not a regular file"),
    "missing": (lambda tmp: tmp / "nothing.onnx", "no such file"),
    "ir_version 99": (_model_with(lambda m: setattr(m, "ir_version", 99)), "ir_version 99"),
    "opset 30": (_model_with(lambda m: setattr(m.opset_import[0], "version", 30)), "opset 30"),
    "no graph": (_model_with(_no_graph), "no graph"),
    "unknown default-domain op": (_model_with(_unknown_op), "FancyNorm"),
    "cycle": (_model_with(_cycle), "topologically sorted"),
    "duplicate names": (_model_with(_duplicate), "single static assignment"),
    "deep nesting": (_deeply_nested, "not an ONNX model"),
    "external ..": (lambda tmp: _external(tmp, location="../weights.bin"), "leaves the model's folder"),
    "external absolute": (lambda tmp: _external(tmp, location="/etc/passwd"), "not relative"),
    "external NUL": (lambda tmp: _external(tmp, location="weights.bin\x00.txt"), "NUL"),
    "external symlink": (_symlinked, "symbolic link"),
    "external hardlink": (_hardlinked, "hard links"),
    "external offset past EOF": (lambda tmp: _external(tmp, offset=10**7), "past the end"),
    "external length past EOF": (lambda tmp: _external(tmp, length=10**7), "past the end"),
    "external negative offset": (lambda tmp: _external(tmp, offset=-5), "negative"),
    "external missing file": (lambda tmp: _external(tmp, location="gone.bin"), "does not exist"),
    "external in a Constant node": (_constant_with_external, "leaves the model's folder"),
    "external in a subgraph": (_subgraph_with_external, "not relative"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_one_line(cli, tmp_path, case):
    make, expected = REFUSED[case]
    src = make(tmp_path)
    before = digest(src) if src.exists() and src.is_file() and not src.is_fifo() else None
    listing = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.onnx"
    r = cli("fold", src, "-o", out)
    assert r.code == 2, (case, r)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert str(src) in lines[0] and expected in lines[0], lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no temporaries, nothing deleted
    if before is not None:
        assert digest(src) == before


def test_a_decoy_weight_file_in_the_working_directory_is_never_read(cli, tmp_path, monkeypatch):
    model_dir, cwd = tmp_path / "model", tmp_path / "cwd"
    model_dir.mkdir()
    cwd.mkdir()
    src = _external(model_dir)
    os.replace(model_dir / "weights.bin", cwd / "weights.bin")  # only the decoy is reachable, from the cwd
    monkeypatch.chdir(cwd)
    r = cli("fold", src, "-o", tmp_path / "out.onnx")
    assert r.code == 2 and "does not exist" in r.err and not (tmp_path / "out.onnx").exists()
    r = cli("check", src, "--against", src)
    assert r.code == 2 and "does not exist" in r.err


def _bn_model(
    mutate: Callable[[list[np.ndarray]], None], opset: int = 17, dtype=np.float32, **attrs
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=opset, dtype=dtype)
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(x, 3, 4, rng, name="conv")
    params = bn_params(4, rng, dtype)
    mutate(params)
    b.output(b.node("BatchNormalization", [y, *(b.const(p) for p in params)], name="bn", **attrs), shape=[1, 4, 4, 4])
    return b.model()


def _set(index: int, channel: int, value: float):
    def mutate(params):
        params[index][channel] = value

    return mutate


EXPLAINED = {
    "var + eps <= 0": (_bn_model(_set(3, 2, -1.0)), "<= 0 at channel 2"),
    "negative eps": (_bn_model(lambda p: None, epsilon=-1e-3), "epsilon is -0.001"),
    "NaN scale": (_bn_model(_set(0, 1, np.nan)), "scale is nan at channel 1"),
    "Inf mean": (_bn_model(_set(2, 3, np.inf)), "mean is inf at channel 3"),
    "fp16 overflow": (
        _bn_model(lambda p: (p[0].__setitem__(0, 60000), p[3].__setitem__(0, 1e-4)), dtype=np.float16),
        "overflow float16",
    ),
    "training mode": (_bn_model(lambda p: None, training_mode=1), "training"),
}


@pytest.mark.parametrize("case", list(EXPLAINED))
def test_numerical_hazards_are_explained_skips(cli, tmp_path, case):
    model, reason = EXPLAINED[case]
    src = _save(model, tmp_path / "m.onnx")
    before = digest(src)
    r = cli("inspect", src)
    assert r.code == 0 and "kept" in r.out and reason in r.out, r.out
    r = cli("fold", src, "-o", tmp_path / "out.onnx", "--no-verify")
    assert r.code == 0 and reason in r.out
    assert onnx.load(tmp_path / "out.onnx").graph.node[-1].op_type == "BatchNormalization"
    assert digest(src) == before


def test_nan_in_conv_weights_is_named(cli, tmp_path):
    m = conv_bn_model()
    w = next(t for t in m.graph.initializer if t.name == m.graph.node[0].input[1])
    a = numpy_helper.to_array(w).copy()
    a[5, 0, 0, 0] = np.inf
    w.CopyFrom(numpy_helper.from_array(a, w.name))
    src = _save(m, tmp_path / "m.onnx")
    r = cli("inspect", src)
    assert "holds inf at output channel 5" in r.out


def test_spatial_0_batchnorm_is_refused_clearly(cli, tmp_path):
    src = _save(_bn_model(lambda p: None, opset=7, spatial=0), tmp_path / "old.onnx")
    r = cli("inspect", src)
    assert r.code == 0 and "spatial=0" in r.out, r.out


def test_pre_opset_7_batchnorm_is_raised_to_7_and_folded(cli, tmp_path):
    """onnxruntime runs nothing before opset 7: fold works on, and verifies against, onnx's upgrade of it."""
    src = _save(_bn_model(lambda p: None, opset=6, is_test=1), tmp_path / "old.onnx")
    r = cli("fold", src, "-o", tmp_path / "out.onnx")
    assert r.code == 0 and "raised from opset 6 to 7" in r.out and "PASSED" in r.out, r.out + r.err
    assert "BatchNormalization" not in [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node]


def test_custom_domain_ops_are_left_untouched(cli, tmp_path):
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, 3, 6, 6])
    y = b.conv(x, 3, 4, rng)
    b.nodes.append(helper.make_node("MyNorm", [y], ["z"], domain="com.vendor", name="custom"))
    b.custom_domains.append("com.vendor")
    b.output("z", shape=[1, 4, 4, 4])
    src = _save(b.model(), tmp_path / "custom.onnx")
    r = cli("fold", src, "-o", tmp_path / "out.onnx", "--no-verify")
    assert r.code == 0
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node] == ["Conv", "MyNorm"] and out.graph.node[1].domain == "com.vendor"


def test_writing_over_the_input_or_its_weights_is_refused(cli, tmp_path):
    src = _external(tmp_path)
    before = (digest(src), digest(tmp_path / "weights.bin"))
    r = cli("fold", src, "-o", src)
    assert r.code == 2 and "refusing to write over the input" in r.err
    r = cli("fold", src, "-o", tmp_path / "out.onnx", "--report", src)
    assert r.code == 2 and "--report would overwrite" in r.err and not (tmp_path / "out.onnx").exists()
    os.replace(tmp_path / "weights.bin", tmp_path / "out.onnx.data")  # the input's weights carry the output's name
    m = onnx.load(src, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "out.onnx.data"
    onnx.save(m, src)
    r = cli("fold", src, "-o", tmp_path / "out.onnx")
    assert r.code == 0, r.err
    assert digest(tmp_path / "out.onnx.data") == before[1]  # the input's weights, untouched


CHECKPOINTS = [
    "malicious pickle",
    "pickled module",
    "torchscript archive",
    "truncated zip",
    "empty",
    "text",
    "oversized safetensors header",
]


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_checkpoint_attacks_are_refused_by_export(cli, tmp_path, monkeypatch, case):
    torch = pytest.importorskip("torch")
    import struct

    monkeypatch.chdir(tmp_path)
    path = tmp_path / ("ckpt.safetensors" if "safetensors" in case else "ckpt.pt")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    if case == "malicious pickle":

        class Exploit:
            def __reduce__(self):
                return (os.system, ("touch exploited",))

        torch.save({"x": Exploit()}, path)
    elif case == "pickled module":
        torch.save(model, path)
    elif case == "torchscript archive":
        torch.jit.save(torch.jit.script(model), path)
    elif case == "truncated zip":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("weights: yes\n")
    else:
        path.write_bytes(struct.pack("<Q", 2**50) + b"{}")
    r = cli("export", "tests.torchfront.family_nets:batchnorm", "-o", tmp_path / "out.onnx", "--checkpoint", path)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and str(path) in r.err, r.err
    assert "Traceback" not in r.err and not (tmp_path / "out.onnx").exists()
    assert not (tmp_path / "exploited").exists()
