"""Localizing a parity failure: the first node whose divergence persists downstream.

Tensors of the candidate are paired with the reference's (``validate.align``: by name, by a
rename map, by structure; for a torch reference, by the module each node came from) and
compared on one input. A pair that differs is not yet a divergence: another folder keeps a
conv's output name after the conv absorbed its BN, so that tensor differs while the ReLU
after it agrees again. It is a *changed meaning*. The first divergence is the first compared
tensor that differs and that stays different downstream: it is a graph output, or one of the
next compared tensors computed from it is itself such a divergence. From there the error is
followed to an output (the curve the report plots), and the node's inputs are shown with
their own agreement.
"""

from __future__ import annotations

import onnx

from normonnx.results import Divergence, Localization, OutputResult
from normonnx.validate.align import Pair


def _next_compared(model: onnx.ModelProto, compared: set[str]) -> dict[str, list[str]]:
    """For each compared tensor, the compared tensors first reached downstream of it on every path."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    result: dict[str, list[str]] = {}
    for start in compared:
        found, seen, stack = [], {start}, [start]
        while stack:
            for node in consumers.get(stack.pop(), []):
                for o in node.output:
                    if not o or o in seen:
                        continue
                    seen.add(o)
                    (found if o in compared else stack).append(o)
        result[start] = found
    return result


def first_divergence(
    candidate: onnx.ModelProto,
    pairs: list[Pair],
    results: list[OutputResult | None],
    modules: dict[str, str] | None = None,
    keep: int = 5,
) -> Localization:
    """The first persistent divergence among the compared ``pairs`` (``results`` in the same order;
    None where a pair could not be compared: another shape or dtype)."""
    modules = modules or {}
    stats = {p.candidate: (p, r) for p, r in zip(pairs, results, strict=True) if r is not None}
    outputs = {o.name for o in candidate.graph.output}
    order = {o: k for k, n in enumerate(candidate.graph.node) for o in n.output if o}
    nxt = _next_compared(candidate, set(stats))
    persists: dict[str, bool] = {}
    for name in sorted(stats, key=lambda n: -order.get(n, 0)):  # downstream first
        differs = not stats[name][1].passed
        persists[name] = differs and (name in outputs or any(persists.get(u, False) for u in nxt[name]))
    producers = {o: n for n in candidate.graph.node for o in n.output if o}
    ordered = sorted(stats, key=lambda n: order.get(n, 0))
    diverging = [_divergence(n, stats, producers, modules) for n in ordered if persists[n]]
    changed = [n for n in ordered if not stats[n][1].passed and not persists[n]]
    aligned: dict[str, int] = {}
    for p in pairs:
        aligned[p.how] = aligned.get(p.how, 0) + 1
    note = "" if stats else "the models share no comparable intermediate tensor"
    first = diverging[0] if diverging else None
    path = _error_path(first.tensor, stats, nxt, persists, producers) if first else []
    return Localization(len(stats), first, diverging[:keep], note, changed, path, aligned)


def _divergence(name: str, stats, producers, modules) -> Divergence:
    pair, r = stats[name]
    node = producers[name]
    inputs = []
    for i in node.input:
        if i in stats:
            ri = stats[i][1]
            inputs.append({"tensor": i, "agrees": bool(ri.passed), "max_abs": float(ri.max_abs)})
    return Divergence(
        node.name or name, node.op_type, name, float(r.max_abs), r.threshold, float(r.ref_max),
        pair.reference, modules.get(name), inputs, r.sqnr_db, r.min_sqnr_db, r.nonfinite_mismatch,
    )  # fmt: skip


def _error_path(start: str, stats, nxt, persists, producers) -> list[dict]:
    """From ``start`` to an output, each step the persisting successor with the largest error."""
    path, seen, name = [], set(), start
    while name is not None and name not in seen:
        seen.add(name)
        r = stats[name][1]
        path.append(
            {"tensor": name, "op": producers[name].op_type, "max_abs": float(r.max_abs),
             "relative": float(r.max_abs / max(1.0, r.ref_max))}
        )  # fmt: skip
        onward = [u for u in nxt.get(name, []) if persists.get(u)]
        name = max(onward, key=lambda u: stats[u][1].max_abs / max(1.0, stats[u][1].ref_max), default=None)
    return path
