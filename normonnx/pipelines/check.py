"""``normonnx check``: does the candidate compute what the reference does?

References: another ONNX file (run on onnxruntime CPU with graph
optimizations off, so onnxruntime's own fusions hide nothing) or torch eager
(``MODULE:FACTORY``). Inputs: several seeded sets built from the input specs,
or real ones from an .npz. Every onnxruntime run happens in an isolated
process. Gates per output: fp32 ``max|diff| <= 1e-5 * max(1, max|ref|)``;
fp16 ``<= 5e-3 * max(1, max|ref|)`` against the fp32 reference *and* no more
than twice the error of the unmodified fp16 model; overridable per output.
On failure (or when asked) the first diverging node is named.

The steps, in the order ``check`` takes them: the **reference** (the ONNX
model or torch module, the inputs, its outputs), the **candidate** (its
outputs, half-faithfully where that is what a GPU computes), **judge**
(parity; then the unmodified half baseline or onnxruntime's own noise),
**diagnose** (the onnxruntime transformer to blame, the first diverging
node) and **save** (the inputs and outputs used, when asked; between the
verdict and the rest, so that they are kept even when a later step fails).
The measuring pieces are ``validate``'s: ``parity``, ``align``,
``localize``, ``bisect``, ``faithful``, ``probe`` and the runners.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from normonnx.errors import UnusableInputError, first_line
from normonnx.graph.modelio import has_external_data, load_model
from normonnx.graph.opsets import runnable_copy
from normonnx.graph.precision import with_float_type
from normonnx.graph.quantized import quantized_ops
from normonnx.isolation import IsolatedRunError
from normonnx.reports.progress import phase
from normonnx.results import Bisection, CheckReport, Localization, ParityResult, ProbedShapes
from normonnx.validate import execute
from normonnx.validate.align import Pair, align
from normonnx.validate.bisect import bisect
from normonnx.validate.faithful import HALF_TYPES, NotSimulated, half_type, has_half_tensors
from normonnx.validate.inputs import InputSpec, check_shape_names, input_specs, load_npz, save_npz
from normonnx.validate.localize import first_divergence
from normonnx.validate.parity import (
    FAITHFUL_GATE,
    FP16_GATE,
    INT8_GATE,
    Gate,
    compare,
    compare_output,
    limit_by_baseline,
    rejudge_with_noise,
)
from normonnx.validate.probe import probe_shapes, probed_feeds
from normonnx.validate.runner import SessionConfig, require_runtime
from normonnx.validate.runners import Feed, OnnxruntimeRunner, Outputs, RunOptions
from normonnx.validate.scopes import module_paths, module_tensors

log = logging.getLogger(__name__)

FP16_BASELINE_FACTOR = 2.0
LOCALIZE_CHUNK = 200  # tensors held at once when localizing against torch


@dataclass
class Reference:
    """What the candidate is compared against: an ONNX model (on onnxruntime CPU, optimizations off)
    or a torch module; and, once run, the inputs as it took them and its outputs. Working state of
    one check, not a result."""

    name: str
    kind: str  # "onnx" or "torch"
    source: execute.ModelSource | None = None  # what a child loads (ONNX)
    proto: onnx.ModelProto | None = None  # ONNX
    runner: OnnxruntimeRunner | None = None  # ONNX
    module: Any = None  # torch, once built
    inputs: list[str] = field(default_factory=list)  # the input names, in the order a torch module takes them
    feeds: list[Feed] = field(default_factory=list)
    outputs: list[Outputs] = field(default_factory=list)


@dataclass
class Candidate:
    """The model under test; once run, its inputs, its outputs keyed like the reference's, and how it ran."""

    name: str
    source: execute.ModelSource
    proto: onnx.ModelProto
    runner: OnnxruntimeRunner
    feeds: list[Feed] = field(default_factory=list)
    outputs: list[Outputs] = field(default_factory=list)
    faithful: bool = False  # computed in half-faithful arithmetic, not by onnxruntime
    int8: str = ""  # a quantized model of a float reference: its quantized ops ("" when it is not one)
    load_error: str | None = None  # why it does not run with onnxruntime's optimizations on
    passes_plain: bool = False  # it failed to load optimized, and passed with optimizations off


