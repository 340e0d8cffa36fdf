"""``normonnx half``: a float32 (or half) model in fp16 or bf16 that does not overflow, verified in
half-faithful arithmetic.

A model already in fp16/bf16 is widened exactly to float32 first: that is the reference. Its
normalizations are folded (a BatchNorm folded into its conv has no statistics left to protect), and
the ones written out as subgraphs are raised to their op with stash_type where the target takes it
(statistics in float32 by the spec, the op in half). It is calibrated in float32 on seeded inputs (or
``--inputs``); tensors beyond the half type's range are carried at a power-of-two scale where their
region allows (``passes.rescale``, proven in float32 by ``_rescaling``) and kept as float32 islands
where it does not; ``passes.to_half`` converts the rest, and ``validate.faithful`` judges it: every op
computed as a GPU computes it (float32 inside, every half tensor rounded as it is stored), not as
onnxruntime's CPU provider does (fp32 behind casts it inserts, which hides overflow). While the gate
(DESIGN.md section 5: finite wherever the float32 model is, max|diff| <= 1e-2 * max(1, max|ref|), and
no more than twice the error of a plain cast where that one is finite) fails, ``_island_search`` keeps
the nodes at fault in float32. Nothing is written unless the gate holds.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from normonnx.errors import UnusableInputError
from normonnx.families import BY_KEY, LINEAR_OPS
from normonnx.graph.bridge import model_and_name, prepare_graph
from normonnx.graph.modelio import load_model, staged_save, with_unique_node_names
from normonnx.graph.opsets import OpsetError, convert_opset, default_opset, runnable_copy
from normonnx.graph.precision import with_float_type
from normonnx.graph.shapes import inferred
from normonnx.passes import FoldOptions
from normonnx.passes.registry import raise_pipeline
from normonnx.passes.to_half import HALF_MAX, RANGE_MARGIN, mask_fill, masks, plan_float32
from normonnx.pipelines._island_search import search_islands
from normonnx.pipelines._rescaling import rescaled
from normonnx.pipelines.emit import newest_opset
from normonnx.pipelines.fold import fold
from normonnx.recognize.classify import classify, instancenorm_view
from normonnx.recognize.moments import anchored_core
from normonnx.reports.progress import phase
from normonnx.reports.table import few
from normonnx.results import HalfReport
from normonnx.targets import Target
from normonnx.targets import target as deployment_target
from normonnx.validate.faithful import HALF_TYPES, half_type, has_half_tensors
from normonnx.validate.inputs import input_specs, load_npz
from normonnx.validate.parity import FAITHFUL_GATE, compare
from normonnx.validate.probe import probe_shapes, probed_feeds
from normonnx.validate.runners import RunOptions

log = logging.getLogger(__name__)
DTYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
BF16_OPSET = 22  # the first opset whose Conv and pooling take bfloat16
BF16_CAST_OPSET = 13  # the first whose Cast does


@dataclass(frozen=True)
class Shares:
    """How much of a model computes in the half type."""

    weight_bytes: float  # share of the float weight bytes stored in it
    linear_ops: tuple[int, int]  # (Conv/ConvTranspose/MatMul/Gemm reading half data, all of them)
    macs: float  # share of their work (weighted by weight size) on half data
    activations: float  # share of the float activation elements (every node's outputs) stored in it


def precision_shares(model: onnx.ModelProto, half: int, shapes: dict[str, tuple[int, ...]] | None = None) -> Shares:
    """What ``model`` computes in ``half``; activations counted at the input ``shapes`` (default: as declared)."""
    inits = {t.name: t for t in model.graph.initializer}
    nbytes = {n: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
              for n, t in inits.items() if t.data_type in (half, TensorProto.FLOAT)}  # fmt: skip
    total = sum(nbytes.values())
    in_half = sum(b for n, b in nbytes.items() if inits[n].data_type == half)
    graph = inferred(model, shapes)
    values = {v.name: v.type.tensor_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types = {name: t.elem_type for name, t in values.items()}
    types.update({n: t.data_type for n, t in inits.items()})
    linear = [n for n in model.graph.node if n.op_type in LINEAR_OPS]
    on_half = [n for n in linear if types.get(n.input[0]) == half]
    work = lambda n: int(np.prod(inits[n.input[1]].dims)) if len(n.input) > 1 and n.input[1] in inits else 1
    macs = sum(work(n) for n in linear)
    elements = {TensorProto.FLOAT: 0, half: 0}
    for node in model.graph.node:
        for o in node.output:
            t = values.get(o)
            if node.op_type == "Constant" or t is None or t.elem_type not in elements:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            elements[t.elem_type] += int(np.prod(dims))
    counted = sum(elements.values())
    return Shares(
        in_half / total if total else 1.0, (len(on_half), len(linear)),
        sum(work(n) for n in on_half) / macs if macs else 1.0, elements[half] / counted if counted else 1.0,
    )  # fmt: skip


def half_model(
    model: onnx.ModelProto | str | os.PathLike,
    dtype: str = "fp16",
    *,
    keep_io_types: bool = False,
    inputs: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
    timeout: float = 900,
    name: str | None = None,
    target: str | None = None,
    rescale: bool = True,
) -> tuple[onnx.ModelProto, HalfReport]:
    """``model`` in ``dtype`` (``fp16`` or ``bf16``), and the report that judges it (``name`` names a model
    given in memory in messages; ``target``: the deployment target the float32 model is emitted for first;
    ``rescale``: streams beyond the half range carried at a power-of-two scale rather than in float32).
    A model already in fp16 or bf16 is widened exactly to float32 first: that is the reference."""
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise UnusableInputError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    half = DTYPES[dtype]
    proto, source = model_and_name(model)
    source = name or source
    first_notes = []
    if has_half_tensors(proto):
        given = "fp16" if half_type(proto) == TensorProto.FLOAT16 else "bf16"
        proto = with_float_type(proto, TensorProto.FLOAT, HALF_TYPES)
        first_notes.append(f"the model computes in {given}: widened exactly to float32, the reference it is judged by")
    # The normalization folds only: the simplifications reorder arithmetic, which in bfloat16 measurably
    # costs precision (vit_ln: twice a plain cast's error with them, 1.2x without), and speed is fold's job.
    older = runnable_copy(proto)  # onnxruntime runs nothing before opset 7: the reference is onnx's upgrade
    proto = older if older is not None else proto
    folded, _ = fold(proto, FoldOptions(simplify=False, target=target))
    deploy = deployment_target(target) if target is not None else None
    cap = deploy.max_opset if deploy is not None else newest_opset()
    folded, raised = _norms_raised(folded, cap, deploy)
    first_notes += raised
    attempts = [(folded, [])]
    if half == TensorProto.BFLOAT16 and default_opset(folded) < BF16_OPSET:
        # Conv, ConvTranspose and the pooling ops take bfloat16 from opset 22 on: that first; when it fails
        # the gate, the model at its own opset (those ops in float32), at least 13 (Cast takes bfloat16 there).
        # A deployment target's newest opset caps the raise (TensorRT 8.6: 17, so bfloat16 Conv stays float32).
        attempts = []
        wanted = [o for o in dict.fromkeys((BF16_OPSET, max(default_opset(folded), BF16_CAST_OPSET))) if o <= cap]
        if not wanted:
            raise UnusableInputError(f"{source}: bfloat16 needs opset {BF16_CAST_OPSET}; {target} takes up to {cap}")
        for opset in wanted:
            try:
                raised_model = convert_opset(folded, opset)
            except OpsetError as e:
                raise UnusableInputError(f"{source}: bfloat16 needs opset {opset}; onnx cannot raise it: {e}") from None
            attempts.append((raised_model, [f"raised to opset {opset}"] if opset != default_opset(folded) else []))
    statistics = deploy.float32_statistics if deploy is not None else frozenset()
    tried: list[str] = []
    for k, (candidate, notes) in enumerate(attempts):
        out, report = _converted(proto, candidate, source, dtype, half, keep_io_types, inputs, shapes, samples,
                                 timeout, rescale, statistics)  # fmt: skip
        report.notes = [*first_notes, *tried, *notes, *report.notes]
        if report.passed or k == len(attempts) - 1:
            break
        worst = report.parity.worst()
        tried.append(
            f"at opset {BF16_OPSET} (Conv in bfloat16) it failed the gate (max|diff| {worst.max_abs:.3g} on"
            f" {worst.name}): Conv and pooling kept in float32 at opset {default_opset(attempts[-1][0])}"
        )
    report.seconds = time.perf_counter() - start
    return out, report


# The families whose standard op has stash_type (statistics in float32 by the spec), and the opset it needs.
STASH_OPSETS = {"layernorm": 17, "groupnorm": 21, "rmsnorm": 23}


def decomposed_families(model: onnx.ModelProto) -> set[str]:
    """The families written out as subgraphs in ``model`` (GroupNorm as Reshape/InstanceNormalization too)."""
    graph = prepare_graph(model, always_infer=True)
    found = set()
    for node in graph.nodes:
        if node.op == "InstanceNormalization" and instancenorm_view(node) is not None:
            found.add("groupnorm")
        core = anchored_core(node)
        if core is not None:
            found.add(classify(core).family)
    return found


def _norms_raised(folded: onnx.ModelProto, cap: int, deploy: Target | None) -> tuple[onnx.ModelProto, list[str]]:
    """Normalizations written out as subgraphs (torch's GroupNorm as Reshape/InstanceNormalization, T5's and
    LLaMA's RMSNorm, LayerNorm below opset 17) raised to their standard op, whose stash_type=1 keeps the
    statistics in float32 by the spec, so that they run in half instead of as float32 islands: where the
    target takes the op's opset."""
    wanted = {
        family: opset
        for family, opset in STASH_OPSETS.items()
        if opset <= cap and (deploy is None or deploy.takes(family, opset))
    }
    wanted = {f: o for f, o in wanted.items() if f in decomposed_families(folded)}
    if not wanted:
        return folded, []
    before = default_opset(folded)
    model = folded
    if before < max(wanted.values()):
        try:
            model = convert_opset(folded, max(wanted.values()))
        except OpsetError as e:
            why = f"onnx cannot raise the opset ({e})"
            return folded, [f"{', '.join(wanted)} left written out (float32 islands): {why}"]
    outcome = raise_pipeline(wanted).apply(model, always_infer=True, sort=True)
    raised: dict[str, int] = {}
    for d in outcome.decisions:
        if d.folded:
            raised[d.family] = raised.get(d.family, 0) + 1
    if not raised:
        return folded, []
    ops = ", ".join(f"{n} {BY_KEY[f].onnx_op}-{wanted[f]}" for f, n in sorted(raised.items()))
    opsets = f" (opset {before} -> {default_opset(outcome.model)})" if default_opset(outcome.model) != before else ""
    return outcome.model, [f"raised from subgraphs to {ops}{opsets}: their statistics are float32 by stash_type=1"]


def _converted(proto, folded, source, dtype, half, keep_io_types, inputs_npz, shapes, samples, timeout, rescale,
               float32_statistics):  # fmt: skip
    """One conversion of ``folded`` (the float32 ``proto`` with its normalizations folded) and its verdict:
    calibrate, rescale the streams beyond the half range, plan the float32 islands, convert, judge, and
    search for the nodes at fault while the gate fails."""
    report = HalfReport(source, dtype, keep_io_types)
    folded = with_unique_node_names(folded)  # the plan names nodes
    specs = input_specs(folded)
    options = RunOptions(timeout=timeout)  # every onnxruntime run of half in a child process
    folded_runner = options.runner(folded.SerializeToString(), label=source)
    if inputs_npz:
        feeds = load_npz(inputs_npz, specs)
        report.calibration = f"float32 run on {inputs_npz}"
    else:
        probed = probe_shapes(folded, folded_runner, shapes)
        feeds = probed_feeds(specs, probed, samples)
        report.calibration = f"float32 run on {samples} seeded input sets at {probed.describe()}"
    names = [o for n in folded.graph.node for o in n.output if o]
    phase("calibration run")
    ranges = folded_runner.derived(label="calibration").ranges(feeds, names)
    limit = HALF_MAX[half] / RANGE_MARGIN
    model, model_runner = folded, folded_runner
    graph = prepare_graph(folded, always_infer=True)
    if rescale:
        model, ranges, model_runner = rescaled(folded, graph, folded_runner, ranges, limit, feeds, options, report)
        if model is not folded:
            graph = prepare_graph(model, always_infer=True)
    kept = plan_float32(graph, ranges, half, float32_statistics)
    clamped = masks(graph, half)
    refs = options.runner(proto.SerializeToString(), label=source).infer(feeds)
    try:
        plain_out = options.faithful(with_float_type(proto, half), label="plain cast").infer(feeds)
        report.plain_cast = compare(refs, plain_out, default=FAITHFUL_GATE)
    except Exception as e:
        report.notes.append(f"a plain cast of the model does not run ({str(e).splitlines()[0][:120]})")
    out = search_islands(model, graph, model_runner, kept, half, keep_io_types, refs, feeds, options, report)
    stored = [t.name for t in out.graph.initializer if t.name in set(clamped) and t.data_type == half]
    if stored:
        report.notes.append(f"mask constants stored as {-mask_fill(half):.5g} in {dtype} (a quarter of its lowest"
                            f" finite value, so that masks add up without reaching -inf): {few(stored)}")  # fmt: skip
    report.kept = sorted(kept.values(), key=lambda k: k.node)
    shares = precision_shares(out, half, {k: v.shape for k, v in feeds[0].items()})
    report.weight_bytes_half, report.linear_ops_half = shares.weight_bytes, shares.linear_ops
    report.activations_half = shares.activations
    return out, report


def half_file(src: str | os.PathLike, output: str | os.PathLike, dtype: str = "fp16", **kwargs) -> HalfReport:
    """``half_model`` of ``src`` written to ``output`` (atomically) only if the half-faithful gate holds."""
    from normonnx.graph.modelio import check_output_path

    start = time.perf_counter()
    check_output_path(Path(output), [Path(src)])
    model, report = half_model(load_model(src), dtype, name=str(src), **kwargs)
    report.source = str(src)
    if report.passed:
        with staged_save(model, output, inputs=[src], no_stricter_than=src) as staged:
            staged.commit()
        report.output = str(output)
    report.seconds = time.perf_counter() - start
    return report
