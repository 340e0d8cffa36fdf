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

import onnx

from normonnx.errors import ExportError
from normonnx.passes.registry import constants_pipeline
from normonnx.pipelines.emit import check_opset, check_style, emit
from normonnx.results import ExportReport
from normonnx.validate.torch_reference import torch_parity

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


def export_opset(opset: int | None, target: str | None) -> int:
    """The opset torch exports at: the one asked, else 18 (dynamo's), capped by the deployment target's newest."""
    if target is None:
        return DEFAULT_OPSET if opset is None else opset
    from normonnx.targets import target as deployment_target

    return deployment_target(target).opset_for(DEFAULT_OPSET, opset)


def fold_weight_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Only the constant folding of fold: emission keeps every normalization, folding is ``fold``'s job."""
    return constants_pipeline().apply(model, sort=False, check=False).model  # emit follows; the file is checked


def export_module(
    module,
    example: Sequence,
    *,
    opset: int | None = None,
    norm_style: str = "auto",
    verify: bool = True,
    name: str = "<module>",
    target: str | None = None,
    dynamic_batch: bool = False,
    dynamic: Sequence[str] = (),
) -> tuple[onnx.ModelProto, ExportReport]:
    """A built torch module (eval mode) to ONNX; ``name`` labels it in the report.

    ``dynamic_batch`` and ``dynamic`` (``NAME:AXIS[:DIM]``) make input axes dynamic; parity is
    then checked at the example's sizes and again with those axes resized.
    """
    from normonnx.torchfront.exporter import export_torch

    start = time.perf_counter()
    opset = export_opset(opset, target)
    check_opset(opset)
    check_style(norm_style)
    axes = dynamic_axes(module, example, dynamic_batch, dynamic)
    log.info("%s: torch export at opset %d%s", name, opset, f", dynamic axes {axes}" if axes else "")
    raw, exporter = export_torch(module, tuple(example), opset, axes)
    model, emitted = emit(fold_weight_subgraphs(raw), opset, norm_style, check=False, target=target)  # checked on write
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