def _source(model: onnx.ModelProto | str | os.PathLike) -> tuple[execute.ModelSource, onnx.ModelProto, str]:
    """(what the child loads, the validated proto, a display name)."""
    if isinstance(model, onnx.ModelProto):
        if has_external_data(model):
            raise UnusableInputError("an in-memory model with external data: pass its path instead")
        return model.SerializeToString(), model, model.graph.name or "<model>"
    proto = load_model(model)
    older = runnable_copy(proto)
    if older is not None:  # onnxruntime runs nothing before opset 7: the check runs onnx's upgrade of it
        return older.SerializeToString(), older, str(model)
    # The child reloads from the path only when the weights are external (validated above).
    source = (
        str(model) if has_external_data(onnx.load(str(model), load_external_data=False)) else proto.SerializeToString()
    )
    return source, proto, str(model)


def _cast_feeds(feeds: list[dict], dtypes: dict[str, np.dtype]) -> list[dict]:
    return [{k: (v.astype(dtypes[k]) if k in dtypes else v) for k, v in f.items()} for f in feeds]


def _match_outputs(refs: list[dict], cands: list[dict], notes: list[str]) -> list[dict]:
    """Candidate outputs keyed like the reference's (by name, else by position)."""
    ref_names, cand_names = list(refs[0]), list(cands[0])
    if set(ref_names) <= set(cand_names):
        return [{k: c[k] for k in ref_names} for c in cands]
    if len(ref_names) == len(cand_names):
        notes.append("output names differ; matched by position")
        return [dict(zip(ref_names, c.values(), strict=True)) for c in cands]
    raise UnusableInputError(f"the models' outputs differ: {cand_names} vs the reference's {ref_names}")


def check(
    candidate: onnx.ModelProto | str | os.PathLike,
    *,
    against: onnx.ModelProto | str | os.PathLike | None = None,
    torch: str | None = None,
    checkpoint: str | None = None,
    inputs: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
    seed: int = 0,
    gates: dict[str, Gate] | None = None,
    default_gate: Gate | None = None,
    provider: str = "cpu",
    runtime: str = "onnxruntime",
    optimize: bool = False,
    localize: bool | None = None,
    evaluator: str | None = None,
    fp16_baseline: onnx.ModelProto | str | os.PathLike | None = None,
    renames: dict[str, str] | None = None,
    timeout: float = 900,
    save_inputs: str | os.PathLike | None = None,
    save_outputs: str | os.PathLike | None = None,
    isolated: bool = True,
) -> CheckReport:
    """Parity of ``candidate`` against an ONNX reference or a torch factory (exactly one).

    ``save_inputs`` keeps the inputs used as an .npz (one array per input, the sets stacked
    on a leading axis, so ``--inputs`` takes the file back); ``save_outputs`` keeps
    ``reference/NAME`` and ``candidate/NAME`` the same way.
    """
    start = time.perf_counter()
    _check_save_paths(save_inputs, save_outputs, candidate, against, fp16_baseline, inputs)
    # Loaded up front: a missing or broken baseline is a mistake, not something to ignore.
    baseline = _source(fp16_baseline) if fp16_baseline is not None else None
    if samples < 1:
        raise UnusableInputError(f"--samples {samples}: at least one input set is needed")
    if against is not None and torch is not None:
        raise UnusableInputError("give exactly one reference: --against REF.onnx or --torch MODULE:FACTORY")
    widened = against is None and torch is None
    where = require_runtime(runtime, provider)
    # Every model this check runs gets its runner from here: in child processes unless the check is
    # itself an isolated worker, each run stopped after ``timeout`` seconds.
    runs = RunOptions(isolated=isolated, timeout=timeout)
    # OpenVINO compiles a model its own way: --optimize (onnxruntime's graph optimizations) has no meaning there.
    optimize = optimize and runtime == "onnxruntime"
    cand = _candidate(candidate, SessionConfig(runtime=runtime, provider=provider, optimize=optimize), runs)
    if widened:
        against = widened_reference(cand.proto, cand.name)
    ref = _reference(against, torch, runs)
    spec_model = ref.proto if ref.proto is not None else cand.proto  # torch: the candidate says what goes in
    specs = input_specs(spec_model)
    check_shape_names(shapes, specs)
    phase("choose inputs")
    feeds, probed = _inputs(ref, cand, spec_model, specs, inputs, shapes, samples, seed, runs)
    log.info("check %s against %s: %d input sets", cand.name, ref.name, len(feeds))
    phase(f"reference run, {len(feeds)} input sets")
    _run_reference(ref, feeds, specs, checkpoint, gates)
    notes: list[str] = []
    if widened:
        notes.append("reference: the candidate widened exactly to float32 (no --against or --torch given)")
    cand.int8 = _int8_candidate(cand.proto, ref.proto)
    if cand.int8 and not optimize and runtime == "onnxruntime":
        # onnxruntime's int8 kernels exist only after its QDQ fusions: without them it computes in float.
        cand.runner = cand.runner.derived(optimize=True)
        notes.append("an int8 candidate runs as deployed (ORT_ENABLE_ALL): its int8 kernels need the fusions")
    phase(f"candidate run, {len(feeds)} input sets")
    _run_candidate(cand, ref, feeds, evaluator, runs, notes)
    phase("compare")
    if cand.int8 and default_gate is None:
        # Every value of an int8 model is off by up to half a quantization step: judged by SQNR, not max|diff|.
        default_gate = INT8_GATE
        notes.append(f"an int8 candidate ({cand.int8}): judged by SQNR >= {INT8_GATE.min_sqnr:g} dB per output")
    report = CheckReport(
        cand.name,
        ref.name,
        ref.kind,
        where,
        inputs or ("seeded" if probed is None else f"seeded at {probed.describe()}"),
        _parity(ref, cand, gates, default_gate, notes),
        notes=notes,
    )
    report.parity.inputs = probed
    _save(save_inputs, save_outputs, feeds, ref, cand)
    _against_baselines(report, ref, cand, baseline, feeds, gates, default_gate, runs)
    _diagnose(report, ref, cand, gates, default_gate, localize, renames or {})
    report.seconds = time.perf_counter() - start
    return report


