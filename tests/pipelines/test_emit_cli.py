"""``normonnx emit`` and ``normonnx export`` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.builders import GraphBuilder, assert_parity, decomposed_norm, op_types
from tests.conftest import requires_torch


@pytest.fixture
def decomposed_ln(tmp_path):
    b = GraphBuilder(opset=13)
    x = b.input("x", ["batch", 5, 8])
    rng = np.random.default_rng(0)
    y = decomposed_norm(b, x, [-1])
    y = b.node("Add", [b.node("Mul", [y, b.weight(rng.uniform(0.5, 2, 8))]), b.weight(rng.standard_normal(8))])
    b.output(y, shape=["batch", 5, 8])
    path = tmp_path / "ln13.onnx"
    onnx.save(b.model(), path)
    return path


def test_emit_raises_to_the_op_at_a_newer_opset(cli, decomposed_ln, tmp_path):
    out = tmp_path / "ln17.onnx"
    r = cli("emit", decomposed_ln, "-o", out, "--opset", 17, "--norm-style", "op", "--report", tmp_path / "r.json")
    assert r.code == 0, r.err
    assert r.out.strip().endswith("PASSED")
    model = onnx.load(out)
    assert op_types(model) == ["LayerNormalization"]
    assert model.opset_import[0].version == 17
    assert_parity(onnx.load(decomposed_ln), model)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["opset"] == 17 and report["after"] == {"layernorm:op": 1}


def test_emit_lowers_back_to_an_old_opset(cli, decomposed_ln, tmp_path):
    up = tmp_path / "ln18.onnx"
    assert cli("emit", decomposed_ln, "-o", up, "--opset", 18, "--norm-style", "op").code == 0
    down = tmp_path / "ln11.onnx"
    r = cli("emit", up, "-o", down, "--opset", 11)
    assert r.code == 0, r.err
    model = onnx.load(down)
    assert model.opset_import[0].version == 11 and "LayerNormalization" not in op_types(model)
    assert_parity(onnx.load(decomposed_ln), model)


@pytest.mark.parametrize(
    "args,expected", [(["--opset", "9"], "opsets 11 to"), (["--norm-style", "fancy"], "invalid choice")]
)
def test_emit_bad_arguments(cli, decomposed_ln, tmp_path, args, expected):
    r = cli("emit", decomposed_ln, "-o", tmp_path / "o.onnx", *args)
    assert r.code == 2 and expected in r.err
    assert not (tmp_path / "o.onnx").exists()


def test_emit_down_conversion_refuses_what_it_cannot_convert(cli, tmp_path):
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, 1, 4, 4])
    scales = b.const(np.array([1, 1, 0.5, 0.5], np.float32))
    b.output(b.node("Resize", [x, "", scales], mode="linear", antialias=1))
    path = tmp_path / "resize.onnx"
    onnx.save(b.model(), path)
    r = cli("emit", path, "-o", tmp_path / "o.onnx", "--opset", 13)
    assert r.code == 2 and "Resize" in r.err and "antialias=1" in r.err and str(path) in r.err
    assert len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("allowzero", [0, 1])
def test_emit_down_conversion_drops_attributes_that_change_nothing(cli, tmp_path, allowzero):
    """Exporters write Reshape's allowzero (0, or 1 on every dynamo view) and Constant value_ints;
    neither exists at opset 11, and neither changes the result here."""
    h = onnx.helper
    nodes = [
        h.make_node("Constant", [], ["shape"], value_ints=[2, -1]),
        h.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 12])
    model = h.make_model(h.make_graph(nodes, "g", [x], [y]), opset_imports=[h.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "r17.onnx")
    r = cli("emit", tmp_path / "r17.onnx", "-o", tmp_path / "r11.onnx", "--opset", 11)
    assert r.code == 0, r.err
    out = onnx.load(tmp_path / "r11.onnx")
    assert out.opset_import[0].version == 11
    assert all(a.name in ("value",) for n in out.graph.node for a in n.attribute)
    assert_parity(model, out)


@pytest.mark.slow
def test_export_cli_end_to_end(cli, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gn.onnx"
    r = cli("export", "tests.torchfront.family_nets:groupnorm", "-o", out, "--opset", 21, "--norm-style", "op")
    assert r.code == 0, r.err
    assert "parity vs torch eager PASSED" in r.out
    assert op_types(onnx.load(out)).count("GroupNormalization") == 1


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("nomodule", "expected MODULE:FACTORY"),
        ("no_such_module_xyz:f", "cannot import"),
        pytest.param("tests.torchfront.family_nets:nothing", "has no attribute", marks=requires_torch),
    ],
)
def test_export_bad_factory_is_one_line(cli, tmp_path, spec, expected):
    r = cli("export", spec, "-o", tmp_path / "o.onnx")
    assert r.code == 2 and expected in r.err and len(r.err.strip().splitlines()) == 1


def test_groupnorm_18_files_load_and_emit_to_21_per_channel(cli, tmp_path):
    """onnx's checker refuses the deprecated GroupNormalization-18; normonnx must still read such files."""
    h, rng = onnx.helper, np.random.default_rng(4)
    scale, bias = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(bias, "b")]
    node = h.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn", num_groups=3)
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6, 4, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6, 4, 4])
    model = h.make_model(h.make_graph([node], "g", [x], [y], inits), opset_imports=[h.make_opsetid("", 18)])
    src = tmp_path / "gn18.onnx"
    onnx.save(model, src)
    assert "groupnorm" in cli("inspect", src).out
    r = cli("emit", src, "-o", tmp_path / "gn21.onnx", "--opset", 21, "--norm-style", "op")
    assert r.code == 0, r.err
    out = onnx.load(tmp_path / "gn21.onnx")
    assert out.opset_import[0].version == 21 and op_types(out) == ["GroupNormalization"]
    per_channel = onnx.numpy_helper.to_array(
        next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    )
    assert per_channel.shape == (6,) and np.array_equal(per_channel, np.repeat(scale, 2))
    onnx.checker.check_model(out, full_check=True)


