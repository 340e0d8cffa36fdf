"""``normonnx half``: a float32 model in fp16 or bf16 whose normalizations never overflow, verified in
half-faithful arithmetic.

The model's normalizations are folded first (a BatchNorm folded into its conv has no statistics left to protect),
calibrated in float32 on seeded inputs (or ``--inputs``) to find the tensors beyond the half
type's range, converted by ``passes.to_half`` and judged by ``validate.faithful``: every op
computed as a GPU computes it (float32 inside, every half tensor rounded as it is stored), not
as onnxruntime's CPU provider does (fp32 behind casts it inserts, which hides overflow). The
gate (DESIGN.md section 5): finite wherever the float32 model is, max|diff| <= 1e-2 *
max(1, max|ref|), and no more than twice the error of a plain cast of the same model where that
one is finite. Nothing is written unless the gate holds.
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
from normonnx.families import LINEAR_OPS
from normonnx.graph.bridge import model_and_name, prepare_graph
from normonnx.graph.modelio import iter_nodes, load_model, staged_save, with_unique_node_names
from normonnx.graph.opsets import OpsetError, convert_opset, default_opset, runnable_copy
from normonnx.graph.precision import with_float_type
from normonnx.passes import FoldOptions
from normonnx.passes.registry import half_pipeline
from normonnx.passes.to_half import plan_float32
from normonnx.pipelines.emit import newest_opset
from normonnx.pipelines.fold import fold
from normonnx.results import HalfReport
from normonnx.targets import target as deployment_target
from normonnx.validate.inputs import input_specs, load_npz
from normonnx.validate.parity import FAITHFUL_GATE, compare, limit_by_baseline
from normonnx.validate.probe import probe_shapes, probed_feeds
from normonnx.validate.runners import RunOptions

log = logging.getLogger(__name__)
DTYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
BASELINE_FACTOR = 2.0
BF16_OPSET = 22  # the first opset whose Conv and pooling take bfloat16
BF16_CAST_OPSET = 13  # the first whose Cast does


def _bodies(model: onnx.ModelProto) -> bool:
    return any(a.HasField("g") or a.graphs for n in model.graph.node for a in n.attribute)


@dataclass(frozen=True)
class Shares:
    """How much of a model computes in the half type."""

    weight_bytes: float  # share of the float weight bytes stored in it
    linear_ops: tuple[int, int]  # (Conv/ConvTranspose/MatMul/Gemm reading half data, all of them)
    macs: float  # share of their work (weighted by weight size) on half data


def precision_shares(model: onnx.ModelProto, half: int) -> Shares:
    inits = {t.name: t for t in model.graph.initializer}
    nbytes = {n: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
              for n, t in inits.items() if t.data_type in (half, TensorProto.FLOAT)}  # fmt: skip
    total = sum(nbytes.values())
    in_half = sum(b for n, b in nbytes.items() if inits[n].data_type == half)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.value_info]}
    types.update({n: t.data_type for n, t in inits.items()})
    linear = [n for n in model.graph.node if n.op_type in LINEAR_OPS]
    on_half = [n for n in linear if types.get(n.input[0]) == half]
    work = lambda n: int(np.prod(inits[n.input[1]].dims)) if len(n.input) > 1 and n.input[1] in inits else 1
    macs = sum(work(n) for n in linear)
    return Shares(
        in_half / total if total else 1.0, (len(on_half), len(linear)),
        sum(work(n) for n in on_half) / macs if macs else 1.0,
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
) -> tuple[onnx.ModelProto, HalfReport]:
    """``model`` in ``dtype`` (``fp16`` or ``bf16``), and the report that judges it (``name`` names a model
    given in memory in messages; ``target``: the deployment target the float32 model is emitted for first)."""
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise UnusableInputError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    half = DTYPES[dtype]
    proto, source = model_and_name(model)
    source = name or source
    if _bodies(proto):
        raise UnusableInputError(f"{source}: If/Loop/Scan bodies are not converted to half precision yet")
    if any(n.op_type == "Cast" and any(a.name == "to" and a.i in DTYPES.values() for a in n.attribute)
           for n in iter_nodes(proto.graph)):  # fmt: skip
        raise UnusableInputError(f"{source}: the model already computes in half precision")
    # The normalization folds only: the simplifications reorder arithmetic, which in bfloat16 measurably
    # costs precision (vit_ln: twice a plain cast's error with them, 1.2x without), and speed is fold's job.
    older = runnable_copy(proto)  # onnxruntime runs nothing before opset 7: the reference is onnx's upgrade
    proto = older if older is not None else proto
    folded, _ = fold(proto, FoldOptions(simplify=False, target=target))
    attempts = [(folded, [])]
    if half == TensorProto.BFLOAT16 and default_opset(folded) < BF16_OPSET:
        # Conv, ConvTranspose and the pooling ops take bfloat16 from opset 22 on: that first; when it fails
        # the gate, the model at its own opset (those ops in float32), at least 13 (Cast takes bfloat16 there).
        attempts = []
        # A deployment target's newest opset caps the raise (TensorRT 8.6: 17, so bfloat16 Conv stays float32).
        cap = deployment_target(target).max_opset if target is not None else newest_opset()
        wanted = [o for o in dict.fromkeys((BF16_OPSET, max(default_opset(folded), BF16_CAST_OPSET))) if o <= cap]
        if not wanted:
            raise UnusableInputError(f"{source}: bfloat16 needs opset {BF16_CAST_OPSET}; {target} takes up to {cap}")
        for opset in wanted:
            try:
                raised = convert_opset(folded, opset)
            except OpsetError as e:
                raise UnusableInputError(f"{source}: bfloat16 needs opset {opset}; onnx cannot raise it: {e}") from None
            attempts.append((raised, [f"raised to opset {opset}"] if opset != default_opset(folded) else []))
    tried: list[str] = []
    for k, (candidate, notes) in enumerate(attempts):
        out, report = _converted(proto, candidate, source, dtype, half, keep_io_types, inputs, shapes, samples,
                                 timeout)  # fmt: skip
        report.notes = [*tried, *notes, *report.notes]
        if report.passed or k == len(attempts) - 1:
            break
        worst = report.parity.worst()
        tried.append(
            f"at opset {BF16_OPSET} (Conv in bfloat16) it failed the gate (max|diff| {worst.max_abs:.3g} on"
            f" {worst.name}): Conv and pooling kept in float32 at opset {default_opset(attempts[-1][0])}"
        )
    report.seconds = time.perf_counter() - start
    return out, report


def _converted(proto, folded, source, dtype, half, keep_io_types, inputs_npz, shapes, samples, timeout):
    """One conversion of ``folded`` (the float32 ``proto`` with its normalizations folded) and its verdict."""
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
    ranges = folded_runner.derived(label="calibration").ranges(feeds, names)
    graph = prepare_graph(folded, always_infer=True)
    kept = plan_float32(graph, ranges, half)
    out = half_pipeline(kept, half, keep_io_types).apply(folded, graph=graph, sort=True).model
    report.kept = sorted(kept.values(), key=lambda k: k.node)
    shares = precision_shares(out, half)
    report.weight_bytes_half, report.linear_ops_half = shares.weight_bytes, shares.linear_ops
    refs = options.runner(proto.SerializeToString(), label=source).infer(feeds)
    got = options.faithful(out, label="half-faithful run").infer(feeds)
    report.parity = compare(refs, got, default=FAITHFUL_GATE)
    plain = with_float_type(proto, half)
    try:
        plain_out = options.faithful(plain, label="plain cast").infer(feeds)
        report.plain_cast = compare(refs, plain_out, default=FAITHFUL_GATE)
    except Exception as e:
        report.notes.append(f"a plain cast of the model does not run ({str(e).splitlines()[0][:120]})")
    if report.plain_cast is not None:
        limit_by_baseline(report.parity, report.plain_cast, BASELINE_FACTOR)
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
