"""Find every normalization in a graph, in whatever form an exporter wrote it.

Standard ops (BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization); decomposed LayerNorm (last axes or
channels-first), InstanceNorm, GroupNorm (ReduceMean-based or
Reshape/InstanceNormalization/Reshape) and RMSNorm; weight standardization
and weight_norm as subgraphs computing a Conv/Gemm/MatMul weight; and
per-channel Mul/Add pairs (FrozenBatchNorm). Each is reported once, anchored
on one node whose name the passes' decisions use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from normonnx.families import BY_OP, LINEAR_OPS, is_default_domain, onnxruntime_norm_family
from normonnx.graph.access import (
    constant_value,
    describe,
    is_constant,
    is_training_batchnorm,
    op_is,
    producer,
)
from normonnx.recognize.affine import is_channel_constant
from normonnx.recognize.classify import classify, instancenorm_view
from normonnx.recognize.moments import following_affine, match_core, match_shifted

_MAX_WEIGHT_SUBGRAPH = 64


@dataclass(frozen=True)
class Found:
    family: str
    form: str  # "op", "decomposed", "weight subgraph", ...
    anchor: str
    nodes: tuple[str, ...]
    detail: str

    @property
    def label(self) -> str:
        return f"{self.family}:{self.form}"


def _names(nodes) -> tuple[str, ...]:
    return tuple(describe(n) for n in nodes)


def _weight_subgraph(t: gs.Tensor) -> tuple[list[gs.Node], bool] | None:
    """Nodes computing a weight and whether every leaf is a constant (None if too large to be one)."""
    nodes, stack, seen, constant = [], [t], set(), True
    while stack:
        cur = stack.pop()
        if is_constant(cur):
            continue
        node = producer(cur)
        if node is None:
            constant = False
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        if len(nodes) > _MAX_WEIGHT_SUBGRAPH:
            return None
        stack.extend(x for x in node.inputs if x.name)
    return nodes, constant


def weight_family(nodes: list[gs.Node], opset: int) -> str | None:
    """What a subgraph computing a weight does to it: 'weightstd', 'weightnorm' or None."""
    ops = {n.op for n in nodes}
    if (
        any(op_is(n, "BatchNormalization") and is_training_batchnorm(n, opset) for n in nodes)
        or {"ReduceMean", "Sub"} <= ops
    ):
        return "weightstd"
    if ops & {"ReduceL2", "ReduceSumSquare", "LpNormalization"} or {"Pow", "ReduceSum", "Sqrt"} <= ops:
        return "weightnorm"
    return None


def scan(graph: gs.Graph) -> list[Found]:
    """Every normalization in ``graph`` (topological order of anchors)."""
    found: list[Found] = []
    claimed: set[int] = set()

    for node in graph.nodes:
        if not op_is(node, *LINEAR_OPS) or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if is_constant(w):
            continue
        sub = _weight_subgraph(w)
        if sub is None:
            continue
        nodes, constant = sub
        if any(op_is(n, *LINEAR_OPS, "Softmax") for n in nodes):
            continue  # an activation computed by the network (attention's keys), not a weight
        fam = weight_family(nodes, graph.opset)
        if fam is None:
            continue
        claimed.update(id(n) for n in nodes)
        ops = "/".join(dict.fromkeys(n.op for n in reversed(nodes)))
        state = "constant" if constant else "depends on a graph input"
        found.append(
            Found(
                fam,
                "weight subgraph",
                describe(producer(w)),
                _names(nodes),
                f"{ops} on the weight of {describe(node)} ({state})",
            )
        )

    for node in graph.nodes:
        runtime_family = onnxruntime_norm_family(node.op, node.domain)
        if runtime_family is not None and id(node) not in claimed:
            found.append(Found(runtime_family, "onnxruntime op", describe(node), (describe(node),), node.op))
            claimed.add(id(node))
            continue
        if id(node) in claimed or not is_default_domain(node.domain):
            continue
        if node.op in BY_OP:
            item, nodes = _standard(node, graph.opset)
            found.append(item)
            claimed.update(id(n) for n in nodes)
            continue
        core = match_core(node) if node.op in ("Div", "Mul") else None
        shifted = match_shifted(node) if node.op == "Add" else None
        if shifted is not None and not any(id(n) in claimed for n in shifted[0].nodes):
            kind = classify(shifted[0])
            claimed.update(id(n) for n in shifted[0].nodes)
            detail = f"{kind.detail}, affine inside (tf2onnx's moments form)"
            found.append(Found(kind.family, "decomposed", describe(node), _names(shifted[0].nodes), detail))
            continue
        if core is None or any(id(n) in claimed for n in core.nodes):
            continue
        kind = classify(core)
        view = kind.view
        affine = following_affine(view.post.outputs[0] if view else core.y)
        nodes = [*core.nodes, *((view.pre, view.post) if view else ()), *affine.nodes]
        claimed.update(id(n) for n in nodes)
        affine_note = ", affine" if affine.nodes else ""
        found.append(Found(kind.family, "decomposed", describe(core.anchor), _names(nodes), kind.detail + affine_note))

    for node in graph.nodes:
        if id(node) in claimed or not op_is(node, "Mul") or len(node.inputs) != 2:
            continue
        consts = [constant_value(t) for t in node.inputs]
        if sum(c is not None for c in consts) != 1 or not is_channel_constant(next(c for c in consts if c is not None)):
            continue
        out = node.outputs[0]
        user = out.outputs[0] if len(out.outputs) == 1 else None
        if not op_is(user, "Add") or not any(is_channel_constant(constant_value(t)) for t in user.inputs):
            continue
        claimed.update((id(node), id(user)))
        found.append(
            Found(
                "affine",
                "Mul/Add per channel",
                describe(node),
                _names([node, user]),
                "constant scale and shift (FrozenBatchNorm or an exported BN)",
            )
        )
    found.extend(_in_subgraphs(graph))
    return found


SUBGRAPH_NOTE = "inside a control-flow body"


def _in_subgraphs(graph: gs.Graph) -> list[Found]:
    """Standard normalization ops inside If/Loop/Scan bodies: listed, so that they are not silently
    skipped (fold runs its pipeline in the bodies too; their outputs stay)."""
    found = []
    for node in graph.nodes:
        for attr, value in node.attrs.items():
            bodies = value if isinstance(value, list) else [value]
            for body in (b for b in bodies if isinstance(b, gs.Graph)):
                where = f"{SUBGRAPH_NOTE} ({attr} of {node.op} {describe(node)})"
                for sub in body.nodes:
                    if sub.op in BY_OP and is_default_domain(sub.domain):
                        fam = BY_OP[sub.op]
                        found.append(Found(fam.key, "op", describe(sub), (describe(sub),), where))
                found.extend(_in_subgraphs(body))
    return found


def _standard(node: gs.Node, opset: int) -> tuple[Found, list[gs.Node]]:
    """A standard normalization op (and the nodes it claims)."""
    fam = BY_OP[node.op]
    if node.op == "BatchNormalization":
        mode = (
            "training_mode=1"
            if is_training_batchnorm(node, opset)
            else f"eps {float(node.attrs.get('epsilon', 1e-5)):g}"
        )
        if len(node.inputs) >= 5 and not all(is_constant(t) for t in node.inputs[3:5]):
            mode += ", mean and variance computed at run time (tf2onnx writes Keras LayerNormalization so)"
        return Found("batchnorm", "op", describe(node), (describe(node),), mode), [node]
    view = instancenorm_view(node) if node.op == "InstanceNormalization" else None
    if view is not None:
        affine = following_affine(view.post.outputs[0])
        nodes = [view.pre, node, view.post, *affine.nodes]
        found = Found(
            "groupnorm",
            "Reshape/InstanceNormalization/Reshape",
            describe(node),
            _names(nodes),
            "GroupNorm as InstanceNormalization over a [N, G, -1] view",
        )
        return found, nodes
    detail = ", ".join(
        f"{k} {v}" for k, v in node.attrs.items() if k in ("axis", "epsilon", "num_groups", "stash_type")
    )
    return Found(fam.key, "op", describe(node), (describe(node),), detail), [node]


def summarize(found: list[Found]) -> dict[str, int]:
    """Counts by family and form, e.g. {"batchnorm:op": 12, "layernorm:decomposed": 2}."""
    return dict(sorted(Counter(f.label for f in found).items()))
