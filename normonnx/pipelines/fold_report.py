"""The fold report: what was there, what was folded, what was kept and why.

It is built from the normalizations found before folding and the decisions
the passes recorded, rendered as a terminal summary and as stable JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from normonnx.families import BY_KEY
from normonnx.passes._base import Decision
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.recognize.scan import SUBGRAPH_NOTE, Found
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


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GB"


def render(report: FoldReport, max_rows: int = 40) -> str:
    """The terminal summary: before/after table, folds, refusals, parity."""
    b, a = report.before, report.after
    keys = sorted(set(b.norms) | set(a.norms))
    w = max([len(k) for k in keys] + [12]) + 2
    lines = [f"{'':{w}}{'before':>10}{'after':>10}", f"{'nodes':{w}}{b.nodes:>10}{a.nodes:>10}"]
    for key in keys:
        lines.append(f"{key:{w}}{b.norms.get(key, 0):>10}{a.norms.get(key, 0):>10}")
    lines.append(f"{'tensor data':{w}}{_human_bytes(b.tensor_bytes):>10}{_human_bytes(a.tensor_bytes):>10}")
    folded, kept = report.folded, report.kept
    by_family = Counter(n.family for n in folded)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(by_family.items())) or "none"
    lines.append(f"folded: {len(folded)} ({summary})")
    for n in kept[:max_rows]:
        lines.append(f"  kept {n.family} {n.anchor} [{n.form}]: {n.why}")
    if len(kept) > max_rows:
        lines.append(f"  ... {len(kept) - max_rows} more kept (see --report)")
    if report.parity is not None:
        lines.append(report.parity.summary())
    for name in report.stale_files:
        lines.append(
            f"note: the replaced output's weight file {name} is no longer used; normonnx does not delete files"
        )
    return "\n".join(lines)
