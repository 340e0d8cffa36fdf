"""rescale-streams: tensors beyond the half type's range carried at 2^-k, exactly.

A residual stream that reaches 1e5 (a VAE decoder's mid block, T5's feed-forward growth, a
LLaMA's massive-activation channels) cannot be stored in fp16. Its readers and writers make an
exact alternative to keeping it in float32: a *region* is a set of tensors that can carry one
scale s = 2^-k together, and its boundary absorbs s exactly.

Inside a region (every tensor scaled by s), ops that are positively homogeneous of degree one in
their data inputs: Add/Sub/Sum/Mean/Max/Min/Concat/Where of equally scaled terms (a constant term
scaled by s), Reshape/Transpose/Slice/Gather/Expand/Split and the other data movers, Pad (its
value scaled), Resize/Upsample, MaxPool/AveragePool, the mean/max/sum reductions, Relu/LeakyRelu/
PRelu/Neg/Abs, Clip (its bounds scaled), a float32 Cast.

On its boundary, ops whose scale on one side does not depend on the other:

* a normalization reader: ``N(s*x, eps*s^2) = N(x, eps)``. LayerNormalization, GroupNormalization,
  InstanceNormalization, RMSNormalization (epsilon times s^2), BatchNormalization (mean times s,
  variance and epsilon times s^2), and every decomposed core ``recognize.moments`` matches (its eps
  constant times s^2, or s where eps is added to the standard deviation);
* a linear op with constant weights (Conv, ConvTranspose, Gemm, MatMul) reading scale s_in and
  writing scale s_out: weights times s_out/s_in, bias times s_out; a Mul or Div by a constant
  likewise (the constant times s_out/s_in, or its inverse);
* a normalization op writing the region: its scale and bias times s_out; an embedding (a Gather
  from a constant table) writing it: the table times s_out.

A region that meets anything else on its boundary (Sigmoid, Softmax, Exp, GELU, a product of two
computed tensors, a graph input or output) is refused and named; its tensors stay float32 islands
(``to_half.plan_float32``). Powers of two scale float32 values exactly away from subnormals, so the
rescaled float32 model computes the same numbers: ``pipelines.half`` proves it before converting.

``plan_rescale`` finds the regions on the float32 graph from a calibration's ranges;
``RescaleStreams`` (Before: the float32 model. After: the same graph with the boundary constants
and epsilons scaled; no node added or removed) carries the plan out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.families import LINEAR_OPS
from normonnx.graph.access import constant_value, describe, is_constant, is_float32
from normonnx.graph.edit import set_input
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext
from normonnx.passes.to_half import MASK_MAGNITUDE, carries_mask, read_by_bodies
from normonnx.recognize.moments import MomentNorm, anchored_core

# Ops through which a scale passes unchanged: op -> the input positions that carry it (None: all).
_CARRY: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(("Add", "Sub", "Sum", "Mean", "Max", "Min", "Concat"), None),
    "Where": (1, 2),
    "Clip": (0, 1, 2),
    "Pad": (0, 2),
    **dict.fromkeys(
        ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "GatherElements", "GatherND",
         "Expand", "Tile", "Identity", "Split", "DepthToSpace", "SpaceToDepth", "Resize", "Upsample", "MaxPool",
         "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
         "ReduceL1", "ReduceL2", "Relu", "LeakyRelu", "PRelu", "Neg", "Abs", "Dropout", "Cast"),
        (0,),
    ),
}  # fmt: skip
# Values a carrier keeps in attributes that scale with its data (Clip before opset 11, Pad before 11, Resize's
# tf_crop_and_resize fill): scaled with them.
_SCALED_ATTRIBUTES = {"Clip": ("min", "max"), "Pad": ("value",), "Resize": ("extrapolation_value",)}
# Ops whose output the scale of their input does not reach (the value read is unaffected by it).
_BLIND = {"Shape", "Size", "ArgMax", "ArgMin"}
# Normalization ops: their statistics absorb the input's scale; these inputs carry the output's.
_NORM_AFFINE = {"LayerNormalization": (1, 2), "GroupNormalization": (1, 2), "InstanceNormalization": (1, 2),
                "RMSNormalization": (1,), "BatchNormalization": (1, 2)}  # fmt: skip
# How many times the calibrated peak fits under the half type's safe range once scaled.
HEADROOM = 2.0


@dataclass(frozen=True)
class Region:
    """Tensors carried at 2^-k, and the nodes on its boundary that absorb the scale."""

    tensors: tuple[str, ...]
    k: int
    peak: float
    boundary: tuple[str, ...]


@dataclass(frozen=True)
class RefusedRegion:
    """Tensors that could not carry one scale, and the op that stops them."""

    tensors: tuple[str, ...]
    peak: float
    reason: str


@dataclass(frozen=True)
class ScaledInput:
    """Multiply the constant at input ``index`` (or, with ``attribute``, that float attribute) by ``factor``."""

    index: int
    factor: float
    attribute: str = ""


@dataclass
class RescalePlan:
    regions: list[Region] = field(default_factory=list)
    refused: list[RefusedRegion] = field(default_factory=list)
    edits: dict[str, list[ScaledInput]] = field(default_factory=dict)  # node name -> its changes
    scales: dict[str, float] = field(default_factory=dict)  # tensor name -> 2^-k

    def scaled_ranges(self, ranges: dict[str, float]) -> dict[str, float]:
        """The calibration's peaks as the rescaled model sees them."""
        return {name: peak * self.scales.get(name, 1.0) for name, peak in ranges.items()}


