"""The one torch reference runner: a module's outputs, flattened as the exporters flatten them.

``check --torch``, ``export`` and ``convert`` all judge an ONNX model against
torch eager through this module, so a module that returns a dict, a nested
tuple or a bfloat16 tensor is handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from normonnx.errors import ExportError


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