def test_export_without_torch_names_the_extra_to_install(cli, tmp_path, monkeypatch):
    """A machine with normonnx but not its export extra gets one line saying what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    r = cli("export", "tests.builders:GraphBuilder", "-o", tmp_path / "o.onnx")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "pip install 'normonnx[export]'" in r.err and not (tmp_path / "o.onnx").exists()


def _gn_chain(middle: str | None, then: str) -> onnx.ModelProto:
    """GroupNormalization-21, optionally a Relu, then another normalization op: onnx infers no type for
    GroupNormalization-21's output (a function op), which once left the second op unlowered."""
    rng = np.random.default_rng(7)
    b = GraphBuilder(opset=21)
    x = b.input("x", [2, 4, 4, 4])
    y = b.node("GroupNormalization", [x, b.weight(rng.uniform(0.5, 2, 4)), b.weight(rng.standard_normal(4))],
               num_groups=2)  # fmt: skip
    if middle:
        y = b.node(middle, [y])
    if then == "GroupNormalization":
        y = b.node(then, [y, b.weight(rng.uniform(0.5, 2, 4)), b.weight(rng.standard_normal(4))], num_groups=2)
    else:
        y = b.node(then, [y, b.weight(rng.uniform(0.5, 2, 4)), b.weight(rng.standard_normal(4))], axis=-1)
    b.output(y, shape=[2, 4, 4, 4])
    return b.model()


@pytest.mark.parametrize(
    ("middle", "then", "opset"),
    [(None, "GroupNormalization", 20), (None, "GroupNormalization", 21), ("Relu", "GroupNormalization", 20),
     (None, "LayerNormalization", 16)],
)  # fmt: skip
def test_chained_normalizations_all_lower(cli, tmp_path, middle, then, opset):
    src, out = tmp_path / "chain.onnx", tmp_path / "out.onnx"
    onnx.save(_gn_chain(middle, then), src)
    r = cli("emit", src, "-o", out, "--opset", opset, "--norm-style", "decomposed")
    assert r.code == 0, r.err
    ops = op_types(onnx.load(out))
    assert "GroupNormalization" not in ops and "LayerNormalization" not in ops, ops
    assert "parity PASSED" in r.out