def _carried(node: gs.Node) -> list[int]:
    """The positions of ``node``'s inputs that carry a scale through it (empty: not a carrier)."""
    if node.op == "Cast" and not (node.outputs and is_float32(node.outputs[0]) and is_float32(node.inputs[0])):
        return []
    if node.op not in _CARRY:
        return []
    wanted = _CARRY[node.op]
    positions = range(len(node.inputs)) if wanted is None else [k for k in wanted if k < len(node.inputs)]
    return [k for k in positions if node.inputs[k].name and is_float32(node.inputs[k])]


def _weight_position(node: gs.Node) -> int | None:
    """Where a linear op or a Mul/Div keeps its one constant operand (None: it has none, or two)."""
    if node.op in ("Conv", "ConvTranspose"):
        return 1 if is_constant(node.inputs[1]) else None
    if node.op in ("Gemm", "MatMul", "Mul"):
        constant = [k for k in (0, 1) if is_constant(node.inputs[k])]
        return constant[0] if len(constant) == 1 else None
    if node.op == "Div":
        return 1 if is_constant(node.inputs[1]) and not is_constant(node.inputs[0]) else None
    return None


def _data_position(node: gs.Node, weight: int) -> int:
    """Where a linear op or a Mul/Div with one constant operand reads its data."""
    return 0 if node.op in ("Conv", "ConvTranspose", "Div") else 1 - weight


def _norm_cores(graph: gs.Graph) -> dict[int, MomentNorm]:
    """Every decomposed normalization core, keyed by the id of each of its nodes."""
    cores: dict[int, MomentNorm] = {}
    for node in graph.nodes:
        core = anchored_core(node)
        for n in core.nodes if core is not None else ():
            cores.setdefault(id(n), core)
    return cores


