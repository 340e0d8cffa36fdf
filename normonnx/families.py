"""The normalization families, each described once.

Exporters, passes, ``inspect``, tests and the demo read this table instead of
keeping their own lists. Reference functions are plain numpy (float64) so the
bottom layer never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The default ONNX domain, as protos and graphsurgeon spell it.
DEFAULT_DOMAINS = (None, "", "ai.onnx")


def is_default_domain(domain: str | None) -> bool:
    return domain in DEFAULT_DOMAINS


# The ops a constant per-channel affine folds into (their weights are constants).
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# Normalization ops onnxruntime registers itself (its contrib ops, some in the default domain):
# (op, domain) -> family. normonnx loads, lists, checks and benchmarks them and never rewrites them.
ONNXRUNTIME_NORM_OPS = {
    ("SimplifiedLayerNormalization", ""): "rmsnorm",
    ("SkipLayerNormalization", "com.microsoft"): "layernorm",
    ("SkipSimplifiedLayerNormalization", "com.microsoft"): "rmsnorm",
    ("EmbedLayerNormalization", "com.microsoft"): "layernorm",
    ("GroupNorm", "com.microsoft"): "groupnorm",
    ("SkipGroupNorm", "com.microsoft"): "groupnorm",
}
ONNXRUNTIME_NOTE = "an onnxruntime contrib op: runs on onnxruntime as it is, normonnx never rewrites it"


def onnxruntime_norm_family(op: str, domain: str | None) -> str | None:
    """The family of an onnxruntime contrib normalization op, or None."""
    return ONNXRUNTIME_NORM_OPS.get((op, "" if is_default_domain(domain) else domain))


def _axes_from(x: np.ndarray, start: int) -> tuple[int, ...]:
    return tuple(range(start, x.ndim))


def ref_batchnorm(x, gamma, beta, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    s = np.reshape(gamma / np.sqrt(var + eps), shape)
    return s * (x - np.reshape(mean, shape)) + np.reshape(beta, shape)


def ref_layernorm(x, gamma, beta, eps=1e-5, axis=-1):
    axes = _axes_from(x, axis % x.ndim)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * gamma + (0 if beta is None else beta)


def ref_instancenorm(x, gamma, beta, eps=1e-5):
    axes = _axes_from(x, 2)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mu) / np.sqrt(var + eps) * np.reshape(gamma, shape) + np.reshape(beta, shape)


def ref_groupnorm(x, gamma, beta, groups, eps=1e-5):
    n, _c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mu = xg.mean(axis=2, keepdims=True)
    var = ((xg - mu) ** 2).mean(axis=2, keepdims=True)
    y = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y * np.reshape(gamma, shape) + np.reshape(beta, shape)


def ref_rmsnorm(x, gamma, eps=1e-6, axis=-1):
    axes = _axes_from(x, axis % x.ndim)
    return x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps) * gamma


def ref_weight_standardize(w, eps=1e-5, eps_in="var", unbiased=False, gain=None, fan_in_scale=False):
    """Standardize each output filter of a Conv weight (axis 0)."""
    axes = _axes_from(w, 1)
    mu = w.mean(axis=axes, keepdims=True)
    var = w.var(axis=axes, keepdims=True, ddof=1 if unbiased else 0)
    std = np.sqrt(var + eps) if eps_in == "var" else np.sqrt(var) + eps
    y = (w - mu) / std
    if fan_in_scale:
        y = y / np.sqrt(np.prod(w.shape[1:]))
    if gain is not None:
        y = y * np.reshape(gain, (-1,) + (1,) * (w.ndim - 1))
    return y


def ref_batch_channel_norm(x, bn_params, gamma, beta, groups, eps=1e-5):
    """Batch-Channel Norm (Qiao et al. 2019) at inference: BN with running stats, then GroupNorm."""
    return ref_groupnorm(ref_batchnorm(x, *bn_params, eps=eps), gamma, beta, groups, eps)


@dataclass(frozen=True)
class Family:
    """One normalization family and everything the project needs to know about it."""

    key: str
    title: str
    torch_types: tuple[str, ...]
    onnx_op: str | None
    first_opset: int | None
    decomposition: str
    foldable: bool
    fold_note: str  # what folding can do with it, in a user's words
    reference: Callable[..., np.ndarray] | None
    rtol: float = 1e-5
    # The form ``--norm-style auto`` emits where the op exists: the one measured
    # fastest on onnxruntime CPU (scripts/bench_emit.py, benchmarks/emit_forms.md).
    auto_form: str = "op"


FAMILIES: tuple[Family, ...] = (
    Family(
        "batchnorm",
        "BatchNorm",
        ("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d", "torch.nn.SyncBatchNorm"),
        "BatchNormalization",
        1,
        "Mul(scale) / Add(shift) per channel",
        True,
        "a per-channel affine at inference, folded into the neighbouring Conv/ConvTranspose/Gemm/MatMul",
        ref_batchnorm,
    ),
    Family(
        "layernorm",
        "LayerNorm",
        ("torch.nn.LayerNorm", "normonnx.torchfront.modules.LayerNorm2d"),
        "LayerNormalization",
        17,
        "ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add",
        False,
        "statistics are computed per sample at inference; its affine can fold into a following linear op (opt-in)",
        ref_layernorm,
    ),
    Family(
        "instancenorm",
        "InstanceNorm",
        ("torch.nn.InstanceNorm1d", "torch.nn.InstanceNorm2d", "torch.nn.InstanceNorm3d"),
        "InstanceNormalization",
        1,
        "ReduceMean over spatial axes/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add",
        False,
        "statistics are computed per sample and channel at inference",
        ref_instancenorm,
    ),
    Family(
        "groupnorm",
        "GroupNorm",
        ("torch.nn.GroupNorm",),
        "GroupNormalization",
        21,
        "Reshape/InstanceNormalization/Reshape/Mul/Add",
        False,
        "statistics are computed per sample and group at inference",
        ref_groupnorm,
        auto_form="decomposed",
    ),
    Family(
        "rmsnorm",
        "RMSNorm",
        ("torch.nn.RMSNorm",),
        "RMSNormalization",
        23,
        "Pow/ReduceMean/Add/Sqrt/Div/Mul",
        False,
        "statistics are computed per sample at inference; its gain can fold into a following linear op (opt-in)",
        ref_rmsnorm,
    ),
    Family(
        "weightstd",
        "Weight Standardization",
        (
            "normonnx.torchfront.modules.WSConv1d",
            "normonnx.torchfront.modules.WSConv2d",
            "normonnx.torchfront.modules.WSConv3d",
            "normonnx.torchfront.modules.WSConvTranspose2d",
        ),
        None,
        None,
        "ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div on the weight, or BatchNormalization(training_mode=1)",
        True,
        "the standardized weight is a constant, evaluated once",
        ref_weight_standardize,
    ),
    Family(
        "batchchannelnorm",
        "Batch-Channel Norm",
        ("normonnx.torchfront.modules.BatchChannelNorm2d",),
        None,
        None,
        "BatchNormalization then a GroupNorm subgraph",
        True,
        "the BN half folds into the preceding conv; the GroupNorm half is computed at inference",
        ref_batch_channel_norm,
    ),
    Family(
        "affine",
        "Channel affine (FrozenBatchNorm)",
        ("normonnx.torchfront.modules.FrozenBatchNorm2d",),
        None,
        None,
        "Mul(scale)/Add(shift) per channel",
        True,
        "a constant per-channel affine, folded into the neighbouring Conv/ConvTranspose/Gemm/MatMul",
        ref_batchnorm,
    ),
    Family(
        "weightnorm",
        "weight_norm",
        ("torch.nn.utils.parametrizations.weight_norm",),
        None,
        None,
        "g * v / ||v|| on the weight",
        True,
        "the standardized weight is a constant, evaluated once",
        None,
    ),
)

BY_KEY: dict[str, Family] = {f.key: f for f in FAMILIES}
BY_OP: dict[str, Family] = {f.onnx_op: f for f in FAMILIES if f.onnx_op}
# The families with a standard ONNX op: what ``emit`` lowers and raises.
WITH_OP: tuple[str, ...] = tuple(f.key for f in FAMILIES if f.onnx_op)


def op_available(key: str, opset: int) -> bool:
    """Whether the family's standard op exists at ``opset``."""
    fam = family(key)
    return fam.onnx_op is not None and fam.first_opset is not None and opset >= fam.first_opset


def family(key: str) -> Family:
    """The family with this key (KeyError names the known keys)."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown normalization family {key!r}; known: {', '.join(BY_KEY)}") from None
