"""True half arithmetic: onnx's ReferenceEvaluator on an fp16 model, every op computed by numpy in the
type its tensors have (float16 sums, float16 products), with the spec's stash_type honoured.

The half-faithful evaluator (``validate.faithful``) computes each op in float32 and rounds what it
stores, as GPU kernels do; this one is stricter and independent of normonnx's own code, which is what
the benchmark and the tests judge the written models by. onnx 1.23's reference RMSNormalization
squares its input in the input type whatever ``stash_type`` says (the spec computes the statistics in
float32 for stash_type=1): the spec's version replaces it here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


class RMSNormalization(OpRun):
    """RMSNormalization-23 as the spec defines it: with stash_type=1 the mean of squares in float32 (the
    evaluator picks an op's class by its name and ``op_domain``)."""

    op_domain = ""

    def _run(self, x, scale, axis=None, epsilon=None, stash_type=None):
        axis = -1 if axis is None else int(axis)
        axis = axis + x.ndim if axis < 0 else axis
        stash = np.float32 if stash_type in (None, 1) else x.dtype
        wide = x.astype(stash)
        mean_square = np.mean(wide * wide, axis=tuple(range(axis, x.ndim)), keepdims=True)
        eps = stash(1e-5 if epsilon is None else epsilon)
        normalized = (wide / np.sqrt(mean_square + eps)).astype(x.dtype)
        return ((normalized * scale).astype(x.dtype),)


def true_half_outputs(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``model``'s outputs (as float32) on each feed, float inputs given in the type the model declares."""
    evaluator = ReferenceEvaluator(model, new_ops=[RMSNormalization])
    declared = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    names = [o.name for o in model.graph.output]
    results = []
    with np.errstate(all="ignore"):  # an overflow is the finding, reported as inf, not a warning
        for feed in feeds:
            typed = {k: v.astype(declared[k]) if v.dtype.kind == "f" else v for k, v in feed.items() if k in declared}
            outs = evaluator.run(None, typed)
            results.append({n: np.asarray(o).astype(np.float32) for n, o in zip(names, outs, strict=True)})
    return results
