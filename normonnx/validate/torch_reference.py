"""The one torch reference runner: a module's outputs, flattened as the exporters flatten them.

``check --torch``, ``export`` and ``convert`` all judge an ONNX model against
torch eager through this module, so a module that returns a dict, a nested
tuple or a bfloat16 tensor is handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from normonnx.errors import ExportError

if TYPE_CHECKING:
    import onnx

    from normonnx.results import ParityResult


def tensor_leaves(value) -> list:
    """A module's outputs flattened the way the exporters flatten them: tuples, lists, dict values."""
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in tensor_leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in tensor_leaves(v)]
    if not hasattr(value, "detach"):
        raise ExportError(f"the module returns a {type(value).__name__}, not tensors")
    return [value]


def torch_outputs(module, inputs: Sequence) -> dict[str, np.ndarray]:
    """``module(*inputs)`` under no_grad as {output_i: array} (bfloat16 comes back as float32)."""
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x for x in inputs]
    with torch.no_grad():
        leaves = tensor_leaves(module(*xs))
    return {
        f"output_{i}": (o.detach().float() if o.dtype == torch.bfloat16 else o.detach()).numpy()
        for i, o in enumerate(leaves)
    }


def module_outputs(module, inputs: Sequence, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The output of each submodule in ``paths`` on ``module(*inputs)`` (forward hooks; only modules that
    ran once and returned one floating tensor: a shared module's output is not one tensor of the graph)."""
    import torch

    wanted = set(paths)
    calls: dict[str, list] = {}

    def keep(path: str):
        def hook(_module, _inputs, out) -> None:
            # A copy: an in-place op after the module (ReLU(inplace=True)) would change the tensor itself.
            calls.setdefault(path, []).append(out.detach().clone() if isinstance(out, torch.Tensor) else None)

        return hook

    handles = [sub.register_forward_hook(keep(path)) for path, sub in module.named_modules() if path in wanted]
    try:
        torch_outputs(module, inputs)
    finally:
        for h in handles:
            h.remove()
    result = {}
    for path, outs in calls.items():
        if len(outs) == 1 and outs[0] is not None and outs[0].is_floating_point():
            result[path] = outs[0].detach().float().numpy()
    return result


def torch_parity(module, model: onnx.ModelProto, example: Sequence, samples: int = 3, seed: int = 0) -> ParityResult:
    """The ONNX model on onnxruntime (optimizations off) against torch eager, on inputs shaped like
    ``example`` (floating tensors redrawn from a seed; integer and boolean ones kept as given)."""
    import torch

    from normonnx.validate.execute import runnable_source
    from normonnx.validate.parity import compare
    from normonnx.validate.runners import RunOptions

    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    refs, feeds = [], []
    for k in range(samples):
        g = torch.Generator().manual_seed(seed + k)
        xs = [torch.randn(x.shape, generator=g, dtype=x.dtype) if x.is_floating_point() else x for x in example]
        refs.append(torch_outputs(module, xs))
        feeds.append(_feeds(module, names, xs))
    cands = []
    # onnxruntime runs in a child, as everywhere: from bytes, or from the model itself when it is too big for them.
    export = RunOptions().runner(runnable_source(model) or model, label="the export")
    for ref, got in zip(refs, export.infer(feeds), strict=True):
        if len(got) != len(ref):
            raise ExportError(f"the export has {len(got)} outputs, the module returns {len(ref)} tensors")
        cands.append({f"output_{i}": np.asarray(v) for i, v in enumerate(got.values())})
    return compare(refs, cands)


def _feeds(module, names: list[str], xs: list) -> dict:
    """The example tensors keyed by the export's input names (an exporter drops inputs the graph never reads)."""
    if len(names) == len(xs):
        return {n: x.numpy() for n, x in zip(names, xs, strict=True)}
    from normonnx.torchfront.exporter import forward_names

    params = forward_names(module, len(xs)) or []
    by_name = dict(zip(params, xs, strict=False))
    if not all(n in by_name for n in names):
        raise ExportError(f"the export takes inputs {names}; the module's forward takes {params}")
    return {n: by_name[n].numpy() for n in names}
