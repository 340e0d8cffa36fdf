"""Folding math as small pure numpy functions.

Everything here works in float64 and knows nothing about graphs; the passes
do the plumbing. Weight layouts follow ONNX:

* Conv: ``W[Cout, Cin/group, *k]``
* ConvTranspose: ``W[Cin, Cout/group, *k]``
* Gemm: ``B[K, N]`` (``B[N, K]`` when ``transB=1``)
* MatMul with a constant right operand: ``B[K, N]``
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


class FoldMathError(ValueError):
    """The math of a fold is undefined or would lose the values (names the channel)."""


@dataclass(frozen=True)
class ChannelAffine:
    """y = scale * x + shift, per channel (float64 vectors of equal length)."""

    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


def batchnorm_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> ChannelAffine:
    """Inference BatchNorm as s = gamma / sqrt(var + eps), t = beta - s * mean."""
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    if not gamma.shape == beta.shape == mean.shape == var.shape:
        raise FoldMathError(
            f"parameter shapes differ: scale {gamma.shape}, B {beta.shape}, mean {mean.shape}, var {var.shape}"
        )
    if not np.isfinite(eps) or eps < 0:
        raise FoldMathError(f"epsilon is {eps}; it must be a finite number >= 0")
    params = np.stack([gamma, beta, mean, var])
    if not np.isfinite(params).all():
        for name, arr in zip(("scale", "B", "mean", "var"), params, strict=False):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise FoldMathError(f"{name} is {arr[bad[0]]} at channel {bad[0]}")
    denom = var + eps
    if not (denom > 0).all():
        c = int(np.flatnonzero(denom <= 0)[0])
        raise FoldMathError(f"var + epsilon = {denom[c]:.3g} <= 0 at channel {c}")
    scale = gamma / np.sqrt(denom)
    return ChannelAffine(scale, beta - scale * mean)


def conv_output_channels(weight_shape: tuple[int, ...], group: int, transposed: bool) -> int:
    """Number of output channels of a Conv / ConvTranspose weight."""
    return weight_shape[1] * group if transposed else weight_shape[0]


def conv_input_channels(weight_shape: tuple[int, ...], group: int, transposed: bool) -> int:
    """Number of input channels of a Conv / ConvTranspose weight."""
    return weight_shape[0] if transposed else weight_shape[1] * group


def scale_conv_outputs(weight: np.ndarray, scale: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """W' with every output channel o multiplied by scale[o] (in float64)."""
    w = np.asarray(weight)  # float64 through the product's own promotion: no float64 copy of the weight first
    s = np.asarray(scale, dtype=np.float64)
    tail = (1,) * (w.ndim - 2)
    if not transposed:
        return np.multiply(w, s.reshape(-1, 1, *tail), dtype=np.float64)
    cin, cout_g = w.shape[0], w.shape[1]
    # Output channel g * cout_g + j lives at W[g * cin_g : (g+1) * cin_g, j].
    wg = w.reshape(group, cin // group, cout_g, *w.shape[2:])
    return np.multiply(wg, s.reshape(group, 1, cout_g, *tail), dtype=np.float64).reshape(w.shape)


def scale_conv_inputs(weight: np.ndarray, scale: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """W' with every input channel i multiplied by scale[i] (in float64)."""
    w = np.asarray(weight)
    s = np.asarray(scale, dtype=np.float64)
    tail = (1,) * (w.ndim - 2)
    if transposed:
        return np.multiply(w, s.reshape(-1, 1, *tail), dtype=np.float64)
    cout, cin_g = w.shape[0], w.shape[1]
    # Output channel o of group g reads input channels g * cin_g + i.
    wg = w.reshape(group, cout // group, cin_g, *w.shape[2:])
    return np.multiply(wg, s.reshape(group, 1, cin_g, *tail), dtype=np.float64).reshape(w.shape)


def conv_input_shift_response(weight: np.ndarray, shift: np.ndarray, group: int) -> np.ndarray:
    """Per output channel: sum over i, k of W[o, i, k] * shift[input channel of (o, i)].

    This is the constant a Conv (not transposed) adds to every output position
    whose receptive field lies entirely inside the input.
    """
    w = np.asarray(weight, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64)
    cout, cin_g = w.shape[0], w.shape[1]
    wg = w.reshape(group, cout // group, cin_g, -1)
    tg = t.reshape(group, 1, cin_g, 1)
    return (wg * tg).sum(axis=(2, 3)).reshape(cout)


def scale_matrix_columns(matrix: np.ndarray, scale: np.ndarray, transposed: bool) -> np.ndarray:
    """Scale output feature n of ``x @ B`` (or ``x @ B.T`` when transposed)."""
    b = np.asarray(matrix, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    return b * s.reshape(-1, 1) if transposed else b * s.reshape(1, -1)


def scale_matrix_rows(matrix: np.ndarray, scale: np.ndarray, transposed: bool) -> np.ndarray:
    """Scale input feature k of ``x @ B`` (or ``x @ B.T`` when transposed)."""
    return scale_matrix_columns(matrix, scale, not transposed)


def matrix_input_shift_response(matrix: np.ndarray, shift: np.ndarray, transposed: bool) -> np.ndarray:
    """shift @ B (or shift @ B.T): what a constant input offset adds to every output row."""
    b = np.asarray(matrix, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64)
    return b @ t if transposed else t @ b


def _where(values: np.ndarray, flat_index: int, channel_axis: int | None) -> str:
    if channel_axis is None or values.ndim == 0:
        return f"at index {flat_index}"
    return f"at channel {np.unravel_index(flat_index, values.shape)[channel_axis]}"


def cast_exact(values: np.ndarray, dtype: np.dtype, what: str, channel_axis: int | None = 0) -> np.ndarray:
    """Cast float64 results back to the model's dtype, refusing overflow and non-finite values.

    The cast is checked on its result, by its smallest and largest value (no array the size of the
    weight is allocated for the check); only a result that reaches the dtype's limits or is not finite
    is looked at again in float64, to refuse it or to name what is wrong. Float types are numpy's and
    ml_dtypes' (bfloat16, the float8 types), whose largest values numpy's ``finfo`` does not know.
    """
    values = np.asarray(values, dtype=np.float64)
    dtype = np.dtype(dtype)
    limit = _largest(dtype)
    if limit is None:  # an integer type
        if not np.isfinite(values).all():
            _refuse_non_finite(values, what, channel_axis)
        return values.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
    if cast.size == 0:
        return cast
    low, high = float(cast.min()), float(cast.max())  # nan if any value is nan
    if -limit < low and high < limit:
        return cast
    if not np.isfinite(values).all():
        _refuse_non_finite(values, what, channel_axis)
    over = np.flatnonzero(np.abs(values) > limit)
    if over.size:
        i = int(over[0])
        raise FoldMathError(
            f"{what} would overflow {dtype.name} {_where(values, i, channel_axis)}"
            f" (|value| {abs(values.flat[i]):.4g} > {limit:.4g})"
        )
    return cast  # values at the largest finite value itself


def _largest(dtype: np.dtype) -> float | None:
    """The largest finite value of a float type (numpy's or ml_dtypes'); None for any other type."""
    try:
        return float(ml_dtypes.finfo(dtype).max)
    except ValueError:
        return None


def _refuse_non_finite(values: np.ndarray, what: str, channel_axis: int | None) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    raise FoldMathError(f"{what} is not finite {_where(values, int(bad[0]), channel_axis)}")
