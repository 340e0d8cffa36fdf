"""Every operation a runner performs on a model: sessions, feeds, outputs, intermediates, timings.

``validate.runners`` calls these functions in this process or in an isolated child (functions
travel to a child by reference, so this module is the one list of what a child is asked to run).
Models come as validated paths, as serialized bytes that hold no external-data reference, or, in
this process, as a validated ModelProto; results come back as numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from normonnx.validate.runner import SessionConfig, run, session

if TYPE_CHECKING:
    import onnx

    from normonnx.results import LatencyStats

ModelSource = str | os.PathLike | bytes


def _model(source: ModelSource | onnx.ModelProto) -> onnx.ModelProto | str:
    """A path stays a path: onnx is imported only for bytes (it is slow to import in every child).
    A model already in memory (a caller that runs onnxruntime in its own process) passes as it is."""
    if isinstance(source, bytes):
        import onnx

        return onnx.ModelProto.FromString(source)
    if isinstance(source, str | os.PathLike):
        return str(source)
    return source


def _proto(source: ModelSource | onnx.ModelProto) -> onnx.ModelProto:
    """The model as a proto (bytes parsed, a path loaded and validated, a proto as it is)."""
    import onnx

    from normonnx.graph.modelio import load_model

    if isinstance(source, bytes):
        return onnx.ModelProto.FromString(source)
    return load_model(source) if isinstance(source, str | os.PathLike) else source


def fits_a_message(model: onnx.ModelProto) -> bool:
    """Whether a child can get ``model`` as bytes: no external data, under protobuf's 2 GiB."""
    from normonnx.graph.modelio import has_external_data, over_protobuf_limit

    return not has_external_data(model) and not over_protobuf_limit(model)


def runnable_source(model: onnx.ModelProto | str | os.PathLike | bytes) -> str | bytes | None:
    """What a child can load ``model`` from: its path, its bytes, or the bytes of a proto that fits one
    message (else None)."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    if isinstance(model, bytes):
        return model
    return model.SerializeToString() if fits_a_message(model) else None


def first_that_runs(
    source: ModelSource | onnx.ModelProto, makers: Sequence[Callable[[], dict[str, np.ndarray]]], config: SessionConfig
) -> tuple[int, list[str]]:
    """(index of the first feed the model runs on, or -1; one error line per feed that failed). Each feed
    is made here, only when its turn comes (validate.probe sends how to make it, not the arrays)."""
    from normonnx.errors import first_line

    sess = session(_model(source), config)
    errors = []
    for k, make in enumerate(makers):
        try:
            run(sess, make())
            return k, errors
        except Exception as e:  # onnxruntime says why in its own words; we only need the first line
            errors.append(first_line(e))
    return -1, errors


def run_outputs(
    source: ModelSource, feeds: Sequence[dict[str, np.ndarray]], config: SessionConfig
) -> list[dict[str, np.ndarray]]:
    """The model's outputs for every feed."""
    sess = session(_model(source), config)
    wanted = {i.name: i.type for i in sess.get_inputs()}
    return [run(sess, {k: v for k, v in f.items() if k in wanted}) for f in feeds]


def run_side_by_side(
    first: ModelSource, second: ModelSource, feeds: Sequence[dict[str, np.ndarray]], config: SessionConfig
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Both models' outputs for every feed, the two runs at once on two threads (onnxruntime releases the
    GIL): a verification's reference and candidate in one warm worker, each on half the cores."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda source: run_outputs(source, feeds, config), (first, second))
    return a, b


def run_intermediates(
    source: ModelSource, feeds: dict[str, np.ndarray], names: Sequence[str], config: SessionConfig, chunk: int = 400
) -> dict[str, np.ndarray]:
    """Values of the named intermediate tensors (floats only), in chunks to bound memory."""
    base = _proto(source)
    declared = [o.name for o in base.graph.output]
    values: dict[str, np.ndarray] = {}
    for start in range(0, len(names), chunk):
        part = [n for n in names[start : start + chunk] if n not in declared]
        sess = session(_with_outputs(base, part), config)
        out = run(sess, feeds, [*part, *declared])
        values.update({k: v for k, v in out.items() if np.asarray(v).dtype.kind == "f"})
    return values


