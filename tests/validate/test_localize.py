"""Localization between models nobody here made (issue 12): the right node, and no earlier one.

Expected answers come from how each model was built (which conv got the planted error, which node
a tool fused), never from the code under test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from normonnx.pipelines.check import check
from normonnx.validate.align import align
from tests.conftest import NO_MATPLOTLIB, NO_SYMPY_FOR_ORT, skip_without

BLOCKS = 6
CHANNELS = 8


def conv_bn_chain(seed: int = 0) -> onnx.ModelProto:
    """x -> [Conv c{i} -> BatchNorm b{i} -> Relu r{i}] x 6 -> out, every statistic non-trivial."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(BLOCKS):
        w = (rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) / np.sqrt(9 * CHANNELS)).astype(np.float32)
        params = {
            "scale": rng.uniform(0.5, 1.5, CHANNELS),
            "bias": rng.uniform(-0.3, 0.3, CHANNELS),
            "mean": rng.uniform(-0.2, 0.2, CHANNELS),
            "var": rng.uniform(0.5, 2.0, CHANNELS),
        }
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits += [numpy_helper.from_array(v.astype(np.float32), f"{k}{i}") for k, v in params.items()]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *(f"{k}{i}" for k in params)], [f"b{i}"],
                                      name=f"bn{i}", epsilon=1e-5))  # fmt: skip
        out = "out" if i == BLOCKS - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"b{i}"], [out], name=f"relu{i}"))
        prev = out
    shape = [1, CHANNELS, 10, 10]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def folded_by_another_tool(ref: onnx.ModelProto, planted: int, rename: bool = False) -> onnx.ModelProto:
    """Each BN folded into its conv by numpy, the conv's output keeping the conv's name (so ``c{i}`` now
    holds what ``b{i}`` held), and a 1% error in conv ``planted``'s weights."""
    arrays = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    nodes, inits, prev = [], [], "x"
    for i in range(BLOCKS):
        s = arrays[f"scale{i}"] / np.sqrt(arrays[f"var{i}"] + 1e-5)
        w = arrays[f"w{i}"] * s[:, None, None, None]
        b = arrays[f"bias{i}"] - s * arrays[f"mean{i}"]
        if i == planted:
            w = w * 1.01
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"fw{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"fb{i}"),
        ]
        conv_out = f"t{i}" if rename else f"c{i}"
        nodes.append(helper.make_node("Conv", [prev, f"fw{i}", f"fb{i}"], [conv_out], name=f"fused{i}",
                                      pads=[1, 1, 1, 1]))  # fmt: skip
        out = "out" if i == BLOCKS - 1 else (f"u{i}" if rename else f"r{i}")
        nodes.append(helper.make_node("Relu", [conv_out], [out], name=f"act{i}"))
        prev = out
    graph = helper.make_graph(nodes, "folded", list(ref.graph.input), list(ref.graph.output), inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("planted", [2, 4])
def test_a_planted_error_in_another_tools_fold_is_found_at_its_conv_and_no_earlier(planted):
    ref = conv_bn_chain()
    result = check(folded_by_another_tool(ref, planted), against=ref)
    assert not result.passed
    loc = result.localization
    assert loc.first.node == f"fused{planted}", loc.to_dict()
    # The convs before it hold BN outputs under conv names: they differ, and the ReLUs after them agree.
    assert set(loc.changed_meaning) >= {f"c{i}" for i in range(planted)}
    assert loc.first.inputs == [] or all(i["agrees"] for i in loc.first.inputs)
    assert [p["op"] for p in loc.path][-1] == "Relu" and loc.path[-1]["tensor"] == "out"


def test_renamed_tensors_are_aligned_by_structure():
    ref = conv_bn_chain()
    renamed = onnx.ModelProto()
    renamed.CopyFrom(ref)
    names = {o: f"renamed_{o}" for n in renamed.graph.node for o in n.output if o != "out"}
    for n in renamed.graph.node:
        n.input[:] = [names.get(i, i) for i in n.input]
        n.output[:] = [names.get(o, o) for o in n.output]
    w3 = next(t for t in renamed.graph.initializer if t.name == "w3")
    w3.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w3) * 1.01, "w3"))
    pairs = align(renamed, ref)
    assert {p.how for p in pairs} == {"structure", "name"}
    assert sum(p.how == "structure" for p in pairs) == 3 * BLOCKS - 1  # every tensor but the output
    result = check(renamed, against=ref)
    assert result.localization.first.node == "conv3", result.localization.to_dict()