# --- reference and candidate ---------------------------------------------------------------------


def _candidate(model: onnx.ModelProto | str | os.PathLike, config: SessionConfig, runs: RunOptions) -> Candidate:
    """The candidate loaded and checked, run as asked (``--provider``, ``--optimize``)."""
    source, proto, name = _source(model)
    return Candidate(name, source, proto, runs.runner(source, config, label=name))


def widened_reference(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A half model's own float32 reference: the model widened exactly (every fp16/bf16 value is a float32
    value), so that the check says where the half model leaves its float32 meaning, overflow first. ``name``
    names the candidate in the error for a model that is not in half."""
    if not has_half_tensors(proto):
        raise UnusableInputError(
            f"{name}: give a reference, --against REF.onnx or --torch MODULE:FACTORY (only an fp16/bf16 model is"
            " checked against its own float32 widening)"
        )
    widened = with_float_type(proto, TensorProto.FLOAT, HALF_TYPES)
    widened.graph.name = f"{proto.graph.name or 'model'} widened to float32"
    return widened


def _reference(
    against: onnx.ModelProto | str | os.PathLike | None, torch_spec: str | None, runs: RunOptions
) -> Reference:
    """The ONNX reference loaded and checked, or the torch factory (built once there are inputs)."""
    if against is None:
        return Reference(torch_spec, "torch")
    source, proto, name = _source(against)
    return Reference(name, "onnx", source, proto, runs.runner(source, SessionConfig(), label=f"{name} (reference)"))


def _inputs(
    ref: Reference, cand: Candidate, spec_model: onnx.ModelProto, specs: list[InputSpec], npz: str | None,
    shapes: dict[str, tuple[int, ...]] | None, samples: int, seed: int, runs: RunOptions,
) -> tuple[list[Feed], ProbedShapes | None]:  # fmt: skip
    """The input sets both sides run on: the .npz's, else seeded float32 sets at shapes the models run at
    (validate.probe, on the ONNX reference where there is one)."""
    if npz:
        return load_npz(npz, specs, one_array_any_name=True), None
    float_specs = [s if s.dtype.kind != "f" else type(s)(s.name, np.dtype(np.float32), s.shape) for s in specs]
    name, source = (ref.name, ref.source) if ref.source is not None else (cand.name, cand.source)
    probed = probe_shapes(spec_model, runs.runner(source, label=name), shapes)
    return probed_feeds(float_specs, probed, samples, seed), probed


def _run_reference(
    ref: Reference, feeds: list[Feed], specs: list[InputSpec], checkpoint: str | None, gates: dict[str, Gate] | None
) -> None:
    """The reference's outputs on every input set; a --tol for an output it lacks is a mistake."""
    if ref.runner is not None:
        ref.feeds = _cast_feeds(feeds, {s.name: s.dtype for s in specs})
        ref.outputs = ref.runner.infer(ref.feeds)
    else:  # the check's feeds replace the factory's example inputs
        from normonnx.torchfront.exporter import build_module
        from normonnx.validate.torch_reference import torch_outputs

        ref.feeds, ref.inputs = feeds, [s.name for s in specs]
        ref.module = build_module(ref.name, checkpoint)[0]
        ref.outputs = [torch_outputs(ref.module, [f[n] for n in ref.inputs]) for f in feeds]
    unknown = sorted(set(gates or ()) - set(ref.outputs[0]))
    if unknown:
        raise UnusableInputError(f"--tol {unknown[0]}: no such output (the outputs: {', '.join(ref.outputs[0])})")


