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

log = logging.getLogger(__name__)


def inspect_model(model: onnx.ModelProto | str | os.PathLike) -> Inspection:
    proto, source = model_and_name(model)
    log.info("%s: %d nodes; folding a copy to learn what folds and why not", source, len(proto.graph.node))
    _, report = fold(proto, check=False)  # a report only: nothing is written
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    return Inspection(source, proto.ir_version, opsets, producer, report.before.nodes, report.norms)
