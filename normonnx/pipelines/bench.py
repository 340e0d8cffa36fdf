"""``normonnx bench``: latency of a deployed model, optionally against another, as ratios.

Both models get identical session options (the deployment setting:
ORT_ENABLE_ALL on the chosen provider), the same seeded inputs, warm-up, and
then run in turns inside one isolated process (see validate/latency.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from normonnx.errors import UnusableInputError
from normonnx.reports.progress import phase
from normonnx.results import BenchReport
from normonnx.validate.inputs import check_shape_names, input_specs
from normonnx.validate.latency import speedup
from normonnx.validate.probe import DEPLOYMENT_BATCH_SIZES, probe_shapes, probed_feeds
from normonnx.validate.runner import SessionConfig, require_runtime
from normonnx.validate.runners import RunOptions, measure_interleaved

log = logging.getLogger(__name__)


def _labels(model: str, vs: str | None) -> tuple[str, str | None]:
    a = Path(model).name
    if vs is None:
        return a, None
    b = Path(vs).name
    return (a, b) if a != b else (f"{a} ({Path(model).parent.name or '.'})", f"{b} ({Path(vs).parent.name or '.'})")


# Beyond these, a median is not a measurement: p90/p10 of one model's times, or of the per-round speed-ups.
TRUSTED_SPREAD = 1.5


def untrusted_spread(report: BenchReport) -> list[str]:
    """One note when the timings spread too wide to trust, saying how to get a stable number."""
    wide = [f"{name} p90/p10 {st.p90_ms / st.p10_ms:.1f}" for name, st in report.stats.items()
            if st.p10_ms > 0 and st.p90_ms / st.p10_ms > TRUSTED_SPREAD]  # fmt: skip
    sp = report.speedup
    if sp is not None and sp.p10 > 0 and sp.p90 / sp.p10 > TRUSTED_SPREAD:
        wide.append(f"speed-up p10 {sp.p10:.3f} to p90 {sp.p90:.3f}")
    if not wide:
        return []
    return [
        f"the spread is too wide to trust ({'; '.join(wide)}): the machine was busy or the model too short to time."
        " For a stable number close other programs, pass --threads 1 (or the cores you deploy with) and raise --runs"
    ]


def bench(
    model: str | os.PathLike,
    vs: str | os.PathLike | None = None,
    *,
    provider: str = "cpu",
    runtime: str = "onnxruntime",
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
    max_seconds: float = 120,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    timeout: float = 900,
) -> BenchReport:
    """Latency of ``model`` (and of ``vs``); the speed-up is vs's time over model's (> 1: model is faster)."""
    from normonnx.graph.modelio import load_model

    start = time.perf_counter()
    where = require_runtime(runtime, provider)
    paths = {str(model): load_model(model, load_weights=False)}
    if vs is not None:
        paths[str(vs)] = load_model(vs, load_weights=False)
    label_a, label_b = _labels(str(model), None if vs is None else str(vs))
    labels = {label_a: str(model)} | ({label_b: str(vs)} if label_b else {})
    check_shape_names(shapes, input_specs(next(iter(paths.values()))))
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UnusableInputError(
            f"bench needs runs >= 1, warmup >= 0 and threads >= 1 (got {runs}, {warmup}, {threads})"
        )
    options = RunOptions(timeout=timeout)  # every run in a child process
    first = next(iter(paths.values()))
    phase("choose input shapes")
    # A deployment latency is batch 1: a dynamic batch is timed there unless the model only runs at another.
    probed = probe_shapes(first, options.runner(str(model), label=str(model)), shapes, DEPLOYMENT_BATCH_SIZES)
    base = probed_feeds(input_specs(first), probed, 1, seed)[0]
    # The same values for both models, cast to each model's input dtypes.
    feeds = [
        {s.name: np.asarray(base[s.name]).astype(s.dtype) for s in input_specs(p) if s.name in base}
        for p in paths.values()
    ]
    config = SessionConfig(runtime=runtime, provider=provider, optimize=True, threads=threads, spin=False)
    runners = {name: options.runner(path, config, label=name) for name, path in labels.items()}
    log.info("bench %s: %d warm-up and %d timed runs each, interleaved", ", ".join(labels), warmup, runs)
    phase(f"timing, {warmup} warm-up and {runs} runs each, interleaved")
    stats = measure_interleaved(
        runners, feeds, warmup=warmup, runs=runs, max_seconds=max_seconds, label=f"bench {', '.join(labels)}"
    )
    report = BenchReport(labels, where, threads, stats, input_shapes={k: list(np.shape(v)) for k, v in base.items()})
    report.shapes_guessed = bool(probed.guessed)
    report.cores = os.cpu_count()
    if label_b:
        report.speedup = speedup(stats, label_b, label_a)
    report.notes = untrusted_spread(report)
    report.seconds = time.perf_counter() - start
    return report
