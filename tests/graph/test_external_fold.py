"""Folding a model whose weights are on disk: read on demand, spilled, staged, verified, committed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.graph.modelio import load_model
from normonnx.pipelines.fold import fold_file
from tests.builders import GraphBuilder, assert_parity
from tests.helpers import digest


def _external_model(tmp_path, blocks: int = 4, channels: int = 32):
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, channels, 8, 8])
    for i in range(blocks):
        x = b.conv(x, channels, channels, rng, pads=[1, 1, 1, 1], name=f"conv{i}")
        x = b.batchnorm(x, channels, rng, name=f"bn{i}")
        x = b.node("Relu", [x])
    b.output(x, shape=[1, channels, 8, 8])
    path = tmp_path / "big.onnx"
    onnx.save(
        b.model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.onnx.data",
        size_threshold=0,
    )
    return path


def test_weights_on_disk_are_folded_into_a_new_data_file(tmp_path):
    src = _external_model(tmp_path)
    before = (digest(src), digest(tmp_path / "big.onnx.data"))
    report = fold_file(src, tmp_path / "out.onnx")
    assert report.output and report.parity.passed
    assert report.after.norms == {}
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    locations = {e.value for t in out.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}
    assert_parity(load_model(src), load_model(tmp_path / "out.onnx"))
    assert (digest(src), digest(tmp_path / "big.onnx.data")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "out.onnx", "out.onnx.data"]


def test_a_failed_verification_leaves_nothing_behind(tmp_path, monkeypatch):
    from normonnx import foldmath

    real = foldmath.batchnorm_affine
    monkeypatch.setattr(
        "normonnx.recognize.affine.fm.batchnorm_affine",
        lambda *a: foldmath.ChannelAffine(real(*a).scale * 1.01, real(*a).shift),
    )
    src = _external_model(tmp_path)
    report = fold_file(src, tmp_path / "out.onnx")
    assert report.output is None and not report.parity.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]


def test_external_weights_are_read_only_through_normonnx(tmp_path, monkeypatch):
    """numpy_helper would resolve locations against the current directory; it must never be asked to."""
    import onnx.numpy_helper as nh

    src = _external_model(tmp_path, blocks=2)
    real = nh.to_array

    def guarded(tensor, base_dir=""):
        assert tensor.data_location != onnx.TensorProto.EXTERNAL, f"{tensor.name} read by onnx"
        return real(tensor, base_dir)

    monkeypatch.setattr(nh, "to_array", guarded)
    report = fold_file(src, tmp_path / "out.onnx", verify=False)
    assert report.output


@pytest.mark.slow
def test_cli_on_external_data(cli, tmp_path):
    src = _external_model(tmp_path, blocks=8, channels=64)
    r = cli("fold", src, "-o", tmp_path / "out.onnx")
    assert r.code == 0 and r.out.strip().endswith("PASSED")
    r = cli("check", tmp_path / "out.onnx", "--against", src)
    assert r.code == 0
