"""normonnx: export, fold and validate normalization layers through ONNX.

The public API mirrors the CLI, parameter for option (``--norm-style`` is ``norm_style=``,
``-o`` is ``output=``, ``--no-verify`` is ``verify=False``; tests/test_api.py holds them to it)::

    model, report = normonnx.fold("model.onnx")          # fold constant normalizations
    normonnx.inspect("model.onnx")                       # what is there, what folds, why not
    model, report = normonnx.emit("model.onnx", 13)      # every normalization re-emitted at opset 13
    report = normonnx.convert("normonnx.zoo:resnet_bn", output="out/resnet")  # export, fold, check, bench
    report = normonnx.check("new.onnx", against="model.onnx")   # parity, localization, bisection
    model, report = normonnx.half("model.onnx", "fp16")  # norm-aware half precision, judged half-faithfully
    model, report = normonnx.quantize("model.onnx", data="calib.npz")  # int8, proven against float32 and ORT's flow

Attributes load lazily, so ``import normonnx`` imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "fold": ("normonnx.pipelines.fold", "fold"),
    "fold_file": ("normonnx.pipelines.fold", "fold_file"),
    "FoldOptions": ("normonnx.passes", "FoldOptions"),
    "FoldReport": ("normonnx.results", "FoldReport"),
    "inspect": ("normonnx.pipelines.inspect", "inspect_model"),
    "emit": ("normonnx.pipelines.emit", "emit"),
    "emit_file": ("normonnx.pipelines.emit", "emit_file"),
    "export_model": ("normonnx.pipelines.export", "export_model"),
    "export_file": ("normonnx.pipelines.export", "export_file"),
    "convert": ("normonnx.pipelines.convert", "convert"),
    "check": ("normonnx.pipelines.check", "check"),
    "half": ("normonnx.pipelines.half", "half_model"),
    "half_file": ("normonnx.pipelines.half", "half_file"),
    "quantize": ("normonnx.pipelines.quantize", "quantize_model"),
    "quantize_file": ("normonnx.pipelines.quantize", "quantize_file"),
    "Int8Settings": ("normonnx.int8.engine", "Int8Settings"),
    "bench": ("normonnx.pipelines.bench", "bench"),
    "load_model": ("normonnx.graph.modelio", "load_model"),
    "save_model": ("normonnx.graph.modelio", "save_model"),
    "NormonnxError": ("normonnx.errors", "NormonnxError"),
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'normonnx' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), attr)
