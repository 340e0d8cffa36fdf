"""``normonnx quantize``: static int8 (QDQ) through onnxruntime's quantizer, with the normalizations done right,
proven on held-out inputs and timed against the float32 model and against onnxruntime's own flow.

normonnx prepares, onnxruntime quantizes (``int8.engine``). The preparation is what onnxruntime's flow
(``quant_pre_process`` + ``quantize_static``, whose basic optimizations fold only a BatchNorm or a constant
Mul/Add right after a conv) lacks: every fold normonnx knows (a BatchNorm before a conv, after a Gemm/MatMul
or a grouped ConvTranspose, tf2onnx's unfolded arithmetic, weight standardization), opset 13 where the model
is older (per-channel weights need it), decomposed LayerNorms raised to the op, and with ``norm_affine`` each
normalization's affine folded into the linear op after it; then every normalization that is left stays in
float, because onnxruntime's CPU provider has no int8 kernel for one (``int8.kernels``).

The same calibration feeds go through onnxruntime's flow unchanged, and both int8 models are judged as
onnxruntime deploys them (ORT_ENABLE_ALL) on held-out feeds against the float32 model (``int8.proof``): SQNR
per output (the gate, DESIGN.md 4b), max error, top-1 agreement of classifier outputs, the nodes left
computing in float and why, the node where the error grows most; then interleaved latency with an identity
copy of the float32 model as the noise floor. The model written is normonnx's, unless onnxruntime's is the
only one to pass the gate or more accurate by more than TIE_DB.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from normonnx.errors import UnusableInputError, first_line
from normonnx.graph.bridge import model_and_name, prepare_graph
from normonnx.graph.modelio import load_model, over_protobuf_limit, staged_save, with_unique_node_names
from normonnx.graph.opsets import OpsetError, convert_opset, default_opset
from normonnx.graph.quantized import quantized_ops
from normonnx.int8 import engine
from normonnx.int8.data import SEEDED_WARNING, Int8Inputs, fixed_batch, int8_inputs
from normonnx.int8.engine import Int8Settings
from normonnx.int8.kernels import why_float
from normonnx.int8.proof import error_jumps, judged
from normonnx.passes import FoldOptions
from normonnx.passes.registry import raise_pipeline
from normonnx.recognize.scan import scan
from normonnx.results import FloatNode, QuantizeReport
from normonnx.validate.faithful import half_type
from normonnx.validate.inputs import input_specs
from normonnx.validate.latency import speedup
from normonnx.validate.parity import INT8_MIN_SQNR, Gate
from normonnx.validate.probe import probe_shapes
from normonnx.validate.runner import SessionConfig
from normonnx.validate.runners import RunOptions, measure_interleaved

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
LATENCY_RUNS = 50
RAISED_FAMILIES = ("layernorm",)  # decomposed forms raised to their op before quantizing (opset 17 on)
TIMED = SessionConfig(optimize=True, spin=False)  # spinning threads would steal the other models' turns


def quantize_model(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    data: str | os.PathLike | Int8Inputs | None = None,
    held_out: str | os.PathLike | None = None,
    settings: Int8Settings = Int8Settings(),
    shapes: dict[str, tuple[int, ...]] | None = None,
    min_sqnr: float = INT8_MIN_SQNR,
    norm_affine: bool = False,
    baseline: bool = True,
    bench: bool = True,
    runs: int = LATENCY_RUNS,
    timeout: float | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """``model`` in int8 and the report that judges it (UnusableInputError where onnxruntime cannot quantize it).

    ``data``: calibration inputs (.npz, arrays named like the inputs, or feeds already split); ``held_out`` the
    proof's, else the last quarter of ``data``; neither: seeded inputs, the weaker choice, said in the report.
    ``baseline`` also runs onnxruntime's own flow on the same calibration feeds; ``bench`` times the models
    against each other."""
    start = time.perf_counter()
    proto, source = model_and_name(model)
    source = name or source

    def say(step: str) -> None:
        log.info("%s: %s", source, step)
        if progress is not None:
            progress(step)

    _refuse(proto, source)
    options = RunOptions(timeout=timeout)
    original = proto.SerializeToString()
    reference = options.runner(original, label=source)
    specs = input_specs(proto)
    if not isinstance(data, Int8Inputs):
        probed = probe_shapes(proto, reference, shapes) if data is None else None
        data = int8_inputs(specs, data, held_out, probed)
    report = QuantizeReport(source, settings.describe(), data.source, seeded=data.seeded)
    if data.seeded:
        report.notes.append(SEEDED_WARNING)
    say("reference run")
    try:  # first: a model onnxruntime cannot run cannot be calibrated either
        refs = reference.infer(data.held_out)
    except UnusableInputError as e:
        raise UnusableInputError(f"onnxruntime cannot run the float32 model, and calibration needs it: {e}") from None
    say("prepare")
    ours = prepare(proto, shapes, norm_affine)
    report.prepared, report.kept_float = ours.done, list(ours.kept.values())
    say("quantize")
    ours.quantized = _quantized(ours, data, settings, options, source)
    theirs = _their_flow(proto, data, settings, options, source, report) if baseline else None
    say("prove")
    written = _prove(report, ours, theirs, refs, data, Gate(min_sqnr=min_sqnr), options, source)
    if report.baseline is None:
        theirs = None  # it failed: nothing of theirs to time
    say("localize")
    quantized_from = options.runner(written.model.SerializeToString(), label=f"{source} (prepared)")
    report.jumps = error_jumps(
        written.quantized.model, written.model, quantized_from, data.held_out[0], options, source
    )
    if bench:
        say("bench")
        models = {"float32": original, "float32 copy": original, "normonnx int8": ours.quantized.model}
        if theirs is not None:
            models["onnxruntime int8"] = theirs.quantized.model
        batched = {s.name for s in specs if s.shape and fixed_batch(s) is None}
        _bench(report, models, data.held_out[0], batched, options, runs)
    report.seconds = time.perf_counter() - start
    return onnx.load_from_string(written.quantized.model), report


@dataclass
class Candidate:
    """A float model to quantize: normonnx's preparation (or none: onnxruntime's flow), what it did, and the
    nodes it leaves in float; once quantized, onnxruntime's int8 model of it."""

    label: str
    model: onnx.ModelProto
    done: list[str]
    kept: dict[str, FloatNode] = field(default_factory=dict)
    quantized: engine.Quantized | None = None


