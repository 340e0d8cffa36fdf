"""The one function the warm worker runs to evaluate constants, in a module that imports nothing heavy.

The worker imports the module of every function it is sent: this one costs it onnxruntime (already
imported there) and nothing else, where graph.evaluate would cost it onnx (about a second, most of it
ml_dtypes) before the first constant could be folded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def run_on_onnxruntime(model_bytes: bytes) -> list[np.ndarray]:
    """The model's outputs on onnxruntime CPU, optimizations off (runs in the isolated worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {})
