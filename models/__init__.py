"""The reference zoo: one small network per normalization family, where that family lives in practice.

The source lives in the repository's ``models/`` folder and ships inside the
wheel as ``normonnx.zoo`` (checkpoints as package data; pyproject.toml maps
the folder), so ``normonnx demo`` runs wherever normonnx is installed and no
user package named ``models`` can shadow it. Each entry is trained by
scripts/train_reference.py on the shapes of ``normonnx.zoo.data``
(checkpoints in ``models/checkpoints/``). ``ZOO`` lists them; every
name is also a ``MODULE:FACTORY`` for ``normonnx export/convert``
(``normonnx.zoo:resnet_bn``), returning the untrained module and an example
input; pass the checkpoint to load the trained weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normonnx.torchfront.modules import BatchChannelNorm2d, FrozenBatchNorm2d, LayerNorm2d, WSConv2d

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
IMAGE_SHAPE = (1, 3, 32, 32)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNetBN(nn.Module):
    """ResNet-style: Conv -> BN -> ReLU everywhere, residual blocks. Fully foldable."""

    def __init__(self, norm: Callable[[int], nn.Module] = nn.BatchNorm2d, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), norm(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16, 1, norm)
        self.layer2 = BasicBlock(16, 32, 2, norm)
        self.layer3 = BasicBlock(32, 48, 2, norm)
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class PreActBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(y)))


class PreActCNN(nn.Module):
    """Pre-activation: BN -> ReLU -> Conv, BN on the input before a 1x1 conv, BN before a transition conv."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.in_bn = nn.BatchNorm2d(3)
        self.stem = nn.Conv2d(3, 24, 1)
        self.block1 = PreActBlock(24)
        self.pool = nn.AvgPool2d(2)
        self.trans_bn = nn.BatchNorm2d(24)
        self.trans = nn.Conv2d(24, 40, 1)
        self.block2 = PreActBlock(40)
        self.out_bn = nn.BatchNorm2d(40)
        self.fc = nn.Linear(40, classes)

    def forward(self, x):
        x = self.block1(self.stem(self.in_bn(x)))
        x = self.block2(self.trans(self.trans_bn(self.pool(x))))
        return self.fc(F.relu(self.out_bn(x)).mean(dim=(2, 3)))


class BiTBlock(nn.Module):
    """BiT's pre-activation bottleneck: GN -> ReLU -> weight-standardized conv."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 8) -> None:
        super().__init__()
        mid = cout // 2
        self.gn1, self.conv1 = nn.GroupNorm(groups, cin), WSConv2d(cin, mid, 1, bias=False, eps=1e-6)
        self.gn2, self.conv2 = nn.GroupNorm(groups, mid), WSConv2d(mid, mid, 3, stride, 1, bias=False, eps=1e-6)
        self.gn3, self.conv3 = nn.GroupNorm(groups, mid), WSConv2d(mid, cout, 1, bias=False, eps=1e-6)
        self.short = WSConv2d(cin, cout, 1, stride, bias=False, eps=1e-6) if stride != 1 or cin != cout else None

    def forward(self, x):
        pre = F.relu(self.gn1(x))
        short = x if self.short is None else self.short(pre)
        y = self.conv1(pre)
        y = self.conv2(F.relu(self.gn2(y)))
        y = self.conv3(F.relu(self.gn3(y)))
        return y + short


class BiTWSGN(nn.Module):
    """BiT-style: weight standardization everywhere, GroupNorm between convs."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = WSConv2d(3, 32, 3, 1, 1, bias=False, eps=1e-6)
        self.block1 = BiTBlock(32, 32, 1)
        self.block2 = BiTBlock(32, 64, 2)
        self.norm = nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(F.relu(self.norm(x)).mean(dim=(2, 3)))