THEIRS = "onnxruntime's flow"
# "Not worse than onnxruntime's flow" on the held-out feeds, in SQNR. Two int8 models of the same network, from
# the same flow calibrated on two draws of a few hundred samples, differ by about 1 dB (MinMax ranges follow the
# most extreme samples: zoo preact_cnn, 35.3 and 37.4 dB), so a smaller gap says nothing about the preparation.
TIE_DB = 1.0


def _quantized(candidate: Candidate, data: Int8Inputs, settings: Int8Settings, options: RunOptions, source: str):
    """One candidate through onnxruntime's quantizer, its normalizations left in float."""
    return options.call(
        engine.quantize, candidate.model.SerializeToString(), data.calibration, settings, list(candidate.kept),
        label=source,
    )  # fmt: skip


def _their_flow(
    proto: onnx.ModelProto, data: Int8Inputs, settings: Int8Settings, options: RunOptions, source: str,
    report: QuantizeReport,
) -> Candidate | None:  # fmt: skip
    """onnxruntime's own flow on the model as it is: the baseline, and a candidate (None when it fails)."""
    theirs = Candidate(THEIRS, proto, [])
    try:
        theirs.quantized = options.call(
            engine.quantize, proto.SerializeToString(), data.calibration, settings, [], label=source
        )
    except UnusableInputError as e:
        report.notes.append(f"onnxruntime's own flow fails on this model: {e}")
        return None
    return theirs


