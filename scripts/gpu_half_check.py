"""On a machine with a CUDA GPU: does the half-faithful evaluator predict what the GPU computes?

For each large-activation model of scripts/bench_half.py, torch computes the float32 output on
the GPU, then the same module in fp16 and bf16 (``module.half()`` / ``.bfloat16()``: every tensor
stored in the half type, cuDNN/cuBLAS accumulating in float32). normonnx's half-faithful
evaluator (onnxruntime CPU, which that image has) computes the plain cast of the exported model
and normonnx half's output. The check passes when the evaluator's verdict on the plain cast
(finite or not, error within 4x either way) matches the GPU's, and normonnx half's output is
finite and within 1e-2 where the GPU's plain half run is not. Writes benchmarks/gpu_half.json.

    bash scripts/gpu_half_check.sh
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def main() -> int:
    import onnx
    import torch
    from onnx import TensorProto

    from normonnx.graph.precision import with_float_type
    from normonnx.pipelines.half import half_model
    from normonnx.validate.runners import FaithfulRunner
    from scripts.bench_half import large_activation_models

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 0
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, example, opset in large_activation_models():
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=False, input_names=["x"])
            model = onnx.load(path)
            x = example.numpy()
            with torch.no_grad():
                gpu = module.cuda()
                ref = gpu(example.cuda()).float().cpu().numpy()
                for dtype, torch_type, onnx_type in (
                    ("fp16", torch.float16, TensorProto.FLOAT16),
                    ("bf16", torch.bfloat16, TensorProto.BFLOAT16),
                ):
                    cast = gpu.to(torch_type)
                    on_gpu = relative(cast(example.cuda().to(torch_type)).float().cpu().numpy(), ref)
                    gpu.float()
                    plain = FaithfulRunner(with_float_type(model, onnx_type), label="plain").infer([{"x": x}])[0]
                    predicted = relative(next(iter(plain.values())), ref)
                    ours_model, _ = half_model(model, dtype)
                    ours_out = FaithfulRunner(ours_model, label="ours").infer([{"x": x}])[0]
                    ours = relative(next(iter(ours_out.values())), ref)
                    agree = (np.isfinite(on_gpu) == np.isfinite(predicted)) and (
                        not np.isfinite(on_gpu) or on_gpu / 4 <= max(predicted, 1e-7) <= on_gpu * 4 + 1e-4
                    )
                    better = ours <= 1e-2 or on_gpu <= 1e-2
                    ok &= bool(agree and better)
                    rows.append({"model": name, "dtype": dtype, "gpu_plain_half": on_gpu, "faithful_plain": predicted,
                                 "normonnx_half_faithful": ours, "verdicts_agree": bool(agree)})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    (ROOT / "benchmarks" / "gpu_half.json").write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
