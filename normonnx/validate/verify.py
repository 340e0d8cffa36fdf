"""The one verification driver: a rewritten model against its original, on seeded inputs.

Both models run on onnxruntime CPU with graph optimizations off, on the same
seeded inputs, and are compared by ``parity.compare``. Models given as paths
run in isolated child processes (a model that crashes onnxruntime cannot take
normonnx down), side by side when they are small; models in memory run here.
When the gate fails, the reference is also run with onnxruntime's own
optimizations to measure its float32 noise floor (see validate.parity).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from normonnx.errors import NormonnxError
from normonnx.validate.parity import Gate, ParityResult, compare, rejudge_with_noise
from normonnx.validate.runner import SessionConfig

if TYPE_CHECKING:
    import onnx

# Below this much weight on disk (both models together), the two isolated runs go side by side.
CONCURRENT_PARITY_BYTES = 1 << 30


def onnx_outputs(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    feeds: list[dict[str, np.ndarray]],
    config: SessionConfig | None = None,
    *,
    label: str | None = None,
    timeout: float | None = None,
    isolated: bool = True,
) -> list[dict[str, np.ndarray]]:
    """A model's outputs for every feed, the one way normonnx runs a model for its outputs.

    A path or serialized bytes run in an isolated child process (``label`` names it in
    messages); a ModelProto already validated in memory runs in this process, and so does
    everything when ``isolated`` is False (a many-file worker, itself an isolated process).
    """
    config = config or SessionConfig()
    if isolated and isinstance(model, str | os.PathLike | bytes):
        from normonnx.isolation import DEFAULT_TIMEOUT, call_isolated
        from normonnx.validate import execute

        source = model if isinstance(model, bytes) else str(model)
        name = label or (str(model) if not isinstance(model, bytes) else "model")
        return call_isolated(
            execute.run_outputs,
            source,
            feeds,
            config,
            label=name,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
    from normonnx.validate.runner import run, session

    if isinstance(model, bytes):
        import onnx

        model = onnx.ModelProto.FromString(model)
    sess = session(model, config)
    wanted = {i.name for i in sess.get_inputs()}
    return [run(sess, {k: v for k, v in f.items() if k in wanted}) for f in feeds]


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
    specs = reference_proto
    if specs is None:
        specs = load_model(reference, load_weights=False) if isinstance(reference, str | os.PathLike) else reference
    # A model in memory runs in this process (as onnx_outputs runs it); a file, in a child.
    probed = probe_shapes(
        specs,
        reference,
        shapes,
        label=f"{_name(reference)} (the original)",
        isolated=isolated and isinstance(reference, str | os.PathLike),
    )
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
    if side_by_side:
        with ThreadPoolExecutor(2) as pool:
            refs, cands = pool.map(lambda m: onnx_outputs(m, feeds, config), (reference, candidate))
    else:
        refs, cands = (onnx_outputs(m, feeds, config, isolated=isolated) for m in (reference, candidate))
    result = compare(refs, cands, default=gate)
    result.inputs = probed
    if not result.passed and noise_floor and gate is None:
        result = rejudge_with_noise(result, _own_error(reference, refs, feeds, sharing, isolated))
    return result


def _own_error(reference, refs, feeds, sharing: dict, isolated: bool) -> ParityResult:
    """How far the original's own run is from itself: the larger of what onnxruntime's optimizer
    changes and how far it is from a float64 evaluation (0 from the optimizer alone when it has
    nothing to fuse, which made an exact rewrite look wrong)."""
    from normonnx.validate import execute

    noisy = onnx_outputs(reference, feeds, SessionConfig(optimize=True, **sharing), isolated=isolated)
    floor = compare(refs, noisy)
    source = execute.runnable_source(reference)
    exact = None
    if source is not None:
        if isolated:
            from normonnx.isolation import call_isolated

            try:
                exact = call_isolated(execute.run_float64, source, feeds, label="float64 evaluation", timeout=300)
            except NormonnxError:
                exact = None
        else:
            exact = execute.run_float64(source, feeds)
    if exact is not None:
        wide = compare(exact, refs)
        for o, w in zip(floor.outputs, wide.outputs, strict=False):
            if np.isfinite(w.max_abs) and w.max_abs > o.max_abs:
                o.max_abs = w.max_abs
    return floor


def _name(model) -> str:
    return str(model) if isinstance(model, str | os.PathLike) else (model.graph.name or "model")
