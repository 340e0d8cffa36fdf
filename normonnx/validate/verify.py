"""The one verification driver: a rewritten model against its original, on seeded inputs.

Both models run on onnxruntime CPU with graph optimizations off, on the same
seeded inputs, and are compared by ``parity.compare``. Each gets a runner
(validate.runners): models given as paths run in the warm isolated worker (a
model that crashes onnxruntime cannot take normonnx down); models in memory
run here. When the gate fails, the reference is also run with onnxruntime's
own optimizations to measure its float32 noise floor (see validate.parity).

The original's half of the proof (its input shapes chosen, its outputs
computed) does not need the rewritten model: a command that writes a file
starts it (``start_original_run``) as soon as it has loaded the original, and
the worker runs it on another core while this process folds and writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from normonnx.errors import NormonnxError
from normonnx.isolation import in_background
from normonnx.reports.progress import phase
from normonnx.results import ParityResult, ProbedShapes
from normonnx.validate.parity import Gate, compare, rejudge_with_noise
from normonnx.validate.runner import SessionConfig
from normonnx.validate.runners import Feed, OnnxruntimeRunner, Outputs, RunOptions, model_label

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# Below this much weight on disk (both models together), the two isolated runs go side by side.
CONCURRENT_PARITY_BYTES = 1 << 30


@dataclass
class _OriginalHalf:
    """The original's half of a proof: the shapes chosen, the feeds, its runner and its outputs."""

    probed: ProbedShapes
    feeds: list[Feed]
    runner: OnnxruntimeRunner
    outputs: list[Outputs]


