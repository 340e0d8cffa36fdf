"""``normonnx export``: a torch model to ONNX with every normalization in the chosen form.

torch export (dynamo at opset 18+, TorchScript below) -> constant folding of
weight-only subgraphs (weight standardization, weight_norm, the exporters'
shape arithmetic) -> emit at the target opset and style -> parity against
torch eager on seeded inputs -> atomic save.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from normonnx.graph.bridge import prepare_graph, to_model
from normonnx.passes._base import PassContext
from normonnx.passes.registry import constants_pipeline
from normonnx.pipelines.emit import EmitReport, check_opset, check_style, emit
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.validate.parity import ParityResult
from normonnx.validate.torch_reference import torch_parity

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

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "factory": self.factory,
            "exporter": self.exporter,
            "output": self.output,
            "emit": self.emit.to_dict(),
            "parity": self.parity.to_dict() if self.parity else None,
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
) -> tuple[onnx.ModelProto, ExportReport]:
    """A built torch module (eval mode) to ONNX; ``name`` labels it in the report."""
    from normonnx.torchfront.exporter import export_torch

    start = time.perf_counter()
    check_opset(opset)
    check_style(style)
    raw, exporter = export_torch(module, tuple(example), opset)
    model, emitted = emit(fold_weight_subgraphs(raw), opset, style)
    emitted.source = name
    report = ExportReport(name, exporter, emitted)
    if verify:
        report.parity = torch_parity(module, model, example)
    report.seconds = time.perf_counter() - start
    return model, report


def export_model(
    spec: str,
    *,
    checkpoint: str | None = None,
    input_shapes: Sequence[tuple[int, ...]] = (),
    opset: int = DEFAULT_OPSET,
    style: str = "auto",
    verify: bool = True,
) -> tuple[onnx.ModelProto, ExportReport]:
    """``MODULE:FACTORY`` (and a checkpoint) to ONNX; see export_module."""
    from normonnx.torchfront.exporter import build

    module, example = build(spec, input_shapes, checkpoint)
    return export_module(module, example, opset=opset, style=style, verify=verify, name=spec)


def export_file(spec: str, output: str | os.PathLike, **kwargs) -> ExportReport:
    """Export and write ``output`` atomically, only if parity with torch holds (when verified)."""
    from normonnx.graph.modelio import check_output_path, save_model

    check_output_path(output, [])
    model, report = export_model(spec, **kwargs)
    if report.parity is None or report.parity.passed:
        save_model(model, output)
        report.output = str(output)
    return report
