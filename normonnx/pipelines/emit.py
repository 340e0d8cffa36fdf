"""Re-emitting every normalization of a model in the form a target wants.

A form is chosen per family from the target opset and the style:

* ``op``: the standard ONNX op wherever the target opset has one;
* ``decomposed``: always the exact subgraph;
* ``auto``: the form measured fastest on onnxruntime CPU (``Family.auto_form``,
  checked against benchmarks/emit_forms.json by the tests).

Changing the opset goes through onnx's version converter, with normonnx's
own passes around it: ops the target lacks are lowered before a down
conversion, and GroupNormalization-18 (per-group scale) is lowered before an
up conversion past 21, because the converter relabels it without converting
its scale to per channel.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import onnx
import onnx.inliner

from normonnx.errors import UnusableInputError
from normonnx.families import BY_KEY, WITH_OP, is_default_domain, op_available
from normonnx.graph.bridge import model_and_name, prepare_graph
from normonnx.graph.modelio import iter_nodes
from normonnx.graph.opsets import (
    ComputedAtRunTime,
    OpsetError,
    convert_opset,
    default_opset,
    runnable_copy,
)
from normonnx.passes.manager import Pipeline
from normonnx.passes.registry import lower_pipeline, raise_pipeline, static_values_pipeline
from normonnx.passes.rules import FoldOptions
from normonnx.recognize.scan import scan, summarize
from normonnx.reports.progress import phase
from normonnx.results import Decision, EmitReport
from normonnx.targets import Target
from normonnx.targets import target as deployment_target

log = logging.getLogger(__name__)
STYLES = ("auto", "op", "decomposed")
MIN_OPSET = 11


def newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= newest_opset():
        raise UnusableInputError(f"--opset {opset}: normonnx emits opsets {MIN_OPSET} to {newest_opset()}")


def check_style(style: str) -> None:
    if style not in STYLES:
        raise UnusableInputError(f"--norm-style {style!r}: choose one of {', '.join(STYLES)}")


def planned_form(family: str, opset: int, style: str) -> str:
    """'op' or 'decomposed': the form ``family`` takes at ``opset`` under ``style``."""
    if not op_available(family, opset):
        return "decomposed"
    if style in ("op", "decomposed"):
        return style
    return BY_KEY[family].auto_form


def planned_forms(opset: int, style: str, deploy: Target | None) -> tuple[dict[str, str], dict[str, str]]:
    """(family -> form, family -> why) for every family with a standard op; a target decides by its row."""
    if deploy is None:
        return {f: planned_form(f, opset, style) for f in WITH_OP}, {}
    chosen = {f: deploy.form(f, opset, style) for f in WITH_OP}
    return {f: form for f, (form, _) in chosen.items()}, {f: why for f, (_, why) in chosen.items()}


def _run(
    model: onnx.ModelProto, pipeline: Pipeline, decisions: list[Decision], undone: frozenset[str], check: bool
) -> onnx.ModelProto:
    outcome = pipeline.apply(model, FoldOptions(undone=undone), always_infer=True, sort=True, check=check)
    decisions.extend(outcome.decisions)
    return outcome.model


def _groupnorm_must_lower(model: onnx.ModelProto, src: int, target: int) -> bool:
    """GroupNormalization crossing opset 21 either way: the converter would relabel 18's per-group scale
    as per channel, and 21's per-channel scale has no form at 18 to 20 that onnx still accepts
    (GroupNormalization-18 is deprecated since onnx 1.18, and its checker refuses it)."""
    crossing = src < 21 <= target or target < 21 <= src
    return crossing and any(
        n.op_type == "GroupNormalization" and is_default_domain(n.domain) for n in iter_nodes(model.graph)
    )


def _converted(
    model: onnx.ModelProto, target: int, source: str, decisions: list[Decision], undone: frozenset[str], check: bool
) -> onnx.ModelProto:
    """``model`` at opset ``target``; a value the older form needs constant but the graph computes from
    static shapes (Reduce axes from the rank) is folded first."""
    try:
        return convert_opset(model, target)
    except ComputedAtRunTime:
        model = _run(model, static_values_pipeline(), decisions, undone, check)
    except OpsetError as e:
        raise OpsetError(f"{source}: {e}") from None
    try:
        return convert_opset(model, target)
    except OpsetError as e:
        raise OpsetError(f"{source}: {e}") from None


def emit_file(
    src: str | os.PathLike,
    output: str | os.PathLike,
    opset: int | None = None,
    norm_style: str = "auto",
    *,
    verify: bool = True,
    shapes: dict[str, tuple[int, ...]] | None = None,
    isolated: bool = True,
    target: str | None = None,
) -> EmitReport:
    """Re-emit ``src`` into ``output``, written (atomically) only if parity holds (``target``: see ``emit``).

    As ``fold_file`` does, the result is staged beside ``output``, verified from disk
    against ``src`` in isolated processes (onnxruntime never runs in this one), then
    committed; ``report.output`` is None when parity failed and nothing was written.
    """
    from normonnx.graph.checked_load import load_checked_meanwhile
    from normonnx.graph.modelio import check_output_path
    from normonnx.pipelines._staging import write_verified
    from normonnx.validate.verify import start_original_run

    start = time.perf_counter()
    check_output_path(Path(output), [Path(src)])
    log.info("%s: emitting at opset %s, style %s", src, opset or "of the model", norm_style)
    phase("load")
    source = load_checked_meanwhile(src, load_weights=True, isolated=isolated, verify=verify)
    proto = source.model
    try:
        older = runnable_copy(proto)  # a pre-opset-7 file is verified against the copy onnxruntime runs
        original = (
            start_original_run(src, proto, shapes=shapes, disk_size=source.disk_bytes)
            if verify and isolated and older is None
            else None
        )
        phase("emit")
        # onnx's checker judges the output when it is written
        model, report = emit(proto, opset, norm_style, name=str(src), check=False, target=target)
        report.parity, report.output, _ = write_verified(
            model, src, output, verify=verify, shapes=shapes, isolated=isolated, reference=older,
            original=original, source_verdict=source.verdict,
        )  # fmt: skip
        if report.output is None and report.parity is not None:
            report = _without_the_rewrite_at_fault(
                proto, src, output, opset, norm_style, report, shapes, isolated, older, target
            )
    except Exception:
        source.verdict()  # an invalid source is what went wrong, whatever it led to
        raise
    report.seconds = time.perf_counter() - start
    return report


def _without_the_rewrite_at_fault(
    proto, src, dst, opset, norm_style, failed: EmitReport, shapes, isolated, older, target
):
    """The full emit failed parity: bisect its rewrites and deliver it with the one at fault left undone."""
    from normonnx.pipelines._staging import deliver_without_the_rewrite_at_fault

    return deliver_without_the_rewrite_at_fault(
        "emit rewrites", failed,
        lambda undone: emit(proto, opset, norm_style, undone=undone, name=str(src), check=False, target=target),
        lambda culprit, _: f"{culprit} left as it was: rewriting it broke parity",
        src, dst, shapes=shapes, isolated=isolated, reference=older,
    )  # fmt: skip


def emit(
    model: onnx.ModelProto | str | os.PathLike,
    opset: int | None = None,
    norm_style: str = "auto",
    *,
    undone: frozenset[str] = frozenset(),
    name: str | None = None,
    check: bool = True,
    target: str | None = None,
) -> tuple[onnx.ModelProto, EmitReport]:
    """Every normalization of ``model`` in the form ``norm_style`` wants at ``opset`` (but those whose anchor
    is in ``undone``, left as they are). ``name`` names a model given in memory in messages.
    ``check=False`` leaves onnx's checker to the caller that writes the model (the file is checked then).

    The default ``opset`` is the model's own, or the oldest normonnx writes when the model's is older.
    ``target`` (normonnx.targets) caps the opset at the newest its runtime takes and writes each
    family as the op only where that runtime runs the op's version with its own kernel.

    Nothing is verified here: ``emit_file`` verifies what it writes.
    """
    start = time.perf_counter()
    proto, source = model_and_name(model)
    source = name or source
    src = default_opset(proto)
    # A file older than the oldest opset normonnx writes (model-zoo files at 7..10) is raised to it.
    deploy = deployment_target(target) if target is not None else None
    own = src if src >= MIN_OPSET else MIN_OPSET
    if deploy is not None:
        opset = deploy.opset_for(own, opset)
    target_opset = own if opset is None else opset
    check_opset(target_opset)
    check_style(norm_style)
    forms, why = planned_forms(target_opset, norm_style, deploy)
    before = summarize(scan(prepare_graph(proto)))
    decisions: list[Decision] = []
    out = proto
    if proto.functions and target_opset < src:
        # Local functions are inlined before a down conversion: the normalizations inside them are lowered too.
        out = onnx.inliner.inline_local_functions(proto)
    # At the source opset: lower what the target lacks or the style does not want,
    # and GroupNormalization-18 before the converter mislabels it as 21.
    lower_first = [f for f in WITH_OP if forms[f] == "decomposed"]
    if "groupnorm" not in lower_first and _groupnorm_must_lower(out, src, target_opset):
        lower_first.append("groupnorm")
    if lower_first:
        out = _run(out, lower_pipeline(lower_first), decisions, undone, check)
    if target_opset != src:
        out = _converted(out, target_opset, source, decisions, undone, check)
    out = _run(out, raise_pipeline(f for f in WITH_OP if forms[f] == "op"), decisions, undone, check)
    report = EmitReport(
        source, src, target_opset, norm_style, forms, before, summarize(scan(prepare_graph(out))), decisions
    )
    if deploy is not None:
        report.target, report.why = deploy.key, why
    report.nodes_before, report.nodes_after = len(proto.graph.node), len(out.graph.node)
    report.seconds = time.perf_counter() - start
    return out, report
