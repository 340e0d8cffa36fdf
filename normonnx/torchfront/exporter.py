"""From a torch module to an ONNX model at any opset from 11 to the newest.

torch's dynamo exporter writes opset 18 and later; below 18 only its
TorchScript exporter can (and it fails on nn.RMSNorm, which is swapped for an
equivalent module first). Above the newest opset torch knows, the model is
exported at torch's newest and converted by the emit step.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx

from normonnx.errors import ExportError, first_line
from normonnx.graph.modelio import load_model
from normonnx.torchfront import export_extra_missing, missing_export_package, require_torch

log = logging.getLogger(__name__)
DYNAMO_MIN_OPSET = 18


def load_factory(spec: str):
    """The callable named by ``MODULE:FACTORY`` (the current directory is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"'{spec}': expected MODULE:FACTORY, for example models.resnet:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error the module raises at import
        missing = missing_export_package(e)
        if missing:  # the user's module imports torch (or onnxscript, safetensors): the fix is normonnx's extra
            raise export_extra_missing(missing, f"'{spec}': cannot import {module_name}: ") from None
        raise ExportError(f"'{spec}': cannot import {module_name} ({type(e).__name__}: {first_line(e)})") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ExportError(f"'{spec}': module {module_name} has no attribute {attr}")
    if not callable(factory):
        raise ExportError(f"'{spec}': {attr} is not callable")
    return factory


def parse_input_shape(text: str) -> tuple[int, ...]:
    from normonnx.validate.inputs import parse_dims

    dims = parse_dims(text)
    if dims is None:
        raise ExportError(f"--input-shape '{text}': expected positive comma-separated integers such as 1,3,224,224")
    return dims


def build_module(spec: str, checkpoint: str | None = None):
    """(module in eval mode with the checkpoint loaded, the factory's example inputs or None)."""
    factory = load_factory(spec)
    torch = require_torch()
    from normonnx.torchfront.checkpoint import apply_checkpoint

    try:
        made = factory()
    except Exception as e:
        raise ExportError(f"'{spec}': the factory raised {type(e).__name__}: {first_line(e)}") from None
    inputs = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, inputs = made
    if not isinstance(made, torch.nn.Module):
        raise ExportError(f"'{spec}': the factory returned {type(made).__name__}, not an nn.Module")
    if checkpoint:
        apply_checkpoint(made, checkpoint)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    return made.eval(), (tuple(inputs) if inputs is not None else None)


def build(spec: str, input_shapes: Sequence[tuple[int, ...]] = (), checkpoint: str | None = None, seed: int = 0):
    """(module in eval mode, example inputs) from a factory, a checkpoint and input shapes."""
    module, inputs = build_module(spec, checkpoint)
    torch = require_torch()
    if input_shapes:
        g = torch.Generator().manual_seed(seed)
        inputs = tuple(torch.randn(s, generator=g) for s in input_shapes)
    if inputs is None:
        raise ExportError(f"'{spec}': the factory gives no example inputs; pass --input-shape (once per input)")
    return module, inputs


def dynamo_max_opset() -> int:
    """The newest opset torch's dynamo exporter writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # a torch that moved it: the opset it surely writes
        return DYNAMO_MIN_OPSET


class _RMSNormForTorchScript:
    """nn.RMSNorm as plain tensor ops, which the TorchScript exporter can write."""

    @staticmethod
    def swap(module):
        import torch

        class DecomposedRMSNorm(torch.nn.Module):
            def __init__(self, norm: torch.nn.RMSNorm) -> None:
                super().__init__()
                self.dims = tuple(range(-len(norm.normalized_shape), 0))
                self.eps = norm.eps
                self.weight = norm.weight

            def forward(self, x):
                eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
                y = x * torch.rsqrt(x.pow(2).mean(dim=self.dims, keepdim=True) + eps)
                return y * self.weight if self.weight is not None else y

        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.RMSNorm):
                setattr(module, name, DecomposedRMSNorm(child))
            else:
                _RMSNormForTorchScript.swap(child)
        return module


@contextlib.contextmanager
def _quiet():
    """torch's exporters print progress and warnings; a CLI keeps its own output clean."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # torch logs export failures at ERROR; normonnx reports them itself
        try:
            yield
        finally:
            logging.disable(previous)


def _cause(error: BaseException) -> str:
    """The line that says what went wrong: the dynamo exporter puts it under "Exception summary",
    after its advice on next steps."""
    text = str(error)
    marker = "## Exception summary"
    if marker in text:
        summary = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if summary:
            return summary[0].replace("<class '", "").replace("'>", "", 1)
    return first_line(error)


def forward_names(module, count: int) -> list[str] | None:
    """forward's parameter names, as the dynamo exporter names the inputs (None when they are not plain)."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    plain = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in plain[:count]] if len(plain) >= count else None


Dynamic = dict[str, dict[int, str]]  # input name -> {axis: dim name}


def parse_dynamic(items: Sequence[str], names: Sequence[str], ranks: Sequence[int], batch: bool) -> Dynamic:
    """``--dynamic NAME:AXIS[:DIM]`` (and ``--dynamic-batch``: axis 0 of every input) as dynamic axes."""
    dynamic: Dynamic = {}
    if batch:
        for name in names:
            dynamic.setdefault(name, {})[0] = "batch"
    for item in items:
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            name, axis = parts[0], int(parts[1])
        except ValueError:
            raise ExportError(f"--dynamic '{item}': expected NAME:AXIS[:DIM_NAME], for example x:2:height") from None
        if name not in names:
            raise ExportError(f"--dynamic '{item}': the module has no input {name!r} (its inputs: {', '.join(names)})")
        rank = ranks[list(names).index(name)]
        if not -rank <= axis < rank:
            raise ExportError(f"--dynamic '{item}': input {name} has rank {rank}, no axis {axis}")
        if axis % rank in dynamic.get(name, {}) and not (batch and axis % rank == 0 and len(parts) == 2):
            raise ExportError(f"--dynamic '{item}': axis {axis % rank} of {name} is already dynamic")
        dynamic.setdefault(name, {})[axis % rank] = (
            parts[2] if len(parts) == 3 and parts[2] else f"{name}_{axis % rank}"
        )
    return dynamic


def _free_outputs(model: onnx.ModelProto) -> None:
    """TorchScript writes the traced output shapes; with dynamic inputs, take the dims shape inference derives."""
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.output}
    for out in model.graph.output:
        if out.name in inferred and inferred[out.name].type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inferred[out.name].type)


def export_torch(module, inputs: tuple, opset: int, dynamic: Dynamic | None = None) -> tuple[onnx.ModelProto, str]:
    """The module as ONNX (at ``opset``, or torch's newest if lower) and the exporter used.

    ``dynamic`` names input axes whose size may change at run time (by forward's parameter names).
    """
    import copy

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with _quiet(), torch.no_grad():
                if opset >= DYNAMO_MIN_OPSET:
                    at = min(opset, dynamo_max_opset())
                    torch.onnx.export(
                        module, inputs, str(path), dynamo=True, opset_version=at, optimize=True, verbose=False,
                        dynamic_axes=dynamic or None,
                    )  # fmt: skip
                    exporter = f"torch.onnx dynamo (opset {at})"
                else:
                    swapped = _RMSNormForTorchScript.swap(copy.deepcopy(module))
                    torch.onnx.export(
                        swapped,
                        inputs,
                        str(path),
                        dynamo=False,
                        opset_version=opset,
                        do_constant_folding=True,
                        input_names=forward_names(module, len(inputs)),
                        dynamic_axes=dynamic or None,
                    )
                    exporter = f"torch.onnx TorchScript (opset {opset})"
        except Exception as e:  # torch raises many types; the first line says what failed
            missing = missing_export_package(e)
            if missing:  # the dynamo exporter imports onnxscript only when it runs
                raise export_extra_missing(missing, f"torch could not export at opset {opset}: ") from None
            raise ExportError(
                f"torch could not export at opset {opset}: {type(e).__name__}: {_cause(e)[:300]}"
            ) from None
        model = load_model(path)
        if dynamic and opset < DYNAMO_MIN_OPSET:
            _free_outputs(model)
        return model, exporter