def _sharing() -> dict:
    """Session settings for a run that shares the cores with another (the other model, or this process's
    fold): half the cores each, and no spin-waiting threads, which would steal the cores the other is on."""
    return {"threads": max(1, (os.cpu_count() or 1) // 2), "spin": False}


def _shapes_and_feeds(
    specs: onnx.ModelProto, original: OnnxruntimeRunner, shapes: dict[str, tuple[int, ...]] | None, samples: int
) -> tuple[ProbedShapes, list[Feed]]:
    from normonnx.validate.inputs import input_specs
    from normonnx.validate.probe import probe_shapes, probed_feeds

    probed = probe_shapes(specs, original, shapes)
    return probed, probed_feeds(input_specs(specs), probed, samples)


# The original beside the fold and the output after it run with the same settings (the same kernels, split
# the same way: an unchanged computation agrees to the bit): every core, and no spin-waiting threads, which
# would take the cores the fold computes on.
_BESIDE_THE_FOLD = SessionConfig(optimize=False, threads=os.cpu_count() or 1, spin=False)


class OriginalRun:
    """The original's half of a proof, computed in the warm worker from a background thread, so that it runs
    while this process folds (``start_original_run``). ``result`` waits for it and raises what it raised."""

    def __init__(
        self, reference: str | os.PathLike, specs: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None,
        samples: int,
    ) -> None:  # fmt: skip
        self.reference, self.shapes, self.samples = reference, dict(shapes or {}), samples
        self._specs = specs
        self.seconds = 0.0
        self._half = in_background(self._run, name="normonnx-original-run")

    def _run(self) -> _OriginalHalf:
        began = time.perf_counter()
        try:
            options = RunOptions(isolated=True)
            label = f"{model_label(self.reference)} (the original)"
            probed, feeds = _shapes_and_feeds(self._specs, options.runner(self.reference, label=label), self.shapes,
                                              self.samples)  # fmt: skip
            runner = options.runner(self.reference, _BESIDE_THE_FOLD, label=label)
            return _OriginalHalf(probed, feeds, runner, runner.infer(feeds))
        finally:
            self.seconds = time.perf_counter() - began

    def serves(self, reference: object, shapes: dict[str, tuple[int, ...]] | None, samples: int) -> bool:
        """Whether this run is the original half of the proof asked for (same file, shapes and input count)."""
        same_file = isinstance(reference, str | os.PathLike) and os.fspath(reference) == os.fspath(self.reference)
        return same_file and dict(shapes or {}) == self.shapes and samples == self.samples

    def result(self) -> _OriginalHalf:
        try:
            return self._half.result()
        finally:
            log.info("the original's run beside the fold took %.2f s", self.seconds)


def start_original_run(
    reference: str | os.PathLike,
    specs: onnx.ModelProto,
    *,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
    disk_size: int | None = None,
) -> OriginalRun | None:
    """The original half of ``verify_parity(reference, ...)`` started now, in the warm worker, or None where it
    would not overlap anything (one core; or a model so large that its run and this process's rewrite should
    not hold memory at once). ``specs``: the original already in memory (its inputs are read from it).
    ``disk_size``: what ``reference`` and its weight files hold on disk, when the caller knows it."""
    from normonnx.graph.modelio import disk_bytes
    from normonnx.isolation import in_isolated_child

    if in_isolated_child() or (os.cpu_count() or 1) < 2:
        return None
    if 2 * (disk_bytes(reference) if disk_size is None else disk_size) >= CONCURRENT_PARITY_BYTES:
        return None
    return OriginalRun(reference, specs, shapes, samples)


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
    original: OriginalRun | None = None,
    beside: Callable[[], None] | None = None,
) -> ParityResult:
    """``candidate`` against ``reference``; ``gate`` replaces the default one (and then no noise floor applies).

    ``reference_proto`` (the reference already in memory) and ``candidate_bytes`` (what a
    candidate path holds on disk) spare parsing those files again. ``original``: the reference's half,
    started earlier by ``start_original_run`` (used when it is the half this proof needs). ``beside``: work
    for this process while the worker runs the candidate (onnx's checker on the candidate's file); an
    exception from it is raised instead of the proof's outcome.
    """
    from normonnx.graph.modelio import disk_bytes, load_model

    on_disk = isolated and isinstance(reference, str | os.PathLike) and isinstance(candidate, str | os.PathLike)
    options = RunOptions(isolated=isolated)
    if on_disk and original is not None and original.serves(reference, shapes, samples):
        phase(f"original run, {samples} input sets (started beside the fold)")
        half = original.result()
        feeds, ref, refs = half.feeds, half.runner, half.outputs
        phase(f"output run, {len(feeds)} input sets")
        cand = options.runner(candidate, ref.config, label=model_label(candidate))
        cands = cand.infer(feeds, meanwhile=beside)
        return _judged(compare(refs, cands, default=gate), half.probed, ref, reference, refs, feeds, isolated,
                       noise_floor and gate is None)  # fmt: skip
    specs = reference_proto
    if specs is None:
        specs = load_model(reference, load_weights=False) if isinstance(reference, str | os.PathLike) else reference
    phase("choose input shapes")
    probed, feeds = _shapes_and_feeds(
        specs, options.runner(reference, label=f"{model_label(reference)} (the original)"), shapes, samples
    )
    side_by_side = False
    if on_disk:
        size = disk_bytes(reference) + (disk_bytes(candidate) if candidate_bytes is None else candidate_bytes)
        side_by_side = (os.cpu_count() or 1) > 1 and size < CONCURRENT_PARITY_BYTES
    config = SessionConfig(optimize=False, **(_sharing() if side_by_side else {}))
    ref, cand = (options.runner(m, config) for m in (reference, candidate))
    if side_by_side:  # both in the one warm worker, at once
        phase(f"original and output run side by side, {len(feeds)} input sets")
        refs, cands = ref.infer_beside(cand, feeds, meanwhile=beside)
    else:
        if beside is not None:
            beside()
        phase(f"original run, {len(feeds)} input sets")
        refs = ref.infer(feeds)
        phase(f"output run, {len(feeds)} input sets")
        cands = cand.infer(feeds)
    return _judged(compare(refs, cands, default=gate), probed, ref, reference, refs, feeds, isolated,
                   noise_floor and gate is None)  # fmt: skip


def _judged(
    result: ParityResult, probed: ProbedShapes, ref: OnnxruntimeRunner, reference, refs, feeds, isolated: bool,
    noise_floor: bool,
) -> ParityResult:  # fmt: skip
    """The comparison with the shapes it was made at, judged again against the original's own noise if it
    failed (and the default gate applies)."""
    result.inputs = probed
    if not result.passed and noise_floor:
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
