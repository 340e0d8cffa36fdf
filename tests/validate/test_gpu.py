"""CUDA and TensorRT providers: run where onnxruntime-gpu sees a GPU, skipped with the reason elsewhere."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from normonnx.pipelines.bench import bench
from normonnx.pipelines.check import check
from normonnx.pipelines.fold import fold
from tests.conftest import conv_bn_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason=f"no CUDAExecutionProvider in this onnxruntime ({', '.join(ort.get_available_providers())})",
    ),
]


def test_fold_parity_on_cuda(tmp_path):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    result = check(folded, against=ref, provider="cuda")
    assert result.passed and result.provider == "cuda"


def test_bench_on_cuda(tmp_path):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "folded.onnx")
    report = bench(tmp_path / "folded.onnx", tmp_path / "ref.onnx", provider="cuda", runs=20, warmup=3)
    assert report.speedup is not None and report.speedup.median > 0
