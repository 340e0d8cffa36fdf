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

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import BY_OP
from normonnx.graph.access import (
    DEFAULT_DOMAINS,
    constant_value,
    describe,
    is_constant,
    is_training_batchnorm,
    op_is,
    producer,
)
from normonnx.recognize.moments import MomentNorm, following_affine, match_core

_WEIGHT_INPUT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
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


def _group_reshapes(x: gs.Tensor, y: gs.Tensor) -> tuple[gs.Node, gs.Node] | None:
    """(Reshape in, Reshape out) when a normalization runs on a [N, G, -1] view of a tensor."""
    pre = producer(x)
    if not op_is(pre, "Reshape") or len(y.outputs) != 1:
        return None
    post = y.outputs[0]
    if not op_is(post, "Reshape"):
        return None
    return pre, post


def _classify(core: MomentNorm) -> tuple[str, str]:
    """(family, detail) of a matched core."""
    axes = core.normalized_axes()
    rank = core.rank()
    shown = list(axes) if axes is not None else list(core.axes)
    eps = f"eps {core.eps:g}{' in std' if core.eps_in_std else ''}"
    if not core.centered:
        return "rmsnorm", f"axes {shown}, {eps}"
    if _group_reshapes(core.x, core.y) is not None:
        return "groupnorm", f"ReduceMean form over a grouped view, {eps}"
    if rank is not None and axes is not None:
        trailing = axes == tuple(range(rank - len(axes), rank))
        if axes == (1,) and rank >= 3:
            return "layernorm", f"channels-first over axis 1, {eps}"
        if axes == tuple(range(2, rank)) and rank >= 3:
            # Same math as a LayerNorm over the trailing axes: the affine's shape
            # tells them apart ([C, 1, ...] is per channel); without one, rank 3
            # is the transformer LayerNorm, rank 4+ the InstanceNorm.
            affine = following_affine(core.y)
            param = affine.scale if affine.scale is not None else affine.bias
            per_channel = param is not None and param.ndim >= 2 and param.shape[-1] == 1
            if per_channel or (param is None and rank >= 4):
                return "instancenorm", f"over spatial axes {list(axes)}, {eps}"
        if trailing:
            return "layernorm", f"over the last {len(axes)} axes, {eps}"
    elif all(a < 0 for a in core.axes):
        return "layernorm", f"over axes {list(core.axes)}, {eps}"
    return "layernorm", f"over axes {shown}, {eps}"


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


def _channel_const(value: np.ndarray | None) -> bool:
    return (
        value is not None
        and value.dtype.kind == "f"
        and value.ndim >= 2
        and value.size > 1
        and (sum(d != 1 for d in value.shape) == 1)
    )


def scan(graph: gs.Graph) -> list[Found]:
    """Every normalization in ``graph`` (topological order of anchors)."""
    found: list[Found] = []
    claimed: set[int] = set()

    for node in graph.nodes:
        if not op_is(node, *_WEIGHT_INPUT_OPS) or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if is_constant(w):
            continue
        sub = _weight_subgraph(w)
        if sub is None:
            continue
        nodes, constant = sub
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
        if id(node) in claimed or node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op in BY_OP:
            item, nodes = _standard(node, graph.opset)
            found.append(item)
            claimed.update(id(n) for n in nodes)
            continue
        core = match_core(node) if node.op in ("Div", "Mul") else None
        if core is None or any(id(n) in claimed for n in core.nodes):
            continue
        family, detail = _classify(core)
        extra = []
        reshapes = _group_reshapes(core.x, core.y) if family == "groupnorm" else None
        if reshapes:
            extra = list(reshapes)
        affine = following_affine(reshapes[1].outputs[0] if reshapes else core.y)
        nodes = [*core.nodes, *extra, *affine.nodes]
        claimed.update(id(n) for n in nodes)
        affine_note = ", affine" if affine.nodes else ""
        found.append(Found(family, "decomposed", describe(core.anchor), _names(nodes), detail + affine_note))

    for node in graph.nodes:
        if id(node) in claimed or not op_is(node, "Mul") or len(node.inputs) != 2:
            continue
        consts = [constant_value(t) for t in node.inputs]
        if sum(c is not None for c in consts) != 1 or not _channel_const(next(c for c in consts if c is not None)):
            continue
        out = node.outputs[0]
        user = out.outputs[0] if len(out.outputs) == 1 else None
        if not op_is(user, "Add") or not any(_channel_const(constant_value(t)) for t in user.inputs):
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
    skipped (the passes work on the main graph only)."""
    found = []
    for node in graph.nodes:
        for attr, value in node.attrs.items():
            bodies = value if isinstance(value, list) else [value]
            for body in (b for b in bodies if isinstance(b, gs.Graph)):
                where = f"{SUBGRAPH_NOTE} ({attr} of {node.op} {describe(node)})"
                for sub in body.nodes:
                    if sub.op in BY_OP and sub.domain in DEFAULT_DOMAINS:
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
        return Found("batchnorm", "op", describe(node), (describe(node),), mode), [node]
    if node.op == "InstanceNormalization":
        pre, post = producer(node.inputs[0]), node.outputs[0].outputs
        if op_is(pre, "Reshape") and len(post) == 1 and op_is(post[0], "Reshape"):
            affine = following_affine(post[0].outputs[0])
            nodes = [pre, node, post[0], *affine.nodes]
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
