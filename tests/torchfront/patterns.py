"""Small torch networks with every foldable pattern: export fixtures for the tests and the first demo.

Statistics are randomized (non-trivial means, variances and affines) rather
than trained; the trained reference zoo lives beside this file.
"""

from __future__ import annotations

import torch
from torch import nn

from normonnx.torchfront.modules import BatchChannelNorm2d, FrozenBatchNorm2d, WSConv2d


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name, None)
                if not isinstance(t, torch.Tensor) or t.dim() != 1 or isinstance(m, (nn.Linear,)):
                    continue
                if name == "running_var":
                    t.copy_(torch.rand(t.shape, generator=g) * 2 + 0.2)
                elif name == "weight":
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return model.eval()


class PatternNet(nn.Module):
    """BN before conv, Conv-BN-BN, depthwise, WS (two forms), BCN, weight_norm + FrozenBN, grouped ConvT, BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_bn = nn.BatchNorm2d(3)
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.ws = WSConv2d(8, 16, 3, padding=1, gain=True)
        self.ws_bn = nn.BatchNorm2d(16)
        self.std = WSConv2d(16, 16, 3, padding=1, impl="batch_norm", eps=1e-6)
        self.bcn = BatchChannelNorm2d(16, 4)
        self.wn = nn.utils.parametrizations.weight_norm(nn.Conv2d(16, 16, 3, padding=1))
        self.frozen = FrozenBatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2, groups=2)
        self.up_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 10)
        self.fc_bn = nn.BatchNorm1d(10)
        self.out_bn = nn.BatchNorm1d(10)
        self.out = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.stem_bn(x))
        x = torch.relu(self.bn_b(self.bn_a(self.conv(x))))
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.ws_bn(self.ws(x)))
        x = torch.relu(self.bcn(self.std(x)))
        x = torch.relu(self.frozen(self.wn(x)))
        x = torch.relu(self.up_bn(self.up(x)))
        x = self.head(x).mean(dim=(2, 3))
        x = torch.relu(self.fc_bn(self.fc(x)))
        return self.out(self.out_bn(x))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 4, 1))

    def forward(self, x):
        return self.body(x)


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, groups=2), nn.BatchNorm3d(4), nn.ReLU())

    def forward(self, x):
        return self.body(x)


NETS = {
    "patterns": (PatternNet, (2, 3, 16, 16)),
    "conv1d": (Conv1dNet, (2, 4, 12)),
    "conv3d": (Conv3dNet, (1, 2, 6, 6, 6)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = NETS[name]
    torch.manual_seed(seed)
    model = randomize_statistics(cls(), seed)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))


def pattern_net() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """MODULE:FACTORY entry point: ``normonnx export tests.torchfront.patterns:pattern_net``."""
    model, x = build("patterns")
    return model, (x,)


def conv1d_net() -> tuple[nn.Module, tuple[torch.Tensor]]:
    model, x = build("conv1d")
    return model, (x,)


def conv3d_net() -> tuple[nn.Module, tuple[torch.Tensor]]:
    model, x = build("conv3d")
    return model, (x,)


patterns_net = pattern_net
