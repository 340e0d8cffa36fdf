"""Localizing a parity failure: the first node whose output diverges.

Every intermediate tensor that both models name is compared on one failing
input, in the candidate's topological order. normonnx's passes keep a
tensor's name only while it carries the same value (a folded conv takes over
the BN's output name; the conv's own, now different, output disappears), so
names shared by both models are comparable; ``renames`` maps the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from normonnx.validate.parity import Gate, compare_output


@dataclass
class Divergence:
    node: str
    op: str
    tensor: str
    max_abs: float
    threshold: float
    ref_max: float


@dataclass
class Localization:
    compared: int
    first: Divergence | None
    diverging: list[Divergence] = field(default_factory=list)  # the first few, in order
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "compared": self.compared,
            "first": asdict(self.first) if self.first else None,
            "diverging": [asdict(d) for d in self.diverging],
            "note": self.note,
        }


def common_tensors(candidate: onnx.ModelProto, reference: onnx.ModelProto, renames: dict[str, str]) -> list[str]:
    """Candidate node outputs (topological order) that the reference also computes."""
    ref_names = {o for n in reference.graph.node for o in n.output if o}
    ordered = []
    for node in candidate.graph.node:
        for o in node.output:
            if o and renames.get(o, o) in ref_names:
                ordered.append(o)
    return ordered


def first_divergence(
    candidate: onnx.ModelProto,
    cand_values: dict[str, np.ndarray],
    ref_values: dict[str, np.ndarray],
    renames: dict[str, str],
    gate: Gate | None = None,
    keep: int = 5,
) -> Localization:
    producers = {o: n for n in candidate.graph.node for o in n.output}
    compared, diverging = 0, []
    for name, value in cand_values.items():
        ref = ref_values.get(renames.get(name, name))
        node = producers.get(name)
        if ref is None or node is None or np.shape(ref) != np.shape(value):
            continue
        compared += 1
        result = compare_output(name, [ref], [value], gate)
        if not result.passed:
            diverging.append(Divergence(node.name or node.output[0], node.op_type, name, result.max_abs,
                                        result.threshold, result.ref_max))  # fmt: skip
    order = {o: i for i, n in enumerate(candidate.graph.node) for o in n.output}
    diverging.sort(key=lambda d: order.get(d.tensor, 0))
    note = "" if compared else "the models share no intermediate tensor names"
    return Localization(compared, diverging[0] if diverging else None, diverging[:keep], note)
