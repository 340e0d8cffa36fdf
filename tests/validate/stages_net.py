"""A small staged CNN for localization against torch: ``stages.{i}.conv`` / ``.bn`` / ``.act``."""

from __future__ import annotations

import torch
from torch import nn

from tests.torchfront.patterns import randomize_statistics


class Stage(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class StagedNet(nn.Module):
    def __init__(self, channels: int = 8, stages: int = 5) -> None:
        super().__init__()
        self.stages = nn.Sequential(*(Stage(channels) for _ in range(stages)))
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        return self.head(self.stages(x))


def staged():
    torch.manual_seed(0)
    model = randomize_statistics(StagedNet()).eval()
    return model, (torch.randn(1, 8, 12, 12),)