def _run_candidate(
    cand: Candidate, ref: Reference, feeds: list[Feed], evaluator: str | None, runs: RunOptions, notes: list[str]
) -> None:
    """The candidate's outputs, keyed like the reference's: half-faithful for a half candidate on the CPU,
    with optimizations off when it does not even load with them on (bisected later)."""
    cand.feeds = _cast_feeds(feeds, {s.name: s.dtype for s in input_specs(cand.proto)})
    config = cand.runner.config
    where = config.where
    log.info("running the candidate on %s", where)
    cand.faithful = _half_judged_faithfully(cand.proto, ref.proto, where, evaluator)
    simulated = None
    if cand.faithful:
        try:
            simulated = runs.faithful(cand.proto, label=f"{cand.name} (half-faithful)")
        except NotSimulated as e:
            cand.faithful = False
            notes.append(f"{e}: judged on onnxruntime's CPU instead, which computes fp16 ops in float32")
    if cand.faithful and config.runtime != "onnxruntime":
        notes.append(f"judged by normonnx's half-faithful evaluator (--evaluator faithful): {where} did not run it")
    try:
        if simulated is not None:
            outputs = simulated.infer(feeds)
        else:
            outputs = cand.runner.infer(cand.feeds)
    except IsolatedRunError as e:
        if not cand.runner.config.optimize:
            raise
        # It may run with onnxruntime's optimizations off: then they are to blame (bisected below).
        cand.load_error = first_line(e)
        outputs = cand.runner.derived(optimize=False).infer(cand.feeds)
    try:
        cand.outputs = _match_outputs(ref.outputs, outputs, notes)
    except UnusableInputError as e:
        raise UnusableInputError(f"{cand.name}: {e}") from None


def _int8_candidate(cand_proto: onnx.ModelProto, ref_proto: onnx.ModelProto | None) -> str:
    """The quantized ops of a candidate whose reference is a float model ("" when it is not one)."""
    ops = quantized_ops(cand_proto)
    if not ops or (ref_proto is not None and quantized_ops(ref_proto)):
        return ""
    return ", ".join(f"{n} {op}" for op, n in ops.items())


def _half_judged_faithfully(cand_proto, ref_proto, provider: str, evaluator: str | None) -> bool:
    """A half-precision candidate of a float32 model is judged in half-faithful arithmetic on the CPU
    (onnxruntime's CPU provider computes fp16 in fp32 behind casts and hides overflow) unless
    ``evaluator`` says onnxruntime."""
    if evaluator not in (None, "faithful", "onnxruntime"):
        raise UnusableInputError(f"--evaluator {evaluator}: choose faithful or onnxruntime")
    if evaluator == "onnxruntime" or (evaluator is None and provider != "cpu"):
        return False
    half = half_type(cand_proto) is not None and (ref_proto is None or half_type(ref_proto) is None)
    if evaluator == "faithful" and not half:
        raise UnusableInputError("--evaluator faithful: applies to an fp16/bf16 candidate of a float32 reference")
    return half


