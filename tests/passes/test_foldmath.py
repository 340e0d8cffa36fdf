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


def test_cast_exact_refuses_what_passes_the_largest_value_and_casts_the_rest():
    """Checked on the cast's smallest and largest values: a value above float16's largest (65504) is
    refused even where the cast would round it down to 65504; a non-finite input is named as that."""
    values = np.array([[1.0, -2.5], [65504.0, -65504.0]])  # the largest value itself passes
    np.testing.assert_array_equal(fm.cast_exact(values, np.float16, "w"), values.astype(np.float16))
    for over in (65510.0, 65520.0, 1e9):  # 65510 rounds to 65504, 65520 to inf
        with pytest.raises(fm.FoldMathError, match=r"overflow float16 at channel 1 \(\|value\| "):
            fm.cast_exact(np.array([[0.0], [-over]]), np.float16, "w")
    with pytest.raises(fm.FoldMathError, match="is not finite at channel 0"):
        fm.cast_exact(np.array([[np.nan], [1e9]]), np.float16, "w")
    with pytest.raises(fm.FoldMathError, match="is not finite at index 1"):
        fm.cast_exact(np.array([0.0, np.inf]), np.float64, "w", channel_axis=None)
    assert fm.cast_exact(np.zeros((0, 3)), np.float16, "w").shape == (0, 3)


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_cast_exact_knows_the_largest_values_of_ml_dtypes_floats(name):
    """numpy's finfo does not know bfloat16 or the float8 types: their overflow was cast to inf or NaN."""
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, name))
    top = float(ml_dtypes.finfo(dtype).max)
    fine = np.array([1.0, -top])
    np.testing.assert_array_equal(fm.cast_exact(fine, dtype, "w").astype(np.float64), fine)
    with pytest.raises(fm.FoldMathError, match=f"overflow {name} at channel 1"):
        fm.cast_exact(np.array([0.0, 4 * top]), dtype, "w")


@pytest.mark.parametrize("transposed", [False, True])
def test_scaled_weights_are_the_float64_products(transposed):
    """The product promotes the float32 weight itself (no float64 copy of it first): the same numbers as
    multiplying float64 copies."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    s = rng.standard_normal(4 * 2 if transposed else 6)
    got = fm.scale_conv_outputs(w, s, group=2, transposed=transposed)
    assert got.dtype == np.float64
    w64 = w.astype(np.float64)
    if transposed:  # output channel g * 4 + j lives at W[g * 3 : (g + 1) * 3, j]
        want = (w64.reshape(2, 3, 4, 3, 3) * s.reshape(2, 1, 4, 1, 1)).reshape(w.shape)
    else:
        want = w64 * s.reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(got, want)
    s_in = rng.standard_normal(6 if transposed else 4 * 2)
    if transposed:
        want_in = w64 * s_in.reshape(-1, 1, 1, 1)
    else:  # output channel o of group g reads input channels g * 4 + i
        want_in = (w64.reshape(2, 3, 4, 3, 3) * s_in.reshape(2, 1, 4, 1, 1)).reshape(w.shape)
    np.testing.assert_array_equal(fm.scale_conv_inputs(w, s_in, group=2, transposed=transposed), want_in)