def _with_outputs(base: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(base)
    declared = {o.name for o in base.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in declared)
    return model


def compare_intermediates(
    cand_source: ModelSource,
    ref_source: ModelSource,
    cand_feed: dict[str, np.ndarray],
    ref_feed: dict[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    cand_config: SessionConfig,
    gate=None,
    ref_config: SessionConfig = SessionConfig(),
    chunk: int = 200,
) -> list:
    """Each (candidate tensor, reference tensor) pair compared (``parity.compare_output``; None when the
    two are not both floating tensors), one chunk of tensors at a time: only the results come back, and
    no more than a chunk's values are held at once. The reference runs with ``ref_config`` (by default
    optimizations off)."""
    from normonnx.validate.parity import compare_output

    cand_base, ref_base = _proto(cand_source), _proto(ref_source)
    results: list = []
    for start in range(0, len(pairs), chunk):
        part = list(pairs[start : start + chunk])
        got = run(session(_with_outputs(cand_base, [c for c, _ in part]), cand_config), cand_feed, [c for c, _ in part])
        want = run(session(_with_outputs(ref_base, [r for _, r in part]), ref_config), ref_feed, [r for _, r in part])
        for c, r in part:
            a, b = np.asarray(got[c]), np.asarray(want[r])
            floats = a.dtype.kind == "f" and b.dtype.kind == "f"
            results.append(compare_output(c, [b], [a], gate) if floats and a.shape == b.shape else None)
        del got, want
    return results


def tensor_ranges(
    source: ModelSource,
    feeds: Sequence[dict[str, np.ndarray]],
    names: Sequence[str],
    config: SessionConfig,
    chunk: int = 400,
) -> dict[str, float]:
    """The largest finite |value| each named floating tensor takes over ``feeds`` (a calibration run);
    values are reduced here, a chunk of tensors at a time, and only the peaks go back."""
    base = _proto(source)
    peaks: dict[str, float] = {}
    for start in range(0, len(names), chunk):
        part = list(names[start : start + chunk])
        sess = session(_with_outputs(base, part), config)
        for feed in feeds:
            for name, value in run(sess, feed, part).items():
                value = np.asarray(value)
                if value.dtype.kind != "f":
                    continue
                finite = np.abs(value[np.isfinite(value)])
                peaks[name] = max(peaks.get(name, 0.0), float(finite.max()) if finite.size else 0.0)
    return peaks


def class_predictions(
    source: ModelSource | onnx.ModelProto, data: np.ndarray, batch: int, config: SessionConfig
) -> tuple[list[np.ndarray], int, bool]:
    """(argmax over axis 1 of the first output, per batch of ``data``; the batch size used; whether the
    model fixes it: then a last batch that ``data`` does not fill is left out)."""
    sess = session(_model(source), config)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    static = isinstance(fixed, int) and fixed > 0
    step = fixed if static else batch
    predictions = []
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        if len(chunk) != step and static:
            break
        predictions.append(np.asarray(sess.run(None, {name: chunk})[0]).argmax(axis=1))
    return predictions, step, static


def latency(
    sources: Mapping[str, ModelSource | onnx.ModelProto],
    feeds: Sequence[dict[str, np.ndarray]],
    config: SessionConfig,
    warmup: int,
    runs: int,
    max_seconds: float,
) -> dict[str, LatencyStats]:
    """Interleaved latency of every model on its feeds (validate.latency), all in this one process."""
    from normonnx.validate.latency import measure

    models = {name: _model(source) for name, source in sources.items()}
    return measure(models, list(feeds), config, warmup=warmup, runs=runs, max_seconds=max_seconds)


def applied_transformers(source: ModelSource, config: SessionConfig) -> list[str]:
    """The onnxruntime graph transformers that changed this model when a session was made for it, in
    the order they first did (read from onnxruntime's verbose log, which goes to this process's stderr;
    a session that fails to build still names those that ran before it failed)."""
    import re
    import tempfile
    from dataclasses import replace

    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            session(_model(source), replace(config, optimize=True, verbose=True))
        except Exception:
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    names = re.findall(r"GraphTransformer (\S+) modified: 1", text)
    return list(dict.fromkeys(n for n in names if n not in config.disabled_optimizers))


def run_float64(
    source: ModelSource | onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]] | None:
    """The model's outputs computed in double precision (None when neither runtime can run it so)."""

    from normonnx.graph.precision import to_float64

    model = to_float64(_proto(source))
    wide = [{k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in f.items()} for f in feeds]
    names = [o.name for o in model.graph.output]
    try:
        sess = session(model, SessionConfig(optimize=False))
        return [run(sess, f) for f in wide]
    except Exception:  # onnxruntime lacks double kernels for some ops (Conv): onnx's evaluator has them
        pass
    try:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        return [dict(zip(names, evaluator.run(None, f), strict=True)) for f in wide]
    except Exception:
        return None
