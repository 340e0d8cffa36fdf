"""``normonnx check``: does the candidate compute what the reference does?

References: another ONNX file (run on onnxruntime CPU with graph
optimizations off, so onnxruntime's own fusions hide nothing) or torch eager
(``MODULE:FACTORY``). Inputs: several seeded sets built from the input specs,
or real ones from an .npz. Every onnxruntime run happens in an isolated
process. Gates per output: fp32 ``max|diff| <= 1e-5 * max(1, max|ref|)``;
fp16 ``<= 5e-3 * max(1, max|ref|)`` against the fp32 reference *and* no more
than twice the error of the unmodified fp16 model; overridable per output.
On failure (or when asked) the first diverging node is named.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from normonnx.errors import UnusableInputError, first_line
from normonnx.graph.modelio import has_external_data, load_model
from normonnx.graph.opsets import runnable_copy
from normonnx.isolation import IsolatedRunError, call_isolated
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.validate import execute
from normonnx.validate.align import Pair, align
from normonnx.validate.bisect import Bisection, bisect
from normonnx.validate.faithful import NotSimulated, faithful_outputs, half_type
from normonnx.validate.inputs import check_shape_names, input_specs, load_npz, save_npz
from normonnx.validate.localize import Localization, first_divergence
from normonnx.validate.parity import (
    FAITHFUL_GATE,
    FP16_GATE,
    Gate,
    ParityResult,
    compare,
    compare_output,
    limit_by_baseline,
    rejudge_with_noise,
)
from normonnx.validate.probe import probe_shapes, probed_feeds
from normonnx.validate.runner import SessionConfig, require_provider
from normonnx.validate.scopes import module_paths, module_tensors
from normonnx.validate.verify import onnx_outputs

log = logging.getLogger(__name__)

FP16_BASELINE_FACTOR = 2.0
LOCALIZE_CHUNK = 200  # tensors held at once when localizing against torch


@dataclass
class CheckReport:
    candidate: str
    reference: str
    reference_kind: str  # "onnx" or "torch"
    provider: str
    inputs: str  # "seeded at x:2,3,64,64 (guessed)" or the .npz path
    parity: ParityResult
    localization: Localization | None = None
    fp16_baseline: ParityResult | None = None
    bisection: Bisection | None = None
    evaluator: str = "onnxruntime"  # what computed the candidate's outputs
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "candidate": self.candidate,
            "reference": self.reference,
            "reference_kind": self.reference_kind,
            "provider": self.provider,
            "inputs": self.inputs,
            "passed": self.passed,
            "parity": self.parity.to_dict(),
            "localization": self.localization.to_dict() if self.localization else None,
            "fp16_baseline": self.fp16_baseline.to_dict() if self.fp16_baseline else None,
            "bisection": self.bisection.to_dict() if self.bisection else None,
            "evaluator": self.evaluator,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


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


def _torch_reference(spec: str, checkpoint: str | None, feeds: list[dict], names: list[str]):
    """(the factory's module, its outputs on every feed in torch eager: the check's feeds replace its
    example inputs)."""
    from normonnx.torchfront.exporter import build_module
    from normonnx.validate.torch_reference import torch_outputs

    module = build_module(spec, checkpoint)[0]
    return module, [torch_outputs(module, [f[n] for n in names]) for f in feeds]


def check(
    candidate: onnx.ModelProto | str | os.PathLike,
    *,
    against: onnx.ModelProto | str | os.PathLike | None = None,
    torch_spec: str | None = None,
    checkpoint: str | None = None,
    inputs_npz: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = 3,
    seed: int = 0,
    gates: dict[str, Gate] | None = None,
    default_gate: Gate | None = None,
    provider: str = "cpu",
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
    _check_save_paths(save_inputs, save_outputs, candidate, against, fp16_baseline, inputs_npz)
    # Loaded up front: a missing or broken baseline is a mistake, not something to ignore.
    baseline = _source(fp16_baseline) if fp16_baseline is not None else None
    if samples < 1:
        raise UnusableInputError(f"--samples {samples}: at least one input set is needed")
    if (against is None) == (torch_spec is None):
        raise UnusableInputError("give exactly one reference: --against REF.onnx or --torch MODULE:FACTORY")
    require_provider(provider)
    cand_src, cand_proto, cand_name = _source(candidate)
    notes: list[str] = []
    if against is not None:
        ref_src, ref_proto, ref_name = _source(against)
        spec_model = ref_proto
    else:
        ref_src, ref_proto, ref_name = None, None, torch_spec
        spec_model = cand_proto
    specs = input_specs(spec_model)
    check_shape_names(shapes, specs)
    probed = None
    if inputs_npz:
        feeds = load_npz(inputs_npz, specs)
    else:
        float_specs = [s if s.dtype.kind != "f" else type(s)(s.name, np.dtype(np.float32), s.shape) for s in specs]
        runs_on, runs_name = (ref_src, ref_name) if ref_src is not None else (cand_src, cand_name)
        probed = probe_shapes(spec_model, runs_on, shapes, label=runs_name, isolated=isolated, timeout=timeout)
        feeds = probed_feeds(float_specs, probed, samples, seed)
    ref_cfg = SessionConfig(provider="cpu", optimize=False)
    cand_cfg = SessionConfig(provider=provider, optimize=optimize)
    log.info("check %s against %s: %d input sets", cand_name, ref_name, len(feeds))
    if ref_src is not None:
        ref_feeds = _cast_feeds(feeds, {s.name: s.dtype for s in specs})
        refs = onnx_outputs(
            ref_src, ref_feeds, ref_cfg, label=f"{ref_name} (reference)", timeout=timeout, isolated=isolated
        )
    else:
        torch_module, refs = _torch_reference(torch_spec, checkpoint, feeds, [s.name for s in specs])
    unknown = sorted(set(gates or ()) - set(refs[0]))
    if unknown:
        raise UnusableInputError(f"--tol {unknown[0]}: no such output (the outputs: {', '.join(refs[0])})")
    cand_feeds = _cast_feeds(feeds, {s.name: s.dtype for s in input_specs(cand_proto)})
    log.info("running the candidate on %s", provider)
    load_error = None
    faithful = _half_judged_faithfully(cand_proto, ref_proto, provider, evaluator)
    try:
        if faithful:
            cands = faithful_outputs(cand_proto, feeds, label=f"{cand_name} (half-faithful)", timeout=timeout)
        else:
            cands = onnx_outputs(cand_src, cand_feeds, cand_cfg, label=cand_name, timeout=timeout, isolated=isolated)
    except IsolatedRunError as e:
        if not optimize:
            raise
        # It may run with onnxruntime's optimizations off: then they are to blame (bisected below).
        load_error = first_line(e)
        plain = replace(cand_cfg, optimize=False)
        cands = onnx_outputs(cand_src, cand_feeds, plain, label=cand_name, timeout=timeout, isolated=isolated)
    try:
        cands = _match_outputs(refs, cands, notes)
    except UnusableInputError as e:
        raise UnusableInputError(f"{cand_name}: {e}") from None
    result = compare(refs, cands, gates, default_gate or (FAITHFUL_GATE if faithful else None))
    if faithful:
        for o in result.outputs:
            o.judged_by = "half-faithful"
    plain_passed = load_error is not None and result.passed
    if load_error is not None:
        for o in result.outputs:
            o.passed, o.reason = False, "does not run with ORT_ENABLE_ALL (it runs with optimizations off)"
        notes.append(f"with onnxruntime's optimizations on: {load_error}")
    result.inputs = probed
    if save_inputs is not None:
        save_npz(save_inputs, feeds)
    if save_outputs is not None:
        save_npz(
            save_outputs,
            [{**_prefixed("reference", r), **_prefixed("candidate", c)} for r, c in zip(refs, cands, strict=True)],
        )
    report = CheckReport(
        cand_name,
        ref_name,
        "onnx" if ref_src is not None else "torch",
        provider,
        inputs_npz or ("seeded" if probed is None else f"seeded at {probed.describe()}"),
        result,
        notes=notes,
    )
    half_candidate = _has_fp16_outputs(cands) and not _has_fp16_outputs(refs)
    if fp16_baseline is not None and not (half_candidate or faithful):
        raise UnusableInputError("--fp16-baseline: applies only to an fp16 candidate checked against an fp32 reference")
    if faithful:
        report.evaluator = "half-faithful (float32 inside every op, every half tensor rounded as a GPU stores it)"
        _faithful_baseline(report, ref_proto, baseline, cand_proto, feeds, refs, timeout)
    elif half_candidate:
        report.fp16_baseline = _fp16_baseline(report, ref_proto, baseline, feeds, refs, timeout)
    elif not result.passed and ref_src is not None and not optimize and default_gate is None:
        noisy_cfg = SessionConfig(optimize=True)
        noisy = onnx_outputs(
            ref_src, ref_feeds, noisy_cfg, label=f"{ref_name} (noise floor)", timeout=timeout, isolated=isolated
        )
        rejudge_with_noise(result, compare(refs, noisy), strict=frozenset(gates or ()))
    if optimize and not result.passed:
        report.bisection = _bisect_onnxruntime(
            cand_src, cand_feeds, refs, cand_cfg, gates, default_gate, plain_passed, timeout, isolated
        )
        if report.bisection.culprit:
            notes.append(
                f"onnxruntime's {report.bisection.culprit} breaks it: it passes with that transformer disabled"
                f" (SessionOptions disabled_optimizers=['{report.bisection.culprit}'])"
            )
    if localize or (localize is None and not result.passed):
        if load_error is not None:  # what the candidate computes, where it runs at all
            cand_cfg = replace(cand_cfg, optimize=False)
        if ref_src is not None:
            report.localization = _localize(
                cand_src, cand_proto, ref_src, ref_proto, cand_feeds[0], ref_feeds[0], cand_cfg, renames or {},
                default_gate, timeout,
            )  # fmt: skip
        else:
            report.localization = _localize_torch(
                torch_module, cand_src, cand_proto, feeds[0], cand_feeds[0], [s.name for s in specs], cand_cfg,
                default_gate, timeout,
            )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


def _bisect_onnxruntime(cand_src, feeds, refs, cfg, gates, default_gate, plain_known, timeout, isolated) -> Bisection:
    """The onnxruntime graph transformer that breaks the candidate, bisected over those that changed it
    once the candidate passes with all of them disabled (``plain_known``: it passed with optimizations off)."""
    kind = "onnxruntime graph transformers"

    def passes(config: SessionConfig) -> bool:
        try:
            got = onnx_outputs(cand_src, feeds, config, label="bisection", timeout=timeout, isolated=isolated)
        except IsolatedRunError:
            return False
        return compare(refs, _match_outputs(refs, got, []), gates, default_gate).passed

    names = call_isolated(
        execute.applied_transformers, cand_src, cfg, label="onnxruntime transformers", timeout=timeout
    )

    def fails(applied: frozenset[str]) -> bool:
        return not passes(replace(cfg, disabled_optimizers=tuple(n for n in names if n not in applied)))

    if fails(frozenset()):
        if not plain_known and not passes(replace(cfg, optimize=False)):
            return Bisection(kind, names, None, 2, "it fails with onnxruntime's optimizations off too: not theirs")
        # Optimizations on change more than the graph: kernels pack weights differently, for one.
        note = "it fails with every transformer that changed the graph disabled: not a graph transformer"
        return Bisection(kind, names, None, 1, note)
    found = bisect(kind, names, fails)
    found.runs += 1  # the run with all of them disabled
    return found


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


def _faithful_baseline(report, ref_proto, given, cand_proto, feeds, refs, timeout) -> None:
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
        base = faithful_outputs(proto, feeds, label="plain half cast", timeout=timeout)
    except (IsolatedRunError, NotSimulated) as e:
        report.notes.append(f"no plain-cast baseline ({first_line(e)}); the 1e-2 gate only")
        return
    report.fp16_baseline = compare(refs, _match_outputs(refs, base, report.notes), default=FAITHFUL_GATE)
    report.notes.append(f"baseline: {name}, judged half-faithfully")
    limit_by_baseline(report.parity, report.fp16_baseline, FP16_BASELINE_FACTOR)


def _has_fp16_outputs(outputs: list[dict]) -> bool:
    return any(np.asarray(v).dtype == np.float16 for v in outputs[0].values())


def _fp16_baseline(report: CheckReport, ref_proto, given, feeds, refs, timeout) -> ParityResult | None:
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
    base = onnx_outputs(src, base_feeds, label="fp16 baseline", timeout=timeout)
    base_result = compare(refs, _match_outputs(refs, base, report.notes), default=FP16_GATE)
    limits = {o.name: o.max_abs for o in base_result.outputs}
    for o in report.parity.outputs:
        limit = FP16_BASELINE_FACTOR * limits.get(o.name, np.inf)
        if o.passed and o.max_abs > limit:
            o.passed = False
            base = limits[o.name]
            o.reason = f"max|diff| {o.max_abs:.3g} > {FP16_BASELINE_FACTOR:g}x the unmodified fp16 model's {base:.3g}"
    return base_result


def _localize(
    cand_src, cand_proto, ref_src, ref_proto, cand_feed, ref_feed, cfg, renames, gate, timeout
) -> Localization:
    """The first persistent divergence between the candidate and an ONNX reference, on one input."""
    pairs = align(cand_proto, ref_proto, renames)
    if not pairs:
        return Localization(0, None, [], "the models share no intermediate tensor")
    results = call_isolated(
        execute.compare_intermediates,
        cand_src,
        ref_src,
        cand_feed,
        ref_feed,
        [(p.candidate, p.reference) for p in pairs],
        cfg,
        gate,
        label="localize",
        timeout=timeout,
    )
    return first_divergence(cand_proto, pairs, results, module_paths(cand_proto))


def _localize_torch(module, cand_src, cand_proto, torch_feed, cand_feed, names, cfg, gate, timeout) -> Localization:
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
        got = call_isolated(
            execute.run_intermediates, cand_src, cand_feed, list(part.values()), cfg, label="localize", timeout=timeout
        )
        for path, tensor in part.items():
            if path not in refs or tensor not in got:
                continue
            a, b = np.asarray(got[tensor]), refs[path]
            pairs.append(Pair(tensor, path, "module"))
            results.append(compare_output(tensor, [b], [a], gate) if a.shape == b.shape else None)
    return first_divergence(cand_proto, pairs, results, module_paths(cand_proto))


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