# --- judge ---------------------------------------------------------------------------------------


def _parity(
    ref: Reference, cand: Candidate, gates: dict[str, Gate] | None, default_gate: Gate | None, notes: list[str]
) -> ParityResult:
    """Every output against its gate; a candidate that loads only with optimizations off fails."""
    result = compare(ref.outputs, cand.outputs, gates, default_gate or (FAITHFUL_GATE if cand.faithful else None))
    if cand.faithful:
        for o in result.outputs:
            o.judged_by = "half-faithful"
    cand.passes_plain = cand.load_error is not None and result.passed
    if cand.load_error is not None:
        for o in result.outputs:
            o.passed, o.reason = False, "does not run with ORT_ENABLE_ALL (it runs with optimizations off)"
        notes.append(f"with onnxruntime's optimizations on: {cand.load_error}")
    return result


def _against_baselines(
    report: CheckReport, ref: Reference, cand: Candidate, given, feeds: list[Feed], gates: dict[str, Gate] | None,
    default_gate: Gate | None, runs: RunOptions,
) -> None:  # fmt: skip
    """A half candidate may be at most twice as far off as the unmodified half model; a float32 failure
    within onnxruntime's own optimized-vs-plain noise is rejudged against that noise."""
    half_candidate = _has_fp16_outputs(cand.outputs) and not _has_fp16_outputs(ref.outputs)
    if given is not None and not (half_candidate or cand.faithful):
        raise UnusableInputError("--fp16-baseline: applies only to an fp16 candidate checked against an fp32 reference")
    if cand.faithful:
        report.evaluator = "half-faithful (float32 inside every op, every half tensor rounded as a GPU stores it)"
        _faithful_baseline(report, ref.proto, given, cand.proto, feeds, ref.outputs, runs)
    elif half_candidate:
        report.fp16_baseline = _fp16_baseline(report, ref.proto, given, feeds, ref.outputs, runs)
    elif (
        not report.parity.passed
        and ref.runner is not None
        and not cand.runner.config.optimize
        and default_gate is None
        and not cand.int8
    ):
        noisy = ref.runner.derived(label=f"{ref.name} (noise floor)", optimize=True).infer(ref.feeds)
        rejudge_with_noise(report.parity, compare(ref.outputs, noisy), strict=frozenset(gates or ()))


def _faithful_baseline(report, ref_proto, given, cand_proto, feeds, refs, options: RunOptions) -> None:
    """A plain cast of the reference to the candidate's half type, judged the same way: where it stays
    finite, the candidate may be at most twice as far off."""
    from normonnx.graph.precision import with_float_type

    if given is not None:
        proto, name = given[1], given[2]
    elif ref_proto is not None:
        proto, name = with_float_type(ref_proto, half_type(cand_proto)), "the reference cast to the half type"
    else:
        report.notes.append("no plain-cast baseline for a torch reference; the 1e-2 gate only")
        return
    try:
        base = options.faithful(proto, label="plain half cast").infer(feeds)
    except (IsolatedRunError, NotSimulated) as e:
        report.notes.append(f"no plain-cast baseline ({first_line(e)}); the 1e-2 gate only")
        return
    report.fp16_baseline = compare(refs, _match_outputs(refs, base, report.notes), default=FAITHFUL_GATE)
    report.notes.append(f"baseline: {name}, judged half-faithfully")
    limit_by_baseline(report.parity, report.fp16_baseline, FP16_BASELINE_FACTOR)


def _has_fp16_outputs(outputs: list[dict]) -> bool:
    return any(np.asarray(v).dtype == np.float16 for v in outputs[0].values())


