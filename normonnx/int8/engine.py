"""onnxruntime's static quantizer, driven: the one place normonnx calls ``onnxruntime.quantization``.

normonnx does not quantize anything itself. ``quantize`` runs onnxruntime's own flow
(``quant_pre_process``, then ``quantize_static`` to QDQ) on a model and its calibration feeds;
``deployed_ops`` reads back what onnxruntime's CPU provider makes of a quantized model when it
loads it (ORT_ENABLE_ALL), which is the only honest answer to "what runs in int8". Both run
where the caller's runner runs them: in an isolated child for a file from elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from normonnx.errors import UnusableInputError, first_line
from normonnx.int8 import ACTIVATIONS, CALIBRATIONS

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Int8Settings:
    """What ``quantize_static`` is asked for. The defaults are onnxruntime's own advice for an x86 CPU
    with VNNI (``quantize_static``'s docstring, "Choosing parameters for CPU inference"): uint8
    activations, int8 weights, no reduced range; per-channel weights for accuracy."""

    calibrate: str = "minmax"
    activations: str = "uint8"
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.calibrate not in CALIBRATIONS:
            raise UnusableInputError(f"--calibrate {self.calibrate}: choose one of {', '.join(CALIBRATIONS)}")
        if self.activations not in ACTIVATIONS:
            raise UnusableInputError(f"--activations {self.activations}: choose one of {', '.join(ACTIVATIONS)}")

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        return f"QDQ, {self.activations} activations, int8 {weights} weights, {self.calibrate} calibration"


@dataclass
class Quantized:
    """A model onnxruntime quantized, and what its flow said on the way."""

    model: bytes
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _inside(folder: str) -> Iterator[None]:
    """The working directory moved to ``folder``: quant_pre_process's symbolic shape inference writes its
    temporary model (and, past 2 GB, its weights) to the working directory, which is the user's."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer reports through the root logger ("Axis 1 is out-of-range for weight ..."):
    those lines are theirs, not ours, and would reach the user's stderr."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _pre_process(src: Path, dst: Path, notes: list[str]) -> Path:
    """``quant_pre_process`` (symbolic shapes, onnxruntime's basic optimizations, onnx shapes), with the
    steps that fail on a model dropped one at a time (and said): the quantizer needs the shapes most."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (
        ({}, ""),
        ({"skip_symbolic_shape": True}, "without symbolic shape inference"),
        ({"skip_symbolic_shape": True, "skip_optimization": True}, "without symbolic shapes and optimization"),
    )
    errors = []
    for kwargs, how in attempts:
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
        except Exception as e:
            errors.append(first_line(e)[:160])
            continue
        if how:
            notes.append(f"onnxruntime's quant_pre_process ran {how} (it failed in full: {errors[0]})")
        return dst
    notes.append(f"onnxruntime's quant_pre_process failed ({errors[-1]}): quantized without it")
    return src


def quantize(
    model: bytes, calibration: Sequence[Feed], settings: Int8Settings, exclude: Sequence[str] = ()
) -> Quantized:
    """``model`` through onnxruntime's static flow, calibrated on ``calibration``, with the nodes named in
    ``exclude`` left in float. Raises UnusableInputError with onnxruntime's reason when it cannot."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }

    class Feeds(CalibrationDataReader):  # onnxruntime's base class, imported only here
        """The calibration feeds, one per call, as onnxruntime's calibrators read them."""

        def __init__(self) -> None:
            self.remaining = iter(list(calibration))

        def get_next(self) -> Feed | None:
            return next(self.remaining, None)

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="normonnx-int8-") as tmp, _inside(tmp), _quiet():
        src, pre, out = Path(tmp, "float.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model)
        prepared = _pre_process(src, pre, notes)
        try:
            quantize_static(
                str(prepared),
                str(out),
                Feeds(),
                quant_format=QuantFormat.QDQ,
                per_channel=settings.per_channel,
                reduce_range=False,
                activation_type=QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                calibrate_method=methods[settings.calibrate],
            )
        except Exception as e:
            raise UnusableInputError(f"onnxruntime's quantizer cannot quantize it: {first_line(e)[:200]}") from None
        return Quantized(out.read_bytes(), notes)


def deployed_ops(model: bytes) -> list[tuple[str, str, bool]]:
    """(node name, op type, computes in float) for every node of ``model`` as onnxruntime's CPU provider
    deploys it (ORT_ENABLE_ALL): fused int8 kernels, and what is left computing in float."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="normonnx-deployed-") as tmp:
        path = Path(tmp, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 4
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        deployed = onnx.load(str(path))
    # The deployed graph holds onnxruntime's own ops, which onnx cannot infer through: tensor types come
    # from the QDQ model, whose tensors keep their names where onnxruntime leaves a node unfused.
    inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(model), strict_mode=False).graph
    types = {vi.name: vi.type.tensor_type.elem_type for g in (inferred, deployed.graph)
             for vi in [*g.value_info, *g.input, *g.output]}  # fmt: skip
    constants = {t.name for t in deployed.graph.initializer}
    return [(n.name, n.op_type, _computes_in_float(n, types, constants)) for n in deployed.graph.node]


_FLOAT = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Conversions and ops that only move data: no arithmetic, whatever the type they move.
_NOT_COMPUTE = {
    "QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Size", "Cast", "Identity", "Reshape", "Transpose",
    "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Gather", "GatherElements", "Expand", "Tile", "Concat",
    "ReorderInput", "ReorderOutput",  # onnxruntime's NCHWc layout conversions
}  # fmt: skip


def _computes_in_float(node, types: dict[str, int], constants: set[str]) -> bool:
    """Whether a node does arithmetic in float: it reads a non-constant tensor and writes a float one (an op of
    onnxruntime's whose output type is unknown counts as float unless it is one of its quantized kernels)."""
    if node.op_type in _NOT_COMPUTE or not any(i and i not in constants for i in node.input):
        return False
    known = [types[o] for o in node.output if types.get(o)]
    if known:
        return any(t in _FLOAT for t in known)
    # Its quantized kernels, and the NHWC ones its transformer makes of them (NhwcMaxPool takes 8-bit data only).
    return not (node.op_type.startswith(("QLinear", "QGemm", "Nhwc")) or node.op_type.endswith("Integer"))
