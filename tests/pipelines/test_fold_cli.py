"""``normonnx fold`` and ``normonnx inspect`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.builders import assert_parity, op_types
from tests.helpers import digest


def test_fold_writes_a_folded_model_and_keeps_the_interface(cli, conv_bn_path, tmp_path):
    before = digest(conv_bn_path)
    out = tmp_path / "folded.onnx"
    report = tmp_path / "report.json"
    r = cli("fold", conv_bn_path, "-o", out, "--report", report)
    assert r.code == 0, r.err
    assert r.out.strip().splitlines()[-1] == "PASSED"
    assert "folded: 2 (batchnorm 2)" in r.out
    assert digest(conv_bn_path) == before
    src, dst = onnx.load(conv_bn_path), onnx.load(out)
    onnx.checker.check_model(dst, full_check=True)
    assert op_types(dst) == ["Conv", "Relu", "Conv"]
    assert dst.graph.input == src.graph.input and dst.graph.output == src.graph.output
    assert dst.opset_import == src.opset_import and dst.ir_version == src.ir_version
    assert dst.metadata_props == src.metadata_props and dst.producer_name == src.producer_name
    assert_parity(src, dst)
    data = json.loads(report.read_text())
    assert data["folded"] == 2 and data["parity"]["passed"] is True
    assert {n["anchor"] for n in data["normalizations"] if n["folded"]} == {"bn1", "bn2"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fold_json_output_is_parseable(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--json")
    assert r.code == 0
    data = json.loads(r.out)  # stdout is exactly one JSON document
    assert r.err.strip().splitlines()[-1] == "PASSED"
    assert data["schema"] == 1 and data["before"]["nodes"] == 5 and data["after"]["nodes"] == 3


def test_inspect_names_every_normalization_and_why(cli, conv_bn_path):
    r = cli("inspect", conv_bn_path)
    assert r.code == 0
    assert "bn1" in r.out and "foldable: into Conv conv1" in r.out
    assert "bn2" in r.out and "foldable: into the following Conv conv2" in r.out
    assert r.out.strip().endswith("2 of 2 foldable (batchnorm 2/2)")


def test_inspect_json(cli, conv_bn_path):
    r = cli("inspect", conv_bn_path, "--json")
    data = json.loads(r.out)
    assert data["foldable"] == 2 and len(data["normalizations"]) == 2


def test_bad_inputs_get_one_line_errors_and_exit_2(cli, tmp_path, conv_bn_path):
    (tmp_path / "text.onnx").write_text("hello")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = [
        (tmp_path / "missing.onnx", "no such file"),
        (tmp_path / "text.onnx", "not an ONNX model"),
        (tmp_path / "empty.onnx", "is empty"),
        (tmp_path, "is a directory"),
    ]
    for src, expected in cases:
        out = tmp_path / "out.onnx"
        r = cli("fold", src, "-o", out)
        assert r.code == 2, (src, r)
        assert len(r.err.strip().splitlines()) == 1 and expected in r.err and str(src) in r.err
        assert "Traceback" not in r.err and not out.exists()


def test_fold_refuses_to_overwrite_its_input(cli, conv_bn_path):
    before = digest(conv_bn_path)
    r = cli("fold", conv_bn_path, "-o", conv_bn_path)
    assert r.code == 2 and "refusing to write over the input" in r.err
    assert digest(conv_bn_path) == before


def test_output_in_missing_folder_is_an_error(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "nope" / "o.onnx")
    assert r.code == 2 and "does not exist" in r.err


def test_parity_failure_writes_nothing_and_exits_1(cli, conv_bn_path, tmp_path, monkeypatch):
    """A fold bug must never reach disk: plant one by corrupting the BN math."""
    from normonnx import foldmath

    real = foldmath.batchnorm_affine

    def wrong(*args):
        a = real(*args)
        return foldmath.ChannelAffine(a.scale * 1.01, a.shift)

    monkeypatch.setattr("normonnx.recognize.affine.fm.batchnorm_affine", wrong)
    out = tmp_path / "o.onnx"
    r = cli("fold", conv_bn_path, "-o", out)
    assert r.code == 1
    assert "FAILED" in r.out and "not written" in r.err
    assert not out.exists()


@pytest.mark.parametrize("schedule", ["beside-the-fold", "side-by-side", "one-after-the-other"])
def test_every_parity_schedule_catches_a_planted_error(cli, conv_bn_path, tmp_path, monkeypatch, schedule):
    """Small models are verified with the original run beside the fold (then the output), or with both runs
    side by side when the original could not start early; large ones one after the other."""
    from normonnx import foldmath
    from normonnx.pipelines import fold as fold_pipeline
    from normonnx.validate import verify

    monkeypatch.setattr(verify, "CONCURRENT_PARITY_BYTES", 0 if schedule == "one-after-the-other" else 1 << 40)
    if schedule == "side-by-side":
        monkeypatch.setattr(fold_pipeline, "start_original_run", lambda *a, **k: None)
    from normonnx.validate.runners import OnnxruntimeRunner

    ran = []
    real_beside, real_early = OnnxruntimeRunner.infer_beside, verify.OriginalRun.result
    monkeypatch.setattr(OnnxruntimeRunner, "infer_beside",
                        lambda self, *a, **k: ran.append("side-by-side") or real_beside(self, *a, **k))  # fmt: skip
    monkeypatch.setattr(verify.OriginalRun, "result", lambda self: ran.append("beside-the-fold") or real_early(self))
    r = cli("fold", conv_bn_path, "-o", tmp_path / "good.onnx")
    assert r.code == 0 and r.out.strip().endswith("PASSED")
    assert ran == ([] if schedule == "one-after-the-other" else [schedule])  # the schedule asked for ran
    real_affine = foldmath.batchnorm_affine
    monkeypatch.setattr(
        "normonnx.recognize.affine.fm.batchnorm_affine",
        lambda *a: foldmath.ChannelAffine(real_affine(*a).scale, real_affine(*a).shift + 0.01),
    )
    r = cli("fold", conv_bn_path, "-o", tmp_path / "bad.onnx")
    assert r.code == 1 and not (tmp_path / "bad.onnx").exists()


def test_fold_runs_onnxruntime_only_in_child_processes(conv_bn_path, tmp_path):
    """A model that crashes onnxruntime during the parity check cannot take normonnx down with it."""
    code = (
        "import sys; from normonnx.cli import main; "
        f"rc = main(['fold', {str(conv_bn_path)!r}, '-o', {str(tmp_path / 'o.onnx')!r}]); "
        "assert rc == 0, rc; assert 'onnxruntime' not in sys.modules, 'onnxruntime imported in-process'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.onnx").exists()


def test_dynamic_dims_can_be_given_with_shape(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--shape", "input:5,3,16,16")
    assert r.code == 0
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--shape", "input:5,3")
    assert r.code == 2 and "rank 2" in r.err
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--shape", "oops")
    assert r.code == 2 and "NAME:D0,D1" in r.err


def test_usage_error_exits_2(cli):
    assert cli("fold").code == 2
    assert cli("no-such-command").code == 2


def test_no_verify_skips_parity(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--no-verify")
    assert r.code == 0 and "parity not verified" in r.out


def _weights_as_inputs_model(ir_version: int, opset: int) -> onnx.ModelProto:
    """Conv -> BN with every initializer also listed as a graph input (ONNX-zoo ir3 models; torch's
    keep_initializers_as_inputs=True)."""
    h, rng = onnx.helper, np.random.default_rng(3)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "W"),
        onnx.numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "B"),
        onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "gamma"),
        onnx.numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "beta"),
        onnx.numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "mean"),
        onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "var"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        h.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        h.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    inputs = [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])]
    inputs += [h.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 8, 8])
    model = h.make_model(h.make_graph(nodes, "g", inputs, [y], inits), opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def test_ir3_models_fold_and_list_their_new_weights_as_inputs(cli, tmp_path):
    """ir_version 3 requires every initializer among the inputs; there they are constants."""
    src = tmp_path / "ir3.onnx"
    onnx.save(_weights_as_inputs_model(3, 8), src)
    r = cli("inspect", src)
    assert "foldable: into Conv conv" in r.out
    r = cli("fold", src, "-o", tmp_path / "o.onnx")
    assert r.code == 0, r.err
    out = onnx.load(tmp_path / "o.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert op_types(out) == ["Conv", "Relu"] and out.ir_version == 3
    assert out.graph.input[0] == onnx.load(src).graph.input[0]
    assert {i.name for i in out.graph.input[1:]} == {t.name for t in out.graph.initializer}
    assert_parity(onnx.load(src), out)


def test_overridable_weights_are_kept_as_inputs_unless_declared_constant(cli, tmp_path):
    """ir_version >= 4: an initializer listed as an input is a default a caller may override."""
    src = tmp_path / "keep.onnx"
    model = _weights_as_inputs_model(7, 13)
    onnx.save(model, src)
    r = cli("inspect", src)
    assert "is the graph input 'W' (a caller may override it)" in r.out and "0 of 1 foldable" in r.out
    r = cli("fold", src, "-o", tmp_path / "kept.onnx")
    kept = onnx.load(tmp_path / "kept.onnx")
    assert r.code == 0 and kept.graph.input == model.graph.input
    assert {t.name for t in kept.graph.initializer} == {t.name for t in model.graph.initializer}
    assert "BatchNormalization" in op_types(kept)
    r = cli("fold", src, "-o", tmp_path / "frozen.onnx", "--constant-initializer-inputs")
    frozen = onnx.load(tmp_path / "frozen.onnx")
    assert r.code == 0 and [i.name for i in frozen.graph.input] == ["x"]
    assert op_types(frozen) == ["Conv", "Relu"]
    assert_parity(model, frozen)


def test_stale_value_info_does_not_mislead_the_fold(cli, tmp_path):
    """A 3-D MatMul -> BN (BN's axis 1 is not the features) whose stored value_info claims rank 2:
    shapes come from inference, so the BN is kept, with the reason."""
    h, rng = onnx.helper, np.random.default_rng(5)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W")]
    for name, value in (("g", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4))):
        inits.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
    for name, value in (("m", rng.standard_normal(4)), ("v", rng.uniform(0.5, 2, 4))):
        inits.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
        h.make_node("BatchNormalization", ["mm", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4, 3])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4, 4])
    graph = h.make_graph(nodes, "g", [x], [y], inits)
    graph.value_info.append(h.make_tensor_value_info("mm", onnx.TensorProto.FLOAT, ["M", 4]))  # stale: rank 2
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "stale.onnx")
    r = cli("inspect", tmp_path / "stale.onnx")
    assert "the features are on axis 2" in r.out and "0 of 1 foldable" in r.out
    r = cli("fold", tmp_path / "stale.onnx", "-o", tmp_path / "o.onnx", "--no-verify")
    assert r.code == 0
    out = onnx.load(tmp_path / "o.onnx")
    assert "BatchNormalization" in op_types(out)
    assert_parity(model, out)


def test_normalizations_inside_control_flow_are_listed_not_skipped_silently(cli, tmp_path):
    h, rng = onnx.helper, np.random.default_rng(6)

    def branch(tag: str) -> onnx.GraphProto:
        inits = [onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), f"{k}_{tag}") for k in "sbmv"]
        bn = h.make_node("BatchNormalization", ["x", *(f"{k}_{tag}" for k in "sbmv")], [f"y_{tag}"], name=f"bn_{tag}")
        out = h.make_tensor_value_info(f"y_{tag}", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
        return h.make_graph([bn], tag, [], [out], inits)

    node = h.make_node("If", ["c"], ["y"], name="if", then_branch=branch("t"), else_branch=branch("e"))
    inputs = [
        h.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
        h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4]),
    ]
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    model = h.make_model(h.make_graph([node], "g", inputs, [y]), opset_imports=[h.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "if.onnx")
    r = cli("inspect", tmp_path / "if.onnx")
    assert "bn_t" in r.out and "bn_e" in r.out and "then_branch of If if" in r.out and "0 of 2 foldable" in r.out
    r = cli("fold", tmp_path / "if.onnx", "-o", tmp_path / "o.onnx")
    # The bodies are folded too; these BNs read the outer input and are the bodies' outputs: kept, and why.
    assert r.code == 0 and "then_branch of If if" in r.out and "'y_t' is a graph output" in r.out
    data_line = next(line for line in r.out.splitlines() if line.startswith("tensor data"))
    assert data_line.split()[2:4] == data_line.split()[4:6]  # the bodies' weights are still counted


def test_a_shape_for_an_input_the_model_lacks_is_an_error_not_ignored(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--shape", "inptu:1,3,16,16")
    assert r.code == 2 and "--shape inptu: the model has no such input (its inputs: input)" in r.err
    assert not (tmp_path / "o.onnx").exists()
