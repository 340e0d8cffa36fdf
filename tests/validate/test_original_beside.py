"""The original's half of a proof started before the output exists (validate.verify.start_original_run):
the same verdict and numbers as the proof computed at the end, its errors raised where the proof is asked
for, and nothing started where it could not overlap anything."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.errors import UnusableInputError
from normonnx.validate import verify
from tests.builders import GraphBuilder
from tests.helpers import rng

W = rng(5).standard_normal((4, 3)).astype(np.float32)


def matmul(weight: np.ndarray, batch="batch") -> onnx.ModelProto:
    b = GraphBuilder(opset=17)
    x = b.input("x", [batch, 4])
    b.node("MatMul", [x, b.weight(weight)], outputs=["y"])
    b.output("y")
    return b.model()


@pytest.fixture
def pair(tmp_path):
    """An original and an output whose weight differs by 1e-3 in one place (a gap numpy can state)."""
    original, output = tmp_path / "original.onnx", tmp_path / "output.onnx"
    shifted = W.copy()
    shifted[2, 1] += 1e-3
    onnx.save(matmul(W), original)
    onnx.save(matmul(shifted), output)
    return original, output


def test_the_proof_with_the_original_run_early_states_what_numpy_does(pair, monkeypatch):
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 2)
    original, output = pair
    early = verify.start_original_run(original, onnx.load(original))
    assert early is not None
    result = verify.verify_parity(original, output, original=early)
    late = verify.verify_parity(original, output)
    from normonnx.validate.inputs import input_specs
    from normonnx.validate.probe import probed_feeds

    feeds = probed_feeds(input_specs(onnx.load(original)), result.inputs, 3)
    gap = max(float(np.max(np.abs(f["x"][:, 2].astype(np.float64) * 1e-3))) for f in feeds)
    assert result.outputs[0].max_abs == pytest.approx(gap, rel=1e-3)  # numpy's gap, not the code's own
    assert result.outputs[0].max_abs == pytest.approx(late.outputs[0].max_abs, rel=1e-6)
    assert result.passed == late.passed and result.inputs.shapes == late.inputs.shapes


def test_an_original_that_runs_at_no_shape_fails_the_proof_not_the_start(tmp_path, monkeypatch):
    """The early run's error is kept and raised when the proof asks for the original's outputs."""
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 2)
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 4])
    b.node("Reshape", [x, b.const(np.array([7], np.int64))], outputs=["y"])  # 7 elements: never
    b.output("y")
    path = tmp_path / "never.onnx"
    onnx.save(b.model(), path)
    early = verify.start_original_run(path, onnx.load(path))
    assert early is not None
    with pytest.raises(UnusableInputError, match="runs at none of"):
        verify.verify_parity(path, path, original=early)


def test_nothing_starts_early_where_it_could_not_overlap(pair, monkeypatch):
    original, _ = pair
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 1)
    assert verify.start_original_run(original, onnx.load(original)) is None
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(verify, "CONCURRENT_PARITY_BYTES", 10)  # a model too large to hold twice
    assert verify.start_original_run(original, onnx.load(original)) is None


def test_an_early_run_for_other_shapes_is_not_used(pair, monkeypatch):
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 2)
    original, output = pair
    early = verify.start_original_run(original, onnx.load(original), shapes={"x": (5, 4)})
    used = []
    monkeypatch.setattr(verify.OriginalRun, "result", lambda self: used.append(1))
    result = verify.verify_parity(original, output, shapes={"x": (3, 4)}, original=early)
    assert not used and result.inputs.shapes == {"x": (3, 4)}
    assert not early.serves(original, {"x": (3, 4)}, 3) and early.serves(original, {"x": (5, 4)}, 3)
