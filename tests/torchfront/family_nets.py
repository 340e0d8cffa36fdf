"""One tiny torch network per normalization family, with non-trivial statistics.

Each normalization sits where no exporter folds it away (after a ReLU, or on
the input), so the emitted form is visible in the ONNX graph.
"""

from __future__ import annotations

import torch
from torch import nn

from normonnx.torchfront.modules import BatchChannelNorm2d, FrozenBatchNorm2d, WSConv2d
from tests.torchfront.patterns import randomize_statistics

IMAGE = (2, 6, 8, 8)
TOKENS = (2, 5, 16)


class _After(nn.Module):
    """ReLU then the normalization (then a 1x1 conv for the weight-only families)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return self.norm(torch.relu(x) - 0.3)


def _factory(family: str) -> tuple[nn.Module, tuple[int, ...]]:
    if family == "batchnorm":
        return _After(nn.BatchNorm2d(6)), IMAGE
    if family == "instancenorm":
        return _After(nn.InstanceNorm2d(6, affine=True)), IMAGE
    if family == "groupnorm":
        return _After(nn.GroupNorm(3, 6)), IMAGE
    if family == "layernorm":
        return _After(nn.LayerNorm(16)), TOKENS
    if family == "rmsnorm":
        return _After(nn.RMSNorm(16, eps=1e-6)), TOKENS
    if family == "weightstd":
        return _After(WSConv2d(6, 4, 3, padding=1, gain=True)), IMAGE
    if family == "weightnorm":
        return _After(nn.utils.parametrizations.weight_norm(nn.Conv2d(6, 4, 3, padding=1))), IMAGE
    if family == "batchchannelnorm":
        return _After(BatchChannelNorm2d(6, 3)), IMAGE
    if family == "affine":
        return _After(FrozenBatchNorm2d(6)), IMAGE
    raise KeyError(family)


FAMILIES = (
    "batchnorm",
    "instancenorm",
    "groupnorm",
    "layernorm",
    "rmsnorm",
    "weightstd",
    "weightnorm",
    "batchchannelnorm",
    "affine",
)


def build(family: str, seed: int = 0):
    module, shape = _factory(family)
    torch.manual_seed(seed)
    module = randomize_statistics(module, seed)
    return module, (torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)),)


# MODULE:FACTORY entry points, one per family, for `normonnx export tests.torchfront.family_nets:<family>`.
def _make(family: str):
    return lambda: build(family)


for _family in FAMILIES:
    globals()[_family] = _make(_family)