def channels_first_rms_norm() -> onnx.ModelProto:
    """Conv, then an RMSNorm over the channel axis of NCHW written out (Pow, ReduceMean over axis 1)."""
    rng = np.random.default_rng(1)
    c = 8
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32), "gamma"),
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.2).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Pow", ["conv_out", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq", "axis"], ["ms"], name="mean", keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["ms_eps"], name="add"),
        helper.make_node("Sqrt", ["ms_eps"], ["rms"], name="sqrt"),
        helper.make_node("Div", ["conv_out", "rms"], ["normed"], name="div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="mul"),
        helper.make_node("Relu", ["scaled"], ["out"], name="relu"),
    ]
    shape = [1, c, 6, 6]
    graph = helper.make_graph(
        nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_onnxruntimes_wrong_channels_first_fusion_loads_fails_and_is_localized(tmp_path):
    """onnxruntime.transformers' optimizer fuses this into SimplifiedLayerNormalization(axis=1), which
    normalizes over C, H and W together."""
    skip_without("sympy", NO_SYMPY_FOR_ORT)  # the optimizer's shape inference imports it
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    src = tmp_path / "rms.onnx"
    onnx.save(channels_first_rms_norm(), src)
    fused = optimizer.optimize_model(str(src), model_type="bert", opt_level=0).model
    ops = [n.op_type for n in fused.graph.node]
    assert "SimplifiedLayerNormalization" in ops, ops  # the premise: the tool fused it
    onnx.save(fused, tmp_path / "fused.onnx")
    result = check(tmp_path / "fused.onnx", against=src)
    assert not result.passed
    assert result.localization.first.op == "SimplifiedLayerNormalization", result.localization.to_dict()
    assert [i["agrees"] for i in result.localization.first.inputs] == [True]  # the conv before it agrees


def test_a_planted_error_in_a_torch_export_names_the_module_path(tmp_path):
    pytest.importorskip("torch")
    from normonnx.pipelines.export import export_file
    from normonnx.validate.scopes import module_path

    spec = "tests.validate.stages_net:staged"
    export_file(spec, tmp_path / "staged.onnx", opset=17)
    model = onnx.load(tmp_path / "staged.onnx")
    conv = next(n for n in model.graph.node if module_path(n) == "stages.3.conv")
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
    onnx.save(model, tmp_path / "bad.onnx")
    result = check(tmp_path / "bad.onnx", torch=spec)
    assert not result.passed
    loc = result.localization
    assert loc.first.module == "stages.3.conv", loc.to_dict()
    # torch's exporter folded each BN into its conv: the conv outputs before stage 3 differ from
    # the Conv2d modules' own outputs, while the stages' outputs agree.
    producers = {o: n for n in model.graph.node for o in n.output}
    assert sorted(module_path(producers[t]) for t in loc.changed_meaning) == [f"stages.{i}.conv" for i in range(3)]


def test_the_report_folder_shows_the_divergences_and_the_error_path(tmp_path):
    from normonnx.reports.folder import write_report

    ref = conv_bn_chain()
    result = check(folded_by_another_tool(ref, 3), against=ref)
    write_report(tmp_path / "rep", check=result)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "First persistent divergences" in md and "`fused3`" in md
    assert "a changed meaning, not a divergence" in md
    skip_without("matplotlib", NO_MATPLOTLIB)
    assert (tmp_path / "rep" / "divergence_path.png").stat().st_size > 1000