def _prove(
    report: QuantizeReport, ours: Candidate, theirs: Candidate | None, refs: list[dict[str, np.ndarray]],
    data: Int8Inputs, gate: Gate, options: RunOptions, source: str,
) -> Candidate:  # fmt: skip
    """normonnx's int8 model and onnxruntime's judged on the held-out feeds; the one to write. Never worse than
    onnxruntime's own flow (DESIGN.md 4b): where theirs passes the gate and ours does not, or theirs is more
    accurate by more than TIE_DB, theirs is written, and said so."""
    report.int8 = judged(ours.label, ours.quantized, refs, data, gate, options, ours.kept, source)
    if theirs is None:
        return ours
    try:
        report.baseline = judged("onnxruntime", theirs.quantized, refs, data, gate, options, {}, source)
    except UnusableInputError as e:  # onnxruntime's flow wrote a model onnxruntime cannot load (opset 12 YOLOs)
        report.notes.append(f"onnxruntime's own flow writes a model that does not run: {e}")
        return ours
    mine, best = report.int8.worst_sqnr(), report.baseline.worst_sqnr()
    only_theirs_passes = report.baseline.parity.passed and not report.int8.parity.passed
    if not only_theirs_passes and (mine is None or best is None or mine >= best - TIE_DB):
        return ours
    why = "passes the gate where normonnx's does not" if only_theirs_passes else f"is more accurate by > {TIE_DB:g} dB"
    report.notes.append(
        f"onnxruntime's own flow {why} on the held-out inputs ({best:.2f} dB against {mine:.2f} dB):"
        " its model is the one written"
    )
    report.written = THEIRS
    return theirs


def _refuse(proto: onnx.ModelProto, source: str) -> None:
    """A model quantize cannot take, in one line."""
    done = quantized_ops(proto)
    if done:
        ops = ", ".join(f"{n} {op}" for op, n in done.items())
        raise UnusableInputError(f"{source}: already quantized ({ops}); quantize takes a float32 model")
    if half_type(proto) is not None:
        raise UnusableInputError(f"{source}: computes in fp16/bf16; quantize takes a float32 model")
    on_disk = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    if on_disk or over_protobuf_limit(proto):
        raise UnusableInputError(f"{source}: weights over 2 GiB or on disk; int8 of such models is not supported yet")


def prepare(
    proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None, norm_affine: bool = False
) -> Candidate:
    """normonnx's preparation of ``proto``: every fold it knows (verified at the float32 gate), decomposed
    LayerNorms raised, every normalization left kept in float. ``norm_affine`` also folds each normalization's
    affine into the linear op after it: its scale moves from the activations (quantized per tensor) to the
    weights (quantized per output channel, where a spread across input channels costs them precision)."""
    options = FoldOptions(fold_norm_affine=norm_affine)
    model, done = _prepared(_at_qdq_opset(proto), options, shapes)
    if default_opset(model) != default_opset(proto):
        done.insert(
            0, f"raised from opset {default_opset(proto)} to {QDQ_OPSET}: per-channel DequantizeLinear needs it"
        )
    return Candidate("normonnx", model, done, _kept_in_float(model))


QDQ_OPSET = 13  # the first opset whose QuantizeLinear/DequantizeLinear take an axis (per-channel weights)
QDQ_IR_VERSION = 7  # the ir_version of opset 13


