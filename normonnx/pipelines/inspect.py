"""``normonnx inspect``: every normalization, its form, and whether it folds.

Foldability is not guessed from patterns: the fold pipeline runs on a copy
and its decisions are reported, so ``inspect`` says exactly what ``fold``
would do and, for what stays, every reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import onnx

from normonnx.graph.bridge import model_and_name
from normonnx.pipelines.fold import NormStatus, fold
from normonnx.reports.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    source: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    nodes: int
    norms: list[NormStatus] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "source": self.source,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": self.producer,
            "nodes": self.nodes,
            "normalizations": [asdict(n) for n in self.norms],
            "foldable": sum(n.folded for n in self.norms),
        }


def inspect_model(model: onnx.ModelProto | str | os.PathLike) -> Inspection:
    proto, source = model_and_name(model)
    log.info("%s: %d nodes; folding a copy to learn what folds and why not", source, len(proto.graph.node))
    _, report = fold(proto)
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    return Inspection(source, proto.ir_version, opsets, producer, report.before.nodes, report.norms)
