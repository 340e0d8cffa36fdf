"""torch modules for the normalizations torch does not ship.

* Weight-standardized convolutions (Qiao et al. 2019; BiT; NFNet's
  ScaledStdConv), with the variants found in practice as options.
* Batch-Channel Norm (Qiao et al. 2019): BatchNorm with running statistics,
  then a group-wise channel normalization.
* FrozenBatchNorm2d: BatchNorm with every parameter a buffer (detection
  backbones), computed as ``x * scale + shift`` the way torchvision does.

torch's own BatchNorm*, LayerNorm, InstanceNorm*, GroupNorm, RMSNorm and
weight_norm are used as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _WeightStandardization:
    """Standardize each output filter of the weight before the convolution.

    ``eps_in``: "var" (sqrt(var + eps), BiT) or "std" (std + eps);
    ``unbiased``: divide by n - 1; ``gain``: a learned per-filter scale;
    ``fan_in_scale``: divide by sqrt(fan_in) (NFNet's ScaledStdConv);
    ``impl``: "moments" (mean/var arithmetic) or "batch_norm" (timm's
    StdConv2d: ``F.batch_norm`` in training mode on the reshaped weight;
    biased, eps in var).
    """

    transposed = False

    def _init_ws(self, eps: float, eps_in: str, unbiased: bool, gain: bool, fan_in_scale: bool, impl: str) -> None:
        if eps_in not in ("var", "std"):
            raise ValueError(f"eps_in must be 'var' or 'std', not {eps_in!r}")
        if impl not in ("moments", "batch_norm"):
            raise ValueError(f"impl must be 'moments' or 'batch_norm', not {impl!r}")
        if impl == "batch_norm" and (eps_in != "var" or unbiased):
            raise ValueError("impl='batch_norm' standardizes with a biased variance and eps in var")
        self.ws_eps, self.eps_in, self.unbiased, self.fan_in_scale, self.impl = (
            eps,
            eps_in,
            unbiased,
            fan_in_scale,
            impl,
        )
        out = self.out_channels
        shape = (
            (1, out) + (1,) * (self.weight.dim() - 2) if self.transposed else (out,) + (1,) * (self.weight.dim() - 1)
        )
        self.gain = nn.Parameter(torch.ones(shape)) if gain else None

    def _filters(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as [filters, fan_in] rows, one row per output filter."""
        if not self.transposed:
            return w.reshape(w.shape[0], -1)
        g = self.groups
        cin, cout_g = w.shape[0], w.shape[1]
        wg = w.reshape(g, cin // g, cout_g, -1).permute(0, 2, 1, 3)
        return wg.reshape(g * cout_g, -1)

    def _unfilter(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not self.transposed:
            return rows.reshape_as(like)
        g = self.groups
        cin, cout_g = like.shape[0], like.shape[1]
        wg = rows.reshape(g, cout_g, cin // g, -1).permute(0, 2, 1, 3)
        return wg.reshape_as(like)

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        rows = self._filters(w)
        if self.impl == "batch_norm":
            rows = F.batch_norm(rows.unsqueeze(0), None, None, training=True, momentum=0.0, eps=self.ws_eps)[0]
        else:
            mean = rows.mean(dim=1, keepdim=True)
            var = rows.var(dim=1, keepdim=True, unbiased=self.unbiased)
            std = torch.sqrt(var + self.ws_eps) if self.eps_in == "var" else torch.sqrt(var) + self.ws_eps
            rows = (rows - mean) / std
        if self.fan_in_scale:
            rows = rows / math.sqrt(rows.shape[1])
        out = self._unfilter(rows, w)
        return out * self.gain if self.gain is not None else out


def _ws_class(base: type[nn.Module], transposed: bool, conv_fn, name: str) -> type[nn.Module]:
    def __init__(
        self, *args, eps=1e-5, eps_in="var", unbiased=False, gain=False, fan_in_scale=False, impl="moments", **kwargs
    ):
        base.__init__(self, *args, **kwargs)
        self._init_ws(eps, eps_in, unbiased, gain, fan_in_scale, impl)

    if transposed:

        def forward(self, x, output_size=None):
            pad = self._output_padding(
                x, output_size, self.stride, self.padding, self.kernel_size, len(self.kernel_size), self.dilation
            )
            return conv_fn(
                x, self.standardized_weight(), self.bias, self.stride, self.padding, pad, self.groups, self.dilation
            )
    else:

        def forward(self, x):
            if self.padding_mode != "zeros":
                raise NotImplementedError("weight-standardized convs support padding_mode='zeros' only")
            return conv_fn(
                x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups
            )

    doc = f"{base.__name__} whose weight is standardized per output filter (see _WeightStandardization)."
    attrs = {"__init__": __init__, "forward": forward, "transposed": transposed, "__doc__": doc}
    return type(name, (_WeightStandardization, base), attrs)


WSConv1d = _ws_class(nn.Conv1d, False, F.conv1d, "WSConv1d")
WSConv2d = _ws_class(nn.Conv2d, False, F.conv2d, "WSConv2d")
WSConv3d = _ws_class(nn.Conv3d, False, F.conv3d, "WSConv3d")
WSConvTranspose2d = _ws_class(nn.ConvTranspose2d, True, F.conv_transpose2d, "WSConvTranspose2d")


def ScaledStdConv2d(*args, eps: float = 1e-6, **kwargs) -> nn.Module:
    """NFNet's ScaledStdConv2d: WS with a gain and 1/sqrt(fan_in), eps in var."""
    return WSConv2d(*args, eps=eps, gain=True, fan_in_scale=True, **kwargs)


class BatchChannelNorm2d(nn.Module):
    """Batch-Channel Norm: BatchNorm2d (running statistics at inference) then GroupNorm.

    The BN half folds into a preceding convolution at inference; the channel
    (GroupNorm) half normalizes per sample and stays.
    """

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum)
        self.channel_norm = nn.GroupNorm(num_groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_norm(self.batch_norm(x))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, name).copy_(getattr(bn, name))
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of [N, C, H, W] (ConvNeXt's channels_first form).

    Written out as the mean and variance over dim 1, as ConvNeXt does: this
    is the decomposed channels-first LayerNorm exporters produce, which
    normonnx raises to Transpose/LayerNormalization/Transpose.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
