"""The folding math against torch's own layers: grouped, depthwise, transposed, 1-D/2-D/3-D."""

from __future__ import annotations

import numpy as np
import pytest

from normonnx import foldmath as fm

torch = pytest.importorskip("torch")

CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONVT = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}
BN = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}


def _trained_bn(channels: int, dims: int, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    bn = BN[dims](channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.1)
    return bn.eval().double()


def _affine(bn) -> fm.ChannelAffine:
    return fm.batchnorm_affine(
        bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.running_mean.numpy(), bn.running_var.numpy(), bn.eps
    )


CASES = [  # dims, cin, cout, group
    (1, 6, 4, 1),
    (2, 6, 9, 3),
    (2, 8, 8, 8),
    (3, 4, 6, 2),
    (2, 6, 4, 2),
]


@pytest.mark.parametrize("dims,cin,cout,group", CASES)
def test_conv_then_bn_matches_torch(dims, cin, cout, group):
    torch.manual_seed(0)
    conv = CONV[dims](cin, cout, 3, groups=group, padding=1).double().eval()
    bn = _trained_bn(cout, dims, 1)
    x = torch.randn((2, cin) + (5,) * dims, dtype=torch.float64)
    a = _affine(bn)
    w = fm.scale_conv_outputs(conv.weight.detach().numpy(), a.scale, group, transposed=False)
    b = a.scale * conv.bias.detach().numpy() + a.shift
    folded = torch.nn.functional.__dict__[f"conv{dims}d"](
        x, torch.from_numpy(w), torch.from_numpy(b), padding=1, groups=group
    )
    np.testing.assert_allclose(folded.numpy(), bn(conv(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims,cin,cout,group", CASES)
def test_conv_transpose_then_bn_matches_torch(dims, cin, cout, group):
    torch.manual_seed(0)
    conv = CONVT[dims](cin, cout, 3, groups=group, stride=2).double().eval()
    bn = _trained_bn(cout, dims, 2)
    x = torch.randn((2, cin) + (4,) * dims, dtype=torch.float64)
    a = _affine(bn)
    w = fm.scale_conv_outputs(conv.weight.detach().numpy(), a.scale, group, transposed=True)
    b = a.scale * conv.bias.detach().numpy() + a.shift
    fn = torch.nn.functional.__dict__[f"conv_transpose{dims}d"]
    folded = fn(x, torch.from_numpy(w), torch.from_numpy(b), stride=2, groups=group)
    np.testing.assert_allclose(folded.numpy(), bn(conv(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dims,cin,cout,group", CASES)
def test_bn_then_unpadded_conv_matches_torch(dims, cin, cout, group):
    torch.manual_seed(0)
    conv = CONV[dims](cin, cout, 3, groups=group, stride=2).double().eval()
    bn = _trained_bn(cin, dims, 3)
    x = torch.randn((2, cin) + (7,) * dims, dtype=torch.float64)
    a = _affine(bn)
    w = conv.weight.detach().numpy()
    w2 = fm.scale_conv_inputs(w, a.scale, group, transposed=False)
    b2 = conv.bias.detach().numpy() + fm.conv_input_shift_response(w, a.shift, group)
    fn = torch.nn.functional.__dict__[f"conv{dims}d"]
    folded = fn(x, torch.from_numpy(w2), torch.from_numpy(b2), stride=2, groups=group)
    np.testing.assert_allclose(folded.numpy(), conv(bn(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transposed", [False, True])
def test_linear_matrix_scaling(transposed):
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    s, t = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    stored = b.T if transposed else b
    out = fm.scale_matrix_columns(stored, s, transposed)
    got = x @ (out.T if transposed else out) + t
    np.testing.assert_allclose(got, (x @ b) * s + t, rtol=1e-12)
    s_in, t_in = rng.uniform(0.5, 2, 7), rng.standard_normal(7)
    rows = fm.scale_matrix_rows(stored, s_in, transposed)
    shift = fm.matrix_input_shift_response(stored, t_in, transposed)
    got = x @ (rows.T if transposed else rows) + shift
    np.testing.assert_allclose(got, (x * s_in + t_in) @ b, rtol=1e-12)


def test_batchnorm_affine_refuses_and_names_the_channel():
    ones = np.ones(4)
    with pytest.raises(fm.FoldMathError, match="channel 2"):
        fm.batchnorm_affine(ones, ones, ones, np.array([1.0, 1.0, -1e-5, 1.0]), 1e-5)
    with pytest.raises(fm.FoldMathError, match="mean is nan at channel 1"):
        fm.batchnorm_affine(ones, ones, np.array([0, np.nan, 0, 0]), ones, 1e-5)
    with pytest.raises(fm.FoldMathError, match="epsilon"):
        fm.batchnorm_affine(ones, ones, ones, ones, float("inf"))


def test_cast_exact_refuses_fp16_overflow_and_names_the_channel():
    values = np.ones((3, 2))
    values[2, 1] = 7e4
    with pytest.raises(fm.FoldMathError, match="overflow float16 at channel 2"):
        fm.cast_exact(values, np.float16, "w", channel_axis=0)
    assert fm.cast_exact(values, np.float32, "w").dtype == np.float32