class _Grower:
    """Grows one region from a tensor: the carriers join, the boundary is checked, anything else refuses."""

    def __init__(self, graph: gs.Graph, cores: dict[int, MomentNorm]) -> None:
        self.outputs = {id(t) for t in graph.outputs}
        self.inputs = {id(t) for t in graph.inputs}
        self.in_bodies = read_by_bodies(graph)
        self.cores = cores

    def grow(self, start: gs.Tensor) -> tuple[dict[str, gs.Tensor], str | None]:
        """The tensors that must share ``start``'s scale, and the first reason they cannot (the walk goes on past
        it, so that a refused region is named once, whichever of its tensors it is found from)."""
        members: dict[str, gs.Tensor] = {start.name: start}
        queue, first_problem = [start], None
        while queue:
            t = queue.pop()
            joined, problem = self._neighbours(t)
            first_problem = first_problem or problem
            for u in joined:
                if u.name not in members:
                    members[u.name] = u
                    queue.append(u)
        return members, first_problem

    def _neighbours(self, t: gs.Tensor) -> tuple[list[gs.Tensor], str | None]:
        """The tensors that must carry ``t``'s scale, and why ``t`` cannot carry one (None: it can)."""
        problems: list[str | None] = []
        if id(t) in self.outputs:
            problems.append(f"'{t.name}' is a graph output")
        if t.name in self.in_bodies:
            problems.append(f"'{t.name}' is read inside an If/Loop/Scan body")
        joined: list[gs.Tensor] = []
        writer = t.inputs[0] if t.inputs else None
        if id(t) in self.inputs or writer is None:
            problems.append(f"'{t.name}' is a graph input")
        elif id(writer) in self.cores:
            problems.append(f"'{t.name}' is written by a decomposed normalization ({describe(writer)})")
        else:
            problems.append(self._writes(writer, t, joined))
        problems += [self._reads(reader, t, joined) for reader in t.outputs]
        return joined, next((p for p in problems if p), None)

    def _writes(self, node: gs.Node, t: gs.Tensor, joined: list[gs.Tensor]) -> str | None:
        if node.op in LINEAR_OPS or node.op in ("Mul", "Div"):
            if _weight_position(node) is None:
                return f"{node.op} {describe(node)} of two computed tensors writes '{t.name}'"
            return _constant_bias(node)
        if node.op in _NORM_AFFINE:
            affine = [node.inputs[k] for k in _NORM_AFFINE[node.op] if k < len(node.inputs) and node.inputs[k].name]
            if node.op == "BatchNormalization" and not all(is_constant(x) for x in node.inputs[1:5]):
                return f"BatchNormalization {describe(node)} with computed statistics writes '{t.name}'"
            if not all(is_constant(x) for x in affine):
                return f"{node.op} {describe(node)} with a computed scale or bias writes '{t.name}'"
            return None
        if node.op == "Gather" and is_constant(node.inputs[0]):
            return None  # an embedding: its table takes the scale
        carried = _carried(node)
        if not carried or (t not in node.outputs[:1] and node.op != "Split"):
            return f"{node.op} {describe(node)} writes '{t.name}' and does not scale with its inputs"
        joined.extend(node.inputs[k] for k in carried if not is_constant(node.inputs[k]))
        joined.extend(o for o in node.outputs[1:] if node.op == "Split" and o.name)
        return None

    def _reads(self, node: gs.Node, t: gs.Tensor, joined: list[gs.Tensor]) -> str | None:
        core = self.cores.get(id(node))
        if core is not None:
            return None if core.x is t else f"'{t.name}' is read inside a decomposed normalization ({describe(node)})"
        if node.op in _BLIND:
            return None
        if node.op in _NORM_AFFINE:
            if node.inputs[0] is not t:
                return f"{node.op} {describe(node)} takes '{t.name}' as a parameter"
            if node.op == "BatchNormalization" and not all(is_constant(x) for x in node.inputs[3:5]):
                return f"BatchNormalization {describe(node)} with computed statistics reads '{t.name}'"
            return None
        if node.op in LINEAR_OPS or node.op in ("Mul", "Div"):
            position = _weight_position(node)
            if position is None:
                return f"{node.op} {describe(node)} reads '{t.name}' with another computed tensor"
            if node.inputs[_data_position(node, position)] is not t:
                return f"{node.op} {describe(node)} takes '{t.name}' as a parameter"
            return _constant_bias(node)
        carried = _carried(node)
        if not any(node.inputs[k] is t for k in carried):
            return f"{node.op} {describe(node)} reads '{t.name}' and does not scale with it"
        joined.extend(node.inputs[k] for k in carried if not is_constant(node.inputs[k]))
        outs = node.outputs if node.op == "Split" else node.outputs[:1]
        joined.extend(o for o in outs if o.name)
        return None


def _constant_bias(node: gs.Node) -> str | None:
    computed = len(node.inputs) > 2 and node.inputs[2].name and not is_constant(node.inputs[2])
    if node.op in ("Conv", "ConvTranspose", "Gemm") and computed:
        return f"{node.op} {describe(node)} has a computed bias"
    return None


def plan_rescale(graph: gs.Graph, ranges: dict[str, float], limit: float) -> RescalePlan:
    """The regions that carry every float32 tensor above ``limit`` in calibration at a power of two below
    it (``limit / HEADROOM`` at most), and the changes to their boundaries; or why a region cannot."""
    cores = _norm_cores(graph)
    grower = _Grower(graph, cores)
    plan = RescalePlan()
    seen: set[str] = set()
    tensors = graph.tensors()
    # A tensor inside a decomposed normalization (its x^2, its variance) is the island's own business, and one
    # that carries an attention mask (finfo(float32).min) is stored at the half type's largest value.
    inside = {o.name for core in {id(c): c for c in cores.values()}.values() for n in core.nodes for o in n.outputs}
    hot = sorted(
        (t for t in tensors.values() if isinstance(t, gs.Variable) and is_float32(t) and ranges.get(t.name, 0) > limit
         and t.name not in inside and not (ranges[t.name] >= MASK_MAGNITUDE and carries_mask(t))),
        key=lambda t: t.name,
    )  # fmt: skip
    for start in hot:
        if start.name in seen:
            continue
        members, problem = grower.grow(start)
        seen.update(members)
        peak = max(ranges.get(n, 0.0) for n in members)
        names = tuple(sorted(members))
        if problem:
            plan.refused.append(RefusedRegion(names, peak, problem))
            continue
        k = max(1, math.ceil(math.log2(peak * HEADROOM / limit)))
        plan.regions.append(Region(names, k, peak, ()))
        plan.scales.update(dict.fromkeys(names, 2.0**-k))
    _boundary_edits(graph, plan, cores)
    return plan


