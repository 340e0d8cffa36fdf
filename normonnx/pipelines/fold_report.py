"""The fold report: what was there, what was folded, what was kept and why.

It is built from the normalizations found before folding and the decisions
the passes recorded, rendered as a terminal summary and as stable JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from normonnx.families import BY_KEY
from normonnx.passes._base import Decision
from normonnx.recognize.scan import SUBGRAPH_NOTE, Found
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.validate.parity import ParityResult


@dataclass
class NormStatus:
    family: str
    form: str
    anchor: str
    detail: str
    folded: bool
    why: str  # where it went, or every reason it stayed


@dataclass
class GraphStats:
    nodes: int
    ops: dict[str, int]
    norms: dict[str, int]
    tensor_bytes: int


@dataclass
class FoldReport:
    source: str
    before: GraphStats
    after: GraphStats
    norms: list[NormStatus] = field(default_factory=list)
    rewrites: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    seconds: float = 0.0
    parity: ParityResult | None = None
    output: str | None = None
    stale_files: list[str] = field(default_factory=list)  # weights the replaced output used; never deleted
    notes: list[str] = field(default_factory=list)  # e.g. a fixpoint that did not converge

    @property
    def folded(self) -> list[NormStatus]:
        return [n for n in self.norms if n.folded]

    @property
    def kept(self) -> list[NormStatus]:
        return [n for n in self.norms if not n.folded]

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "source": self.source,
            "output": self.output,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "folded": len(self.folded),
            "kept": len(self.kept),
            "normalizations": [asdict(n) for n in self.norms],
            "rewrites": self.rewrites,
            "seconds": round(self.seconds, 4),
            "parity": self.parity.to_dict() if self.parity else None,
            "stale_files": self.stale_files,
            "notes": self.notes,
        }


def statuses(found: list[Found], decisions: list[Decision]) -> list[NormStatus]:
    """Join what was found with what the passes decided about it."""
    folded: dict[str, Decision] = {}
    reasons: dict[str, list[str]] = {}
    for d in decisions:
        if d.folded:
            folded.setdefault(d.node, d)
        else:
            reasons.setdefault(d.node, [])
            if d.detail not in reasons[d.node]:
                reasons[d.node].append(d.detail)
    result = []
    for f in found:
        hits = [folded[n] for n in f.nodes if n in folded]
        if f.anchor in folded or (hits and f.family == "affine"):
            d = folded.get(f.anchor) or hits[0]
            result.append(NormStatus(f.family, f.form, f.anchor, f.detail, True, d.detail))
            continue
        why = [r for n in f.nodes for r in reasons.get(n, [])] or [_default_reason(f)]
        result.append(NormStatus(f.family, f.form, f.anchor, f.detail, False, "; ".join(dict.fromkeys(why))))
    return result


def _default_reason(f: Found) -> str:
    """Why a normalization no pass considered stays: the family's nature."""
    if SUBGRAPH_NOTE in f.detail:
        return f"{f.detail}: normonnx folds in the main graph only"
    if f.family == "batchnorm" and "training_mode=1" in f.detail:
        return "training_mode=1: normalizes with batch statistics, never folded"
    if f.form == "weight subgraph" and "graph input" in f.detail:
        return "the weight is computed from a graph input, so it is not a constant"
    fam = BY_KEY.get(f.family)
    if fam is None:
        return "not foldable"
    if fam.foldable:
        return "no Conv/ConvTranspose/Gemm/MatMul next to it to fold into"
    return fam.fold_note
