"""Latency of deployed models, measured as ratios side by side.

Every model gets the same session options; after warm-up the models run in
turns, each round in a new seeded order (A, B, B, A, ...), so that drift in machine load and what one
model leaves in the caches for the next hit all of them alike.
A speed-up is reported with its spread: the ratio of each round's pair,
summarized by median and 10th/90th percentiles.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import onnx

from normonnx.results import LatencyStats, Speedup
from normonnx.validate.runner import SessionConfig, session


def _stats(name: str, times: list[float], batch: int) -> LatencyStats:
    t = np.asarray(times) * 1e3
    median = float(np.median(t))
    return LatencyStats(
        name,
        len(t),
        median,
        float(np.percentile(t, 10)),
        float(np.percentile(t, 90)),
        float(t.mean()),
        batch / (median / 1e3) if median else 0.0,
        [float(x) for x in t],
    )


def measure(
    models: dict[str, onnx.ModelProto | str | os.PathLike],
    feeds: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]],
    config: SessionConfig | None = None,
    *,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float = 60.0,
) -> dict[str, LatencyStats]:
    """Interleaved latency of each model on the same feeds (one dict, or one per model in order).

    The default configuration is the deployed one (CPU, ORT_ENABLE_ALL) without spin-waiting
    threads, which would steal cores from the other model's turn.
    """
    names = list(models)
    config = config or SessionConfig(optimize=True, spin=False)
    sessions = {n: session(models[n], config) for n in names}
    per_model = list(feeds) if isinstance(feeds, (list, tuple)) else [feeds] * len(names)
    inputs = dict(zip(names, per_model, strict=True))
    for _ in range(warmup):
        for n in names:
            sessions[n].run(None, inputs[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    deadline = time.perf_counter() + max_seconds
    order = np.random.default_rng(0)
    for _ in range(runs):
        # Each round in a new seeded order: a model always run right after the same other one would carry
        # that one's effect on the caches (measured: 2% between two identical int8 models after a float32 one).
        for n in (names[i] for i in order.permutation(len(names))):
            start = time.perf_counter()
            sessions[n].run(None, inputs[n])
            times[n].append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times[names[0]]) >= 5:
            break
    batch = max((int(np.shape(v)[0]) if np.ndim(v) else 1 for v in per_model[0].values()), default=1)
    return {n: _stats(n, times[n], batch) for n in names}


def speedup(stats: dict[str, LatencyStats], baseline: str, candidate: str) -> Speedup:
    """Per-round ratio baseline/candidate (rounds are interleaved, so each pair shares machine conditions)."""
    a, b = np.asarray(stats[baseline].times_ms), np.asarray(stats[candidate].times_ms)
    ratio = a / b
    return Speedup(
        baseline, candidate, float(np.median(ratio)), float(np.percentile(ratio, 10)), float(np.percentile(ratio, 90))
    )
