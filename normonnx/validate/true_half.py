"""True half arithmetic: onnx's ReferenceEvaluator on an fp16 model, every op computed by numpy in the
type its tensors have (float16 sums, float16 products), with the spec's stash_type honoured.

The half-faithful evaluator (``validate.faithful``) computes each op in float32 and rounds what it
stores, as GPU kernels do; this one is stricter and independent of normonnx's own code, which is what
the benchmark and the tests judge the written models by. onnx 1.23's reference LayerNormalization and
RMSNormalization compute in the input type whatever ``stash_type`` says (the spec computes the
statistics in float32 for stash_type=1): the spec's versions replace them here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


def _stash(stash_type: int | None, x: np.ndarray) -> np.dtype:
    """The type the statistics are computed in: float32 for stash_type 1 (the default), else the input's."""
    return np.dtype(np.float32) if stash_type in (None, 1) else x.dtype


class RMSNormalization(OpRun):
    """RMSNormalization-23 as the spec defines it: with stash_type=1 the mean of squares in float32 (the
    evaluator picks an op's class by its name and ``op_domain``)."""

    op_domain = ""

    def _run(self, x, scale, axis=None, epsilon=None, stash_type=None):
        axis = -1 if axis is None else int(axis)
        axis = axis + x.ndim if axis < 0 else axis
        stash = _stash(stash_type, x)
        wide = x.astype(stash)
        mean_square = np.mean(wide * wide, axis=tuple(range(axis, x.ndim)), keepdims=True)
        normalized = wide / np.sqrt(mean_square + np.asarray(1e-5 if epsilon is None else epsilon, stash))
        normalized = normalized.astype(x.dtype)
        return ((normalized * scale).astype(x.dtype),)


class LayerNormalization(OpRun):
    """LayerNormalization-17 as the spec defines it: with stash_type=1 the mean and variance in float32, and
    the Mean and InvStdDev outputs in float32."""

    op_domain = ""

    def _run(self, x, scale, bias=None, axis=None, epsilon=None, stash_type=None):
        axis = -1 if axis is None else int(axis)
        axis = axis + x.ndim if axis < 0 else axis
        stash = _stash(stash_type, x)
        wide = x.astype(stash)
        axes = tuple(range(axis, x.ndim))
        mean = np.mean(wide, axis=axes, keepdims=True)
        centered = wide - mean
        variance = np.mean(centered * centered, axis=axes, keepdims=True)
        inv_std = 1 / np.sqrt(variance + np.asarray(1e-5 if epsilon is None else epsilon, stash))
        y = (centered * inv_std).astype(x.dtype) * scale
        if bias is not None:
            y = y + bias
        return y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash)


def true_half_outputs(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``model``'s outputs (as float32) on each feed, float inputs given in the type the model declares."""
    evaluator = ReferenceEvaluator(model, new_ops=[LayerNormalization, RMSNormalization])
    declared = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    names = [o.name for o in model.graph.output]
    results = []
    with np.errstate(all="ignore"):  # an overflow is the finding, reported as inf, not a warning
        for feed in feeds:
            typed = {k: v.astype(declared[k]) if v.dtype.kind == "f" else v for k, v in feed.items() if k in declared}
            outs = evaluator.run(None, typed)
            results.append({n: np.asarray(o).astype(np.float32) for n, o in zip(names, outs, strict=True)})
    return results
