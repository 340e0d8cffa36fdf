"""Module scopes survive normonnx (issue 19): a dynamo export, folded and emitted, still names its torch modules.

The dynamo exporter records each node's module scopes in its metadata_props, which graphsurgeon drops;
``check --torch`` reads them to name the module where a planted error first shows. Expected module
names come from how the net is built (``tests/validate/stages_net.py``), never from the code under test.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from normonnx.validate.scopes import module_path

SPEC = "tests.validate.stages_net:staged"
PLANTED_STAGE = 3

pytestmark = pytest.mark.slow


def _metadata(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    return {n.name: {p.key: p.value for p in n.metadata_props} for n in model.graph.node}


def _plant(src: Path, dst: Path, conv_scope: str) -> str:
    """A 1% error in the weights of the Conv recorded under ``conv_scope``; the Conv's name."""
    model = onnx.load(src)
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and module_path(n) == conv_scope)
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
    onnx.save(model, dst)
    return conv.name


def _fold_emit_check(cli, tmp_path: Path, planted: Path) -> tuple[onnx.ModelProto, dict]:
    """``normonnx fold``, then ``normonnx emit`` at opset 18, then ``check --torch``: the emitted model and
    the check's localization."""
    r = cli("fold", planted, "-o", tmp_path / "folded.onnx")
    assert r.code == 0, r.err
    r = cli("emit", tmp_path / "folded.onnx", "-o", tmp_path / "emitted.onnx", "--opset", "18")
    assert r.code == 0, r.err
    r = cli("check", tmp_path / "emitted.onnx", "--torch", SPEC, "--json")
    assert r.code == 1, r.err  # the planted error fails parity
    return onnx.load(tmp_path / "emitted.onnx"), json.loads(r.out)["localization"]


def test_normonnx_export_fold_and_emit_keep_the_scopes_check_names_the_fused_module(cli, tmp_path):
    """normonnx's export runs torch's optimizer, which fuses each BatchNorm into its conv and records the
    fused Conv under the BatchNorm's scope (``stages.3.bn``): no tensor of the export is
    ``stages.3.conv``'s own, so the module check names is the one whose output the planted Conv computes."""
    pytest.importorskip("torch")
    from normonnx.pipelines.export import export_file

    report = export_file(SPEC, tmp_path / "staged.onnx", opset=18)
    assert report.passed and "dynamo" in report.exporter, report.exporter
    exported = onnx.load(tmp_path / "staged.onnx")
    assert all(module_path(n) is not None for n in exported.graph.node)  # normonnx's own export kept them
    conv = _plant(tmp_path / "staged.onnx", tmp_path / "bad.onnx", f"stages.{PLANTED_STAGE}.bn")

    emitted, loc = _fold_emit_check(cli, tmp_path, tmp_path / "bad.onnx")

    assert _metadata(emitted) == _metadata(exported)  # every node keeps exactly its own entries
    assert loc["first"]["node"] == conv and loc["first"]["module"] == f"stages.{PLANTED_STAGE}.bn", loc
    assert all(i["agrees"] for i in loc["first"]["inputs"]), loc  # stage 2's output agrees with torch's


def _dynamo_export_keeping_the_batchnorms(path: Path) -> None:
    """torch's dynamo exporter at opset 18 without its optimizer: the BatchNorms stay for normonnx to fold."""
    import torch

    from tests.validate.stages_net import staged

    module, example = staged()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=True, opset_version=18, optimize=False, verbose=False)


def test_the_conv_normonnx_folds_a_batchnorm_into_keeps_its_scopes_check_names_stages_3_conv(cli, tmp_path):
    pytest.importorskip("torch")
    _dynamo_export_keeping_the_batchnorms(tmp_path / "staged.onnx")
    exported = onnx.load(tmp_path / "staged.onnx")
    assert [n.op_type for n in exported.graph.node].count("BatchNormalization") == 5  # the premise
    conv = _plant(tmp_path / "staged.onnx", tmp_path / "bad.onnx", f"stages.{PLANTED_STAGE}.conv")

    emitted, loc = _fold_emit_check(cli, tmp_path, tmp_path / "bad.onnx")

    assert "BatchNormalization" not in {n.op_type for n in emitted.graph.node}  # fold folded every one
    before = _metadata(exported)
    fused = {n.name: module_path(n) for n in emitted.graph.node if n.op_type == "Conv"}
    # If this fails, the BN fold rule made a new Conv: it must call graph.bridge.inherit_metadata(new, conv).
    assert fused[conv] == f"stages.{PLANTED_STAGE}.conv", fused
    assert all(_metadata(emitted)[name] == before[name] for name in fused), "a folded conv's metadata changed"
    assert loc["first"]["node"] == conv and loc["first"]["module"] == f"stages.{PLANTED_STAGE}.conv", loc