def _at_qdq_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` raised to QDQ_OPSET by onnx's converter where it is older (as it is, where onnx cannot)."""
    if default_opset(proto) >= QDQ_OPSET:
        return proto
    try:
        out = convert_opset(proto, QDQ_OPSET)
    except OpsetError:
        return proto
    if out.ir_version < QDQ_IR_VERSION:
        # An ir_version 3 file lists every weight as an input too, and they are constants by its spec: at the
        # ir_version opset 13 needs they are plain initializers (onnxruntime's calibrator would ask for them).
        weights = {t.name for t in out.graph.initializer}
        kept = [i for i in out.graph.input if i.name not in weights]
        del out.graph.input[:]
        out.graph.input.extend(kept)
        out.ir_version = QDQ_IR_VERSION
    return out


def _prepared(
    proto: onnx.ModelProto, options: FoldOptions, shapes: dict[str, tuple[int, ...]] | None
) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` folded (only if the fold passes the float32 gate) with its decomposed LayerNorms raised, every
    node named, and what was done."""
    from normonnx.pipelines.fold import fold

    done: list[str] = []
    try:
        folded, fold_report = fold(proto, options, verify=True, shapes=shapes)
    except Exception as e:
        return with_unique_node_names(proto), [f"normonnx's fold left out: verifying it failed ({first_line(e)[:160]})"]
    if fold_report.parity is not None and fold_report.parity.passed:
        if fold_report.folded:
            counts = ", ".join(f"{k} {v}" for k, v in Counter(n.family for n in fold_report.folded).items())
            done.append(f"folded {len(fold_report.folded)} normalizations into the neighbouring weights ({counts})")
        if sum(fold_report.rewrites.values()):
            done.append(f"normonnx's fold: {sum(fold_report.rewrites.values())} rewrites, verified at the float32 gate")
    else:
        worst = fold_report.parity.summary() if fold_report.parity is not None else "not verified"
        done.append(f"normonnx's fold left out: it did not pass the float32 gate on this model ({worst})")
        folded = proto
    if default_opset(folded) >= 17:
        outcome = raise_pipeline(RAISED_FAMILIES).apply(folded, check=False)
        raised = sum(1 for d in outcome.decisions if d.folded)
        if raised:
            folded = outcome.model
            done.append(f"raised {raised} decomposed LayerNorms to LayerNormalization")
    return with_unique_node_names(folded), done


def _kept_in_float(model: onnx.ModelProto) -> dict[str, FloatNode]:
    """Every node of every normalization left in ``model`` (weight subgraphs aside: they are constants)."""
    graph = prepare_graph(model)
    ops = {n.name: n.op for n in graph.nodes}
    kept: dict[str, FloatNode] = {}
    for found in scan(graph):
        if found.form == "weight subgraph":
            continue
        title = ops.get(found.anchor, found.family) if found.form in ("op", "onnxruntime op") else found.family
        form = "op" if found.form in ("op", "onnxruntime op") else found.form
        for node in found.nodes:
            if node in ops:
                kept[node] = FloatNode(node, ops[node], why_float(title, form))
    return kept


def _bench(
    report: QuantizeReport, models: dict[str, bytes], feed, batched: set[str], options: RunOptions, runs: int
) -> None:
    """Interleaved latency of the float32 model, an identity copy of it (the noise floor) and the int8 models,
    at batch 1 where the batch is dynamic (``batched``: those inputs)."""
    feed = {k: (v[:1] if k in batched and np.ndim(v) else v) for k, v in feed.items()}
    runners = {k: options.runner(v, TIMED, label=k) for k, v in models.items()}
    stats = measure_interleaved(runners, [feed] * len(runners), runs=runs, warmup=5, label="int8 latency")
    report.latency = stats
    report.speedups = {"float32 copy": speedup(stats, "float32", "float32 copy"),
                       "normonnx int8": speedup(stats, "float32", "normonnx int8")}  # fmt: skip
    if "onnxruntime int8" in stats:
        report.speedups["onnxruntime int8"] = speedup(stats, "float32", "onnxruntime int8")
        report.speedups["normonnx vs onnxruntime int8"] = speedup(stats, "onnxruntime int8", "normonnx int8")


def quantize_file(src: str | os.PathLike, output: str | os.PathLike, **kwargs) -> QuantizeReport:
    """``quantize_model`` of ``src`` written to ``output`` (atomically) only if the int8 gate holds."""
    from normonnx.graph.modelio import check_output_path

    start = time.perf_counter()
    check_output_path(Path(output), [Path(src)])
    model, report = quantize_model(load_model(src), name=str(src), **kwargs)
    report.source = str(src)
    if report.passed:
        with staged_save(model, output, inputs=[src]) as staged:
            staged.commit()
        report.output = str(output)
    report.seconds = time.perf_counter() - start
    return report