def _fp16_baseline(report: CheckReport, ref_proto, given, feeds, refs, options: RunOptions) -> ParityResult | None:
    """The unmodified fp16 model's error; the candidate may be at most twice as far off.

    ``given`` is the user's baseline as ``_source`` returns it, or None to derive one from the reference.
    """
    from normonnx.graph.precision import to_float16

    if given is not None:
        src, proto, name = given
        report.notes.append(f"fp16 baseline: {name}")
    elif ref_proto is not None:
        try:
            proto = to_float16(ref_proto)
            onnx.checker.check_model(proto)
        except Exception as e:  # a model the plain converter cannot handle: gate only
            report.notes.append(f"no fp16 baseline (conversion failed: {type(e).__name__}); 5e-3 gate only")
            return None
        src = proto.SerializeToString()
        report.notes.append("fp16 baseline: the reference converted to float16 by normonnx")
    else:
        report.notes.append("no fp16 baseline for a torch reference; 5e-3 gate only")
        return None
    base_feeds = _cast_feeds(feeds, {s.name: s.dtype for s in input_specs(proto)})
    base = options.runner(src, label="fp16 baseline").infer(base_feeds)
    base_result = compare(refs, _match_outputs(refs, base, report.notes), default=FP16_GATE)
    limits = {o.name: o.max_abs for o in base_result.outputs}
    for o in report.parity.outputs:
        limit = FP16_BASELINE_FACTOR * limits.get(o.name, np.inf)
        if o.passed and o.max_abs > limit:
            o.passed = False
            base = limits[o.name]
            o.reason = f"max|diff| {o.max_abs:.3g} > {FP16_BASELINE_FACTOR:g}x the unmodified fp16 model's {base:.3g}"
    return base_result


# --- diagnose ------------------------------------------------------------------------------------


def _diagnose(
    report: CheckReport, ref: Reference, cand: Candidate, gates: dict[str, Gate] | None, default_gate: Gate | None,
    localize: bool | None, renames: dict[str, str],
) -> None:  # fmt: skip
    """Why it fails: the onnxruntime transformer that breaks an optimized candidate, and the first node
    whose divergence persists downstream (also when it passes, if asked)."""
    if cand.runner.config.optimize and not report.parity.passed and not cand.int8:  # int8 needs the transformers
        report.bisection = _bisect_onnxruntime(
            cand.runner, cand.feeds, ref.outputs, gates, default_gate, cand.passes_plain
        )
        if report.bisection.culprit:
            report.notes.append(
                f"onnxruntime's {report.bisection.culprit} breaks it: it passes with that transformer disabled"
                f" (SessionOptions disabled_optimizers=['{report.bisection.culprit}'])"
            )
    if localize or (localize is None and not report.parity.passed):
        located = cand.runner.derived(label="localize")
        if cand.load_error is not None or cand.int8:  # what the candidate computes, where its tensors keep their names
            located = located.derived(optimize=False)
        if ref.runner is not None:
            report.localization = _localize(
                located, cand.proto, ref.runner, ref.proto, cand.feeds[0], ref.feeds[0], renames, default_gate
            )
        else:
            report.localization = _localize_torch(
                ref.module, located, cand.proto, ref.feeds[0], cand.feeds[0], ref.inputs, default_gate
            )


def _bisect_onnxruntime(cand: OnnxruntimeRunner, feeds, refs, gates, default_gate, plain_known: bool) -> Bisection:
    """The onnxruntime graph transformer that breaks the candidate, bisected over those that changed it
    once the candidate passes with all of them disabled (``plain_known``: it passed with optimizations off)."""
    kind = "onnxruntime graph transformers"
    bisecting = cand.derived(label="bisection")

    def passes(runner: OnnxruntimeRunner) -> bool:
        try:
            got = runner.infer(feeds)
        except IsolatedRunError:
            return False
        return compare(refs, _match_outputs(refs, got, []), gates, default_gate).passed

    names = cand.derived(label="onnxruntime transformers").applied_transformers()

    def fails(applied: frozenset[str]) -> bool:
        return not passes(bisecting.derived(disabled_optimizers=tuple(n for n in names if n not in applied)))

    if fails(frozenset()):
        if not plain_known and not passes(bisecting.derived(optimize=False)):
            return Bisection(kind, names, None, 2, "it fails with onnxruntime's optimizations off too: not theirs")
        # Optimizations on change more than the graph: kernels pack weights differently, for one.
        note = "it fails with every transformer that changed the graph disabled: not a graph transformer"
        return Bisection(kind, names, None, 1, note)
    found = bisect(kind, names, fails)
    found.runs += 1  # the run with all of them disabled
    return found


