"""The one verification driver: a rewritten model against its original, on seeded inputs.

Both models run on onnxruntime CPU with graph optimizations off, on the same
seeded inputs, and are compared by ``parity.compare``. Each gets a runner
(validate.runners): models given as paths run in isolated child processes (a
model that crashes onnxruntime cannot take normonnx down), side by side when
they are small; models in memory run here. When the gate fails, the reference
is also run with onnxruntime's own optimizations to measure its float32 noise
floor (see validate.parity).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from normonnx.errors import NormonnxError
from normonnx.reports.progress import phase
from normonnx.results import ParityResult
from normonnx.validate.parity import Gate, compare, rejudge_with_noise
from normonnx.validate.runner import SessionConfig
from normonnx.validate.runners import OnnxruntimeRunner, RunOptions, model_label

if TYPE_CHECKING:
    import onnx

# Below this much weight on disk (both models together), the two isolated runs go side by side.
CONCURRENT_PARITY_BYTES = 1 << 30


def verify_parity(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate: onnx.ModelProto | str | os.PathLike,
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
    gate: Gate | None = None,
    noise_floor: bool = True,
    reference_proto: onnx.ModelProto | None = None,
    candidate_bytes: int | None = None,
    isolated: bool = True,
) -> ParityResult:
    """``candidate`` against ``reference``; ``gate`` replaces the default one (and then no noise floor applies).

    ``reference_proto`` (the reference already in memory) and ``candidate_bytes`` (what a
    candidate path holds on disk) spare parsing those files again.
    """
    from normonnx.graph.modelio import disk_bytes, load_model
    from normonnx.validate.inputs import input_specs
    from normonnx.validate.probe import probe_shapes, probed_feeds

    on_disk = isolated and isinstance(reference, str | os.PathLike) and isinstance(candidate, str | os.PathLike)
    options = RunOptions(isolated=isolated)
    specs = reference_proto
    if specs is None:
        specs = load_model(reference, load_weights=False) if isinstance(reference, str | os.PathLike) else reference
    original = options.runner(reference, label=f"{model_label(reference)} (the original)")
    phase("choose input shapes")
    probed = probe_shapes(specs, original, shapes)
    feeds = probed_feeds(input_specs(specs), probed, samples)
    sharing: dict = {}
    side_by_side = False
    if on_disk:
        cores = os.cpu_count() or 1
        size = disk_bytes(reference) + (disk_bytes(candidate) if candidate_bytes is None else candidate_bytes)
        side_by_side = cores > 1 and size < CONCURRENT_PARITY_BYTES
        # Side by side, each run gets half the cores and no spin-waiting threads, which
        # would otherwise steal the cores the other run is computing on.
        if side_by_side:
            sharing = {"threads": max(1, cores // 2), "spin": False}
    config = SessionConfig(optimize=False, **sharing)
    ref, cand = (options.runner(m, config) for m in (reference, candidate))
    if side_by_side:  # both in the one warm worker, at once
        phase(f"original and output run side by side, {len(feeds)} input sets")
        refs, cands = ref.infer_beside(cand, feeds)
    else:
        phase(f"original run, {len(feeds)} input sets")
        refs = ref.infer(feeds)
        phase(f"output run, {len(feeds)} input sets")
        cands = cand.infer(feeds)
    result = compare(refs, cands, default=gate)
    result.inputs = probed
    if not result.passed and noise_floor and gate is None:
        phase("the original's own noise")
        result = rejudge_with_noise(result, _own_error(ref, reference, refs, feeds, isolated))
    return result


def _own_error(ref: OnnxruntimeRunner, reference, refs, feeds, isolated: bool) -> ParityResult:
    """How far the original's own run is from itself: the larger of what onnxruntime's optimizer
    changes and how far it is from a float64 evaluation (0 from the optimizer alone when it has
    nothing to fuse, which made an exact rewrite look wrong)."""
    from normonnx.validate.execute import runnable_source

    floor = compare(refs, ref.derived(optimize=True).infer(feeds))
    # In a child even for a model in memory (double kernels are onnxruntime's least used), when it can cross.
    source = runnable_source(reference)
    exact = None
    if source is not None:
        evaluation = RunOptions(isolated=isolated, timeout=300).runner(source, label="float64 evaluation")
        try:
            exact = evaluation.float64(feeds)
        except NormonnxError:
            exact = None
    if exact is not None:
        wide = compare(exact, refs)
        for o, w in zip(floor.outputs, wide.outputs, strict=False):
            if np.isfinite(w.max_abs) and w.max_abs > o.max_abs:
                o.max_abs = w.max_abs
    return floor
