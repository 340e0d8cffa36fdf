"""The same network with its normalization layers removed: the floor folding can reach.

A fully foldable network (BatchNorm after convs, FrozenBatchNorm, weight
standardization, weight_norm) folded well costs what this stripped twin
costs; a network whose normalizations compute statistics at inference
(LayerNorm, GroupNorm, ...) cannot get there, and the gap says how much
those normalizations cost. Which modules are normalizations is read from
the family table.
"""

from __future__ import annotations

import copy
import importlib

import torch
from torch import nn

from normonnx.families import FAMILIES


def _family_classes() -> dict[type, str]:
    """torch module class -> family key, for every class the family table names (weight_norm is a function)."""
    classes: dict[type, str] = {}
    for fam in FAMILIES:
        for path in fam.torch_types:
            module_name, _, attr = path.rpartition(".")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                continue
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                classes.setdefault(obj, fam.key)
    return classes


def norm_classes() -> tuple[type, ...]:
    return tuple(_family_classes())


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _plain_conv(conv: nn.Module) -> nn.Module:
    """A weight-standardized conv as the plain conv it extends: same weight, no standardization."""
    base = next(c for c in type(conv).__mro__ if c in _CONVS)
    kwargs = dict(
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    if issubclass(base, nn.modules.conv._ConvTransposeNd):
        kwargs["output_padding"] = conv.output_padding
    plain = base(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if k != "gain"})
    return plain


def strip_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every normalization an Identity and every reparametrized weight plain."""
    twin = copy.deepcopy(module)
    norms = norm_classes()
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "standardized_weight"):
                setattr(parent, name, _plain_conv(child))
            elif isinstance(child, norms):
                setattr(parent, name, nn.Identity())
            elif hasattr(child, "parametrizations") and "weight" in child.parametrizations:
                torch.nn.utils.parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
    return twin.eval()


def count_norms(module: nn.Module) -> dict[str, int]:
    """Normalization layers of a torch model by family key (a Batch-Channel Norm counts once, as itself)."""
    classes = _family_classes()
    counts: dict[str, int] = {}
    inside: set[int] = set()
    for m in module.modules():
        if id(m) in inside:
            continue
        family = next((classes[c] for c in type(m).__mro__ if c in classes), None)
        if family is None and hasattr(m, "parametrizations") and "weight" in m.parametrizations:
            family = "weightnorm"
        if family is not None:
            counts[family] = counts.get(family, 0) + 1
            if family == "batchchannelnorm":
                inside.update(id(c) for c in m.modules())
    return dict(sorted(counts.items()))
