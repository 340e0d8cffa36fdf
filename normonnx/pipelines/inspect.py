"""``normonnx inspect``: every normalization, its form, and whether it folds.

Foldability is not guessed from patterns: the fold pipeline runs on a copy
and its decisions are reported, so ``inspect`` says exactly what ``fold``
would do and, for what stays, every reason.
"""

from __future__ import annotations

import logging
import os

import onnx

from normonnx.graph.bridge import model_and_name
from normonnx.pipelines.fold import fold
from normonnx.results import Inspection
from normonnx.targets import target as deployment_target
from normonnx.targets import what_will_not_run
from normonnx.validate.runner import ops_without_kernel

log = logging.getLogger(__name__)


def inspect_model(model: onnx.ModelProto | str | os.PathLike, target: str | None = None) -> Inspection:
    """Every normalization and what fold does with it; with ``target``, also what will not run there."""
    proto, source = model_and_name(model)
    deploy = deployment_target(target) if target is not None else None
    log.info("%s: %d nodes; folding a copy to learn what folds and why not", source, len(proto.graph.node))
    _, report = fold(proto, check=False)  # a report only: nothing is written
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    inspection = Inspection(source, proto.ir_version, opsets, producer, report.before.nodes, report.norms)
    inspection.ops_without_kernel = ops_without_kernel(proto)
    if deploy is not None:
        inspection.target = deploy.key
        inspection.not_on_target = what_will_not_run(proto, deploy)
        inspection.target_bugs = list(deploy.bugs)
    return inspection