def _localize(
    cand: OnnxruntimeRunner, cand_proto, ref: OnnxruntimeRunner, ref_proto, cand_feed, ref_feed, renames, gate
) -> Localization:
    """The first persistent divergence between the candidate and an ONNX reference, on one input."""
    pairs = align(cand_proto, ref_proto, renames)
    if not pairs:
        return Localization(0, None, [], "the models share no intermediate tensor")
    results = cand.compare_intermediates(ref, cand_feed, ref_feed, [(p.candidate, p.reference) for p in pairs], gate)
    return first_divergence(cand_proto, pairs, results, module_paths(cand_proto))


def _localize_torch(module, cand: OnnxruntimeRunner, cand_proto, torch_feed, cand_feed, names, gate) -> Localization:
    """The first persistent divergence between the candidate and the torch module's own submodules."""
    from normonnx.validate.torch_reference import module_outputs

    deepest: dict[str, str] = {}  # tensor -> the innermost module whose output it is
    for path, tensor in module_tensors(cand_proto, {p for p, _ in module.named_modules() if p}).items():
        if len(path) > len(deepest.get(tensor, "")):
            deepest[tensor] = path
    candidates = {path: tensor for tensor, path in deepest.items()}
    if not candidates:
        return Localization(0, None, [], "the exporter recorded no module scopes in the candidate's nodes")
    pairs, results = [], []
    items = list(candidates.items())
    for start in range(0, len(items), LOCALIZE_CHUNK):
        part = dict(items[start : start + LOCALIZE_CHUNK])
        refs = module_outputs(module, [torch_feed[n] for n in names], list(part))
        got = cand.intermediates(cand_feed, list(part.values()))
        for path, tensor in part.items():
            if path not in refs or tensor not in got:
                continue
            a, b = np.asarray(got[tensor]), refs[path]
            pairs.append(Pair(tensor, path, "module"))
            results.append(compare_output(tensor, [b], [a], gate) if a.shape == b.shape else None)
    return first_divergence(cand_proto, pairs, results, module_paths(cand_proto))


# --- save ----------------------------------------------------------------------------------------


def _save(
    save_inputs: str | os.PathLike | None, save_outputs: str | os.PathLike | None, feeds: list[Feed],
    ref: Reference, cand: Candidate,
) -> None:  # fmt: skip
    """--save-inputs and --save-outputs: the sets stacked on a leading axis, as ``--inputs`` takes them back."""
    if save_inputs is not None:
        save_npz(save_inputs, feeds)
    if save_outputs is not None:
        pairs = zip(ref.outputs, cand.outputs, strict=True)
        save_npz(save_outputs, [{**_prefixed("reference", r), **_prefixed("candidate", c)} for r, c in pairs])


def _check_save_paths(save_inputs, save_outputs, *protected) -> None:
    """--save-inputs/--save-outputs never land on a model or file the check reads, nor on each other."""
    from normonnx.errors import OutputError

    chosen = [(f, p) for f, p in (("--save-inputs", save_inputs), ("--save-outputs", save_outputs)) if p is not None]
    if len(chosen) == 2 and Path(save_inputs).resolve() == Path(save_outputs).resolve():
        raise OutputError(f"{save_inputs}: --save-inputs and --save-outputs name the same file")
    for flag, path in chosen:
        target = Path(path).resolve()
        if target.is_dir():
            raise OutputError(f"{path}: {flag} names a directory; give an .npz file")
        if not target.parent.is_dir():
            raise OutputError(f"{path}: folder {target.parent} does not exist")
        for other in protected:
            if isinstance(other, str | os.PathLike) and Path(other).resolve() == target:
                raise OutputError(f"{path}: {flag} would overwrite {other}, which the check reads")


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def read_renames(path: str | os.PathLike | None) -> dict[str, str]:
    """Tensor renames from a JSON object {candidate_name: reference_name} (or a fold report's 'renames')."""
    if not path:
        return {}
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UnusableInputError(f"{path}: not a readable JSON file ({e})") from None
    mapping = data.get("renames", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UnusableInputError(f"{path}: expected a JSON object of tensor renames")
    return mapping