class BCNMicro(nn.Module):
    """Micro-batch CNN (Qiao et al. 2019): weight-standardized convs, each followed by Batch-Channel Norm."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        chans = (3, 16, 32, 48)
        layers = []
        for i, (cin, cout) in enumerate(itertools.pairwise(chans)):
            layers += [
                WSConv2d(cin, cout, 3, 1 if i == 0 else 2, 1, bias=False),
                BatchChannelNorm2d(cout, 4),
                nn.ReLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


class Attention(nn.Module):
    """Plain multi-head self-attention on [N, T, D] (exports to MatMul/Softmax at every opset)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm1, self.attn = norm(dim), Attention(dim, heads)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT on 8x8 patches (16 tokens): pre-norm transformer blocks, then a norm and mean pooling."""

    def __init__(
        self, norm: Callable[[int], nn.Module] = nn.LayerNorm, dim: int = 64, depth: int = 2, classes: int = 4
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, 4, norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pw1, self.pw2 = nn.Conv2d(dim, 4 * dim, 1), nn.Conv2d(4 * dim, dim, 1)

    def forward(self, x):
        return x + self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))


class ConvNeXtCF(nn.Module):
    """ConvNeXt-style: patchify stem, depthwise 7x7, channels-first LayerNorm, inverted bottleneck."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32))
        self.blocks = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.down = nn.Sequential(LayerNorm2d(32), nn.Conv2d(32, 64, 2, 2))
        self.block3 = ConvNeXtBlock(64)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        x = self.block3(self.down(self.blocks(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class StyleIN(nn.Module):
    """Style-transfer architecture (Johnson et al.): conv/IN encoder, IN residual, ConvTranspose/IN decoder.

    Trained here to segment the shape (2 logits per pixel), so top-1 agreement is per pixel.
    """

    def __init__(self) -> None:
        super().__init__()
        inorm = lambda c: nn.InstanceNorm2d(c, affine=True)
        self.enc = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1), inorm(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), inorm(32), nn.ReLU()
        )
        self.res = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1), inorm(32), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), inorm(32)
        )
        self.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, 2, 1), inorm(16), nn.ReLU(), nn.Conv2d(16, 2, 3, 1, 1))

    def forward(self, x):
        y = self.enc(x)
        return self.dec(y + self.res(y))


class FrozenBackbone(nn.Module):
    """Detection-style backbone: a ResNet whose BatchNorms were frozen after training (FrozenBatchNorm2d)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.net = ResNetBN(norm=FrozenBatchNorm2d, classes=classes)

    def forward(self, x):
        return self.net(x)


class WeightNormCNN(nn.Module):
    """A conv network whose every conv and linear layer is reparametrized with weight_norm."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.body = nn.Sequential(
            wn(nn.Conv2d(3, 24, 3, 1, 1)),
            nn.ReLU(),
            wn(nn.Conv2d(24, 32, 3, 2, 1)),
            nn.ReLU(),
            wn(nn.Conv2d(32, 48, 3, 2, 1)),
            nn.ReLU(),
        )
        self.fc = wn(nn.Linear(48, classes))

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    families: tuple[str, ...]  # keys of normonnx.families
    builder: Callable[[], nn.Module]
    task: str  # "classify" or "segment"
    batch: int = 64  # training batch size
    epochs: int = 4
    note: str = ""

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("resnet_bn", ("batchnorm",), ResNetBN, "classify"),
        ZooEntry("preact_cnn", ("batchnorm",), PreActCNN, "classify"),
        ZooEntry("bit_ws_gn", ("weightstd", "groupnorm"), BiTWSGN, "classify"),
        ZooEntry(
            "bcn_micro",
            ("batchchannelnorm", "weightstd"),
            BCNMicro,
            "classify",
            batch=4,
            epochs=1,
            note="trained with micro-batches of 4",
        ),
        ZooEntry("vit_ln", ("layernorm",), lambda: TinyViT(nn.LayerNorm), "classify", epochs=12),
        ZooEntry("convnext_cf", ("layernorm",), ConvNeXtCF, "classify", epochs=6, note="channels-first LayerNorm"),
        ZooEntry("style_in", ("instancenorm",), StyleIN, "segment"),
        ZooEntry(
            "rms_transformer", ("rmsnorm",), lambda: TinyViT(lambda d: nn.RMSNorm(d, eps=1e-6)), "classify", epochs=12
        ),
        ZooEntry("frozen_backbone", ("affine",), FrozenBackbone, "classify", note="BatchNorm frozen after training"),
        ZooEntry("weightnorm_cnn", ("weightnorm",), WeightNormCNN, "classify", epochs=10),
    )
}


def _factory(name: str):
    def make() -> tuple[nn.Module, tuple[torch.Tensor]]:
        torch.manual_seed(0)
        model = ZOO[name].builder().eval()
        return model, (torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)),)

    make.__name__ = name
    make.__doc__ = f"MODULE:FACTORY for {name}: the architecture; --checkpoint {ZOO[name].checkpoint.name} trains it."
    return make


resnet_bn = _factory("resnet_bn")
preact_cnn = _factory("preact_cnn")
bit_ws_gn = _factory("bit_ws_gn")
bcn_micro = _factory("bcn_micro")
vit_ln = _factory("vit_ln")
convnext_cf = _factory("convnext_cf")
style_in = _factory("style_in")
rms_transformer = _factory("rms_transformer")
frozen_backbone = _factory("frozen_backbone")
weightnorm_cnn = _factory("weightnorm_cnn")