def _boundary_edits(graph: gs.Graph, plan: RescalePlan, cores: dict[int, MomentNorm]) -> None:
    """Each node touching a region, the constants and epsilons that absorb the scales around it."""
    scale = lambda t: plan.scales.get(t.name, 1.0)
    touched: dict[str, set[str]] = {}
    done_cores: set[int] = set()
    for node in graph.nodes:
        if not any(t.name in plan.scales for t in [*node.inputs, *node.outputs]):
            continue
        edits: list[ScaledInput] = []
        core = cores.get(id(node))
        if core is not None:
            if id(core) not in done_cores and core.x.name in plan.scales:
                done_cores.add(id(core))
                edits_at = _core_eps(core, scale(core.x))
                for owner, edit in edits_at:
                    plan.edits.setdefault(describe(owner), []).append(edit)
                    touched.setdefault(core.x.name, set()).add(describe(owner))
            continue
        s_in, s_out = scale(node.inputs[0]) if node.inputs else 1.0, scale(node.outputs[0])
        if node.op in _NORM_AFFINE:
            edits += [ScaledInput(k, s_out) for k in _NORM_AFFINE[node.op] if k < len(node.inputs)
                      and node.inputs[k].name]  # fmt: skip
            if s_in != 1.0:
                edits.append(ScaledInput(-1, s_in * s_in, "epsilon"))
                if node.op == "BatchNormalization":
                    edits += [ScaledInput(3, s_in), ScaledInput(4, s_in * s_in)]
        elif node.op in LINEAR_OPS or (node.op in ("Mul", "Div") and _weight_position(node) is not None):
            w = _weight_position(node)
            if w is not None:
                s_in = scale(node.inputs[_data_position(node, w)])
                factor = s_out / s_in if node.op != "Div" else s_in / s_out
                edits.append(ScaledInput(w, factor))
                if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name:
                    edits.append(ScaledInput(2, s_out))
        elif node.op == "Gather" and is_constant(node.inputs[0]):
            edits.append(ScaledInput(0, s_out))
        else:
            edits += [ScaledInput(k, s_out) for k in _carried(node) if is_constant(node.inputs[k])]
            edits += [ScaledInput(-1, s_out, a) for a in _SCALED_ATTRIBUTES.get(node.op, ()) if a in node.attrs]
        edits = [e for e in edits if e.factor != 1.0]
        if edits:
            plan.edits.setdefault(describe(node), []).extend(edits)
            for t in [*node.inputs, *node.outputs]:
                if t.name in plan.scales:
                    touched.setdefault(t.name, set()).add(describe(node))
    plan.regions = [
        Region(r.tensors, r.k, r.peak, tuple(sorted({n for t in r.tensors for n in touched.get(t, ())})))
        for r in plan.regions
    ]


def _core_eps(core: MomentNorm, s: float) -> Iterable[tuple[gs.Node, ScaledInput]]:
    """The Add of a decomposed core's eps, and the factor that keeps it exact for an input scaled by ``s``."""
    factor = s if core.eps_in_std else s * s
    for node in core.nodes:
        if node.op != "Add":
            continue
        for k, x in enumerate(node.inputs):
            value = constant_value(x)
            if value is not None and value.size == 1 and np.float32(value.reshape(-1)[0]) == np.float32(core.eps):
                yield node, ScaledInput(k, factor)
                return


@dataclass(frozen=True)
class _Edits(NodePlan):
    edits: tuple[ScaledInput, ...]


class RescaleStreams:
    """The plan's constants and epsilons scaled (see the module docstring)."""

    name = "rescale-streams"

    def __init__(self, plan: RescalePlan) -> None:
        self.plan = plan

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        return node if describe(node) in self.plan.edits else None

    def check(self, node: gs.Node, ctx: PassContext) -> _Edits:
        return _Edits(describe(node), NO_FAMILY, node, tuple(self.plan.edits[describe(node)]))

    def rewrite(self, plan: _Edits, ctx: PassContext) -> str:
        node = plan.node
        for edit in plan.edits:
            if edit.attribute:  # epsilon has a default (1e-5 for every normalization op); the others are present
                value = node.attrs.get(edit.attribute, 1e-5)
                node.attrs[edit.attribute] = float(np.float32(value) * np.float32(edit.factor))
                continue
            x = node.inputs[edit.index]
            value = np.asarray(constant_value(x))
            scaled = np.asarray(value * np.asarray(edit.factor, dtype=value.dtype), dtype=value.dtype)
            set_input(node, edit.index, ctx.constant(f"{x.name}__rescaled", scaled))
        factors = sorted({e.factor for e in plan.edits})
        return "scaled by " + ", ".join(f"2^{round(math.log2(f))}" for f in factors)
