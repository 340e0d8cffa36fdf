"""``normonnx export``: a torch model to ONNX with every normalization in the chosen form.

torch export (dynamo at opset 18+, TorchScript below) -> constant folding of
weight-only subgraphs (weight standardization, weight_norm, the exporters'
shape arithmetic) -> emit at the target opset and style -> parity against
torch eager on seeded inputs -> atomic save.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from normonnx.errors import ExportError
from normonnx.graph.bridge import prepare_graph, to_model
from normonnx.passes._base import PassContext
from normonnx.passes.registry import constants_pipeline
from normonnx.pipelines.emit import EmitReport, check_opset, check_style, emit
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.validate.parity import ParityResult
from normonnx.validate.torch_reference import torch_parity

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


@dataclass
class ExportReport:
    factory: str
    exporter: str
    emit: EmitReport
    parity: ParityResult | None = None
    output: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> {axis: dim name}
    parity_resized: ParityResult | None = None  # with the dynamic axes at a second size
    resized_shapes: list[list[int]] = field(default_factory=list)

    half: Any = None  # the HalfReport of --precision

    @property
    def passed(self) -> bool:
        checks = [p for p in (self.parity, self.parity_resized) if p is not None]
        return all(p.passed for p in checks) and (self.half is None or self.half.passed)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "factory": self.factory,
            "exporter": self.exporter,
            "output": self.output,
            "emit": self.emit.to_dict(),
            "half": self.half.to_dict() if self.half is not None else None,
            "parity": self.parity.to_dict() if self.parity else None,
            "dynamic": {k: {str(a): d for a, d in v.items()} for k, v in self.dynamic.items()},
            "parity_resized": self.parity_resized.to_dict() if self.parity_resized else None,
            "resized_shapes": self.resized_shapes,
            "seconds": round(self.seconds, 4),
        }


def fold_weight_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Only the constant folding of fold: emission keeps every normalization, folding is ``fold``'s job."""
    graph = prepare_graph(model)
    constants_pipeline().run(PassContext(graph))
    return to_model(graph, model, sort=False)


def export_module(
    module,
    example: Sequence,
    *,
    opset: int = DEFAULT_OPSET,
    style: str = "auto",
    verify: bool = True,
    name: str = "<module>",
    dynamic_batch: bool = False,
    dynamic: Sequence[str] = (),
) -> tuple[onnx.ModelProto, ExportReport]:
    """A built torch module (eval mode) to ONNX; ``name`` labels it in the report.

    ``dynamic_batch`` and ``dynamic`` (``NAME:AXIS[:DIM]``) make input axes dynamic; parity is
    then checked at the example's sizes and again with those axes resized.
    """
    from normonnx.torchfront.exporter import export_torch

    start = time.perf_counter()
    check_opset(opset)
    check_style(style)
    axes = dynamic_axes(module, example, dynamic_batch, dynamic)
    log.info("%s: torch export at opset %d%s", name, opset, f", dynamic axes {axes}" if axes else "")
    raw, exporter = export_torch(module, tuple(example), opset, axes)
    model, emitted = emit(fold_weight_subgraphs(raw), opset, style)
    emitted.source = name
    report = ExportReport(name, exporter, emitted, dynamic=axes)
    if verify:
        log.info("%s: parity against torch eager", name)
        report.parity, report.parity_resized, report.resized_shapes = parity_at_two_sizes(module, model, example, axes)
    report.seconds = time.perf_counter() - start
    return model, report


def dynamic_axes(module, example: Sequence, batch: bool, items: Sequence[str]) -> dict[str, dict[int, str]]:
    """The dynamic axes asked for, keyed by the export's input names (forward's parameters)."""
    if not batch and not items:
        return {}
    from normonnx.torchfront.exporter import forward_names, parse_dynamic

    names = forward_names(module, len(example))
    if names is None:
        raise ExportError("dynamic axes need forward's inputs to be plain named parameters")
    return parse_dynamic(items, names, [x.dim() for x in example], batch)


def resized(module, example: Sequence, axes: dict[str, dict[int, str]]) -> tuple:
    """The example with every dynamic axis at a second size: batch + 1, any other axis doubled."""
    import torch

    from normonnx.torchfront.exporter import forward_names

    names = forward_names(module, len(example)) or []
    out = []
    for name, x in zip(names, example, strict=True):
        shape = list(x.shape)
        for axis in axes.get(name, {}):
            shape[axis] = shape[axis] + 1 if axis == 0 else shape[axis] * 2
        out.append(torch.zeros(shape, dtype=x.dtype) if shape != list(x.shape) else x)
    return tuple(out)


def parity_at_two_sizes(module, model: onnx.ModelProto, example: Sequence, axes: dict[str, dict[int, str]]):
    """(parity at the example's sizes, parity with the dynamic axes resized or None, the resized shapes)."""
    first = torch_parity(module, model, example)
    if not axes:
        return first, None, []
    second_example = resized(module, example, axes)
    return first, torch_parity(module, model, second_example), [list(x.shape) for x in second_example]


def export_model(
    spec: str, *, checkpoint: str | None = None, input_shapes: Sequence[tuple[int, ...]] = (), **options
) -> tuple[onnx.ModelProto, ExportReport]:
    """``MODULE:FACTORY`` (and a checkpoint) to ONNX; ``options`` (opset, style, verify, dynamic axes) as
    export_module takes them."""
    from normonnx.torchfront.exporter import build

    module, example = build(spec, input_shapes, checkpoint)
    return export_module(module, example, name=spec, **options)


def export_file(spec: str, output: str | os.PathLike, *, precision: str | None = None, **kwargs) -> ExportReport:
    """Export and write ``output`` atomically, only if parity with torch holds (when verified); with
    ``precision`` (fp16, bf16) the verified export is converted by ``normonnx half`` and written only if
    that passes its half-faithful gate too."""
    from normonnx.graph.modelio import check_output_path, save_model

    check_output_path(output, [])
    model, report = export_model(spec, **kwargs)
    if report.passed and precision is not None:
        from normonnx.pipelines.half import half_model

        model, report.half = half_model(model, precision)
        report.notes.append(
            f"converted to {precision}: {'passed' if report.half.passed else 'FAILED'} the half-faithful gate"
        )
    if report.passed:
        save_model(model, output)
        report.output = str(output)
    return report
