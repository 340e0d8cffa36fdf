"""Norm-aware half precision: which nodes stay in float32, and the model written that way.

Every float32 tensor goes to fp16 or bf16, except where half arithmetic is known to break:

* normalization statistics. LayerNormalization, GroupNormalization-21 and RMSNormalization-23
  run in half with ``stash_type=1`` (the spec computes their statistics in float32); every
  other normalization op (InstanceNormalization, a BatchNormalization that did not fold,
  GroupNormalization-18, unless the deployment target's kernel keeps its statistics in float32:
  ``float32_statistics``) and every decomposed form the recognizer knows (LayerNorm, RMSNorm,
  GroupNorm and InstanceNorm written out, the E[x^2] - E[x]^2 and tf2onnx's moments forms) is
  an fp32 island from the reduction's input to the normalized output; the affine after it
  runs in half;
* Pow and Exp (they overflow fp16 from modest inputs), and Softmax and sum reductions over an
  axis of ``LONG_AXIS`` or more (or of unknown length);
* any tensor a float32 calibration run sees above the half type's largest value over
  ``RANGE_MARGIN`` (after ``passes.rescale`` carried what it could at a power-of-two scale): its
  producer and its readers run in float32; a tensor that is that large only because it carries an
  attention mask does not count;
* a reader of a constant beyond the half range that is no mask; an If/Loop/Scan node (its body is not
  converted), and what its body reads from outside.

A mask constant (finite, ``MASK_MAGNITUDE`` or more: finfo(float32).min) is stored at ``mask_fill``.

Islands next to each other merge (a cheap node between two fp32 islands joins them), a Cast
pair that only round-trips is cancelled, and a constant is stored once, in the type its readers
use (float32 with one shared Cast when both read it).

The plan (``plan_float32``) is made once on the float32 graph; two rules carry it out:

* ``to-half``: every node in its precision. Before: a float32 node. After: the same node on
  half data (its float attributes, ``Cast(to=float)`` and float tensor attributes in the half
  type, ``stash_type=1``), or, kept in float32, the same node; either way every float input
  stored in the other type is read through one shared Cast, a graph input is declared in the
  type it is stored in, and a graph output keeps its float32 type under ``keep_io_types``
  through a final Cast. Exact up to the half type's rounding, which the faithful gate judges.
* ``cast-round-trips``: Before: ``Cast(Cast(x, to=float), to=half)`` of an x that a Cast made
  half. After: x. Exact: the float32 detour of a half value is lossless. Only when nothing
  else reads the middle and neither Cast's output is a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from normonnx.families import LINEAR_OPS
from normonnx.graph.access import describe, is_float32, read_from_outside, static_shape
from normonnx.graph.edit import bypass, redirect, set_input, set_outputs
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext
from normonnx.recognize.moments import anchored_core

FLOAT = TensorProto.FLOAT
HALF_MAX = {TensorProto.FLOAT16: 65504.0, TensorProto.BFLOAT16: 3.3895e38}
RANGE_MARGIN = 8.0
# A constant this large is a mask (finfo(float32).min before a Softmax), not a value: it is stored as a quarter
# of the half type's largest finite value (``mask_fill``), which masks the same.
MASK_MAGNITUDE = 1e30
MASK_HEADROOM = 4.0
# Ops through which a mask value reaches attention scores (Where(cond, min, 0), Expand, the Add to the scores).
_MASK_CARRIERS = {"Where", "Add", "Sub", "Expand", "Reshape", "Unsqueeze", "Slice", "Cast", "Mul", "Min", "Max",
                  "Identity", "Concat", "Tile"}  # fmt: skip
LONG_AXIS = 512
# Inputs the spec types as float32 whatever the data type.
_FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_WITH_STASH = {"LayerNormalization": 17, "GroupNormalization": 21, "RMSNormalization": 23}
_ISLAND_OPS = {"InstanceNormalization", "BatchNormalization", "GroupNormalization", "LpNormalization",
               "MeanVarianceNormalization"}  # fmt: skip
_ALWAYS_FP32 = {"Pow": "Pow overflows fp16 from modest inputs", "Exp": "Exp overflows fp16 above 11"}
_LONG_REDUCTIONS = {"Softmax", "LogSoftmax", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
                    "CumSum"}  # fmt: skip


@dataclass(frozen=True)
class KeptFloat32:
    node: str
    op: str
    reason: str


def _reduced_length(node: gs.Node) -> int | None:
    """The length of the axis (or product of the axes) a Softmax or reduction runs over, when known."""
    shape = static_shape(node.inputs[0]) if node.inputs else None
    if shape is None:
        return None
    if node.op in ("Softmax", "LogSoftmax", "CumSum"):
        axis = int(node.attrs.get("axis", -1))
        return int(shape[axis]) if -len(shape) <= axis < len(shape) else None
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        values = getattr(node.inputs[1], "values", None)
        axes = None if values is None else [int(a) for a in np.asarray(values).reshape(-1)]
    if axes is None:
        return int(np.prod(shape)) if shape else 1
    return int(np.prod([shape[a] for a in axes])) if axes else int(np.prod(shape))


def mask_fill(half: int) -> float:
    """What a mask value is stored as in ``half``: a quarter of its largest finite value, so that two masks
    and a score added together still fit (at the largest value itself they add up to -inf)."""
    return HALF_MAX[half] / MASK_HEADROOM


def half_values(values: np.ndarray, half: int) -> np.ndarray:
    """``values`` in the half type: a mask value (finite, ``MASK_MAGNITUDE`` or more) at ``mask_fill``, any
    other beyond the range at its largest finite value."""
    top, fill = HALF_MAX[half], mask_fill(half)
    values = np.asarray(values)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        masked = finite & (np.abs(values) >= MASK_MAGNITUDE)
        stored = np.where(masked, np.sign(values) * fill, np.where(finite, np.clip(values, -top, top), values))
    return stored.astype(_np(half))


def masks(graph: gs.Graph, half: int) -> list[str]:
    """The float constants holding a finite value of at least ``MASK_MAGNITUDE``: stored at ``mask_fill``."""
    found = []
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and is_float32(t) and _beyond(t.values, MASK_MAGNITUDE):
            found.append(t.name)
    return sorted(found)


def _beyond(values, magnitude: float) -> bool:
    """Whether a finite value of ``values`` reaches ``magnitude``."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    return bool(np.any(values[np.isfinite(values)] >= magnitude))


def plan_float32(
    graph: gs.Graph, ranges: dict[str, float], half: int, float32_statistics: frozenset[str] = frozenset()
) -> dict[str, KeptFloat32]:
    """Node name -> why it stays in float32 (every other float node goes to ``half``). ``float32_statistics``:
    the normalization ops whose kernel, on the deployment target, accumulates in float32 for half inputs."""
    kept: dict[str, KeptFloat32] = {}

    def keep(node: gs.Node, reason: str) -> None:
        kept.setdefault(describe(node), KeptFloat32(describe(node), node.op, reason))

    in_bodies = read_by_bodies(graph)
    for node in graph.nodes:
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
               for v in node.attrs.values()):  # fmt: skip
            keep(node, f"{node.op} runs its body in float32 (bodies are not converted)")
            continue
        if any(o.name in in_bodies for o in node.outputs):
            keep(node, "its output is read inside an If/Loop/Scan body, which stays float32")
            continue
        problem = _half_unsupported(node, half, graph.opset)
        if problem:
            keep(node, problem)
            continue
        if node.op in _WITH_STASH and graph.opset >= _WITH_STASH[node.op]:
            continue  # runs in half; its statistics are float32 by stash_type=1 (set on conversion)
        if node.op in _ISLAND_OPS and node.op not in float32_statistics:
            keep(node, f"{node.op} has no stash_type: its statistics stay in float32")
        elif node.op in _ALWAYS_FP32:
            keep(node, _ALWAYS_FP32[node.op])
        elif node.op in _LONG_REDUCTIONS:
            n = _reduced_length(node)
            if n is None or n >= LONG_AXIS:
                keep(node, f"{node.op} over {'an axis of unknown length' if n is None else f'{n} elements'}")
    for node in graph.nodes:  # decomposed normalizations: statistics through the normalizing node
        core = anchored_core(node)
        if core is not None:
            for n in core.nodes:
                keep(n, f"statistics of a decomposed normalization (anchored at {describe(core.anchor or node)})")
    for node in graph.nodes:  # a constant beyond the half range that is no mask: its reader computes in float32
        for k, x in enumerate(node.inputs):
            if not isinstance(x, gs.Constant) or not is_float32(x) or (node.op, k) in _FLOAT32_INPUTS:
                continue
            magnitude = np.abs(np.asarray(x.values, dtype=np.float64))
            out_of_range = magnitude[np.isfinite(magnitude) & (magnitude > HALF_MAX[half])]
            if out_of_range.size and out_of_range.min() < MASK_MAGNITUDE:
                keep(node, f"reads the constant '{x.name}' ({out_of_range.min():.3g}), beyond {HALF_MAX[half]:.5g}")
    limit = HALF_MAX[half] / RANGE_MARGIN
    for t in graph.tensors().values():
        peak = ranges.get(t.name)
        if peak is None or peak <= limit or (peak >= MASK_MAGNITUDE and carries_mask(t)):
            continue
        reason = f"'{t.name}' reaches {peak:.3g} in calibration, beyond {HALF_MAX[half]:.5g} / {RANGE_MARGIN:g}"
        for n in [*t.inputs, *t.outputs]:
            keep(n, reason)
    _merge_islands(graph, kept)
    return kept


def read_by_bodies(graph: gs.Graph) -> set[str]:
    """Names of this graph's tensors that an If/Loop/Scan body reads from the outer scope."""
    return {t.name for node in graph.nodes for t in read_from_outside(node)}


def carries_mask(t: gs.Tensor) -> bool:
    """Whether ``t`` is computed from a mask constant (finfo(float32).min added to attention scores): with the
    mask stored at ``mask_fill`` it masks the same in half, so its range says nothing."""
    seen, stack = set(), [t]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, gs.Constant):
            if _beyond(x.values, MASK_MAGNITUDE):
                return True
            continue
        node = x.inputs[0] if x.inputs else None
        if node is None or node.op not in _MASK_CARRIERS:
            continue
        stack.extend(i for i in node.inputs if is_float32(i))
    return False


def _half_unsupported(node: gs.Node, half: int, opset: int) -> str | None:
    """Why ``node``'s op cannot take its float data in ``half`` at this opset (None if it can): the spec's
    type constraint of its first input (Conv has no bfloat16 before opset 22), or an op the spec lacks."""
    float_in = [t for t in node.inputs if is_float32(t)]
    if not float_in:
        return None
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return f"{node.op} is not an ONNX op at opset {opset}: its types are not normonnx's to change"
    wanted = f"tensor({'float16' if half == TensorProto.FLOAT16 else 'bfloat16'})"
    index = next(k for k, t in enumerate(node.inputs) if t in float_in)
    formal = schema.inputs[min(index, len(schema.inputs) - 1)] if schema.inputs else None
    allowed = next(
        (c.allowed_type_strs for c in schema.type_constraints if formal and c.type_param_str == formal.type_str), None
    )
    if allowed is not None and wanted not in allowed:
        return f"{node.op}-{schema.since_version} does not take {wanted[7:-1]} (the spec's types)"
    return None


def _merge_islands(graph: gs.Graph, kept: dict[str, KeptFloat32]) -> None:
    """A cheap half node whose float inputs all come from fp32 nodes and whose readers all are fp32 joins
    them: one island instead of two, and no Cast pair around it."""
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            name = describe(node)
            if name in kept or node.op in LINEAR_OPS or not node.outputs:
                continue
            ins = [t for t in node.inputs if t.inputs]
            outs = [u for t in node.outputs for u in t.outputs]
            if (
                ins
                and outs
                and all(describe(t.inputs[0]) in kept for t in ins)
                and all(describe(u) in kept for u in outs)
            ):
                kept[name] = KeptFloat32(name, node.op, "between two float32 islands: merged into one")
                changed = True


@dataclass(frozen=True)
class _Storage:
    """The type every float32 tensor is stored in once converted, and the tensors the spec keeps float32."""

    types: dict[int, int]  # id(tensor) -> FLOAT or the half type
    exempt: frozenset[int]  # ids of tensors some op reads as float32 whatever the data type (Resize scales)


@dataclass(frozen=True)
class _NodePlan(NodePlan):
    precision: int


class ToHalf:
    """Every node in the precision the plan gives it (see the module docstring)."""

    name = "to-half"

    def __init__(self, kept: dict[str, KeptFloat32], half: int, keep_io_types: bool) -> None:
        self.kept, self.half, self.keep_io_types = kept, half, keep_io_types

    def _precision(self, node: gs.Node) -> int:
        return FLOAT if describe(node) in self.kept else self.half

    def survey(self, ctx: PassContext) -> _Storage:
        graph, half = ctx.graph, self.half
        exempt = {id(n.inputs[k]) for n in graph.nodes for op, k in _FLOAT32_INPUTS if n.op == op and len(n.inputs) > k}
        types: dict[int, int] = {}
        in_bodies = read_by_bodies(graph)
        for t in graph.inputs:
            if is_float32(t):
                types[id(t)] = FLOAT if self.keep_io_types or t.name in in_bodies else half
        readers: dict[int, set[int]] = {}
        constants: dict[int, gs.Constant] = {}
        for n in graph.nodes:
            for k, o in enumerate(n.outputs):
                if is_float32(o):
                    # A normalization op's Mean/InvStdDev outputs have the stash type: float32 (stash_type=1).
                    stats = k > 0 and n.op in _WITH_STASH
                    types[id(o)] = FLOAT if self._precision(n) == FLOAT or stats else half
            for k, x in enumerate(n.inputs):
                if isinstance(x, gs.Constant) and is_float32(x) and (n.op, k) not in _FLOAT32_INPUTS:
                    readers.setdefault(id(x), set()).add(self._precision(n))
                    constants[id(x)] = x
        for key, c in constants.items():  # a constant a body reads too stays float32: the body is not converted
            types[key] = half if readers[key] == {half} and c.name not in in_bodies else FLOAT
        for c in (t for t in graph.tensors().values() if isinstance(t, gs.Constant) and is_float32(t)):
            types.setdefault(id(c), FLOAT)
        return _Storage(types, frozenset(exempt))

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node:
        return node

    def check(self, node: gs.Node, ctx: PassContext) -> _NodePlan | None:
        precision = self._precision(node)
        storage: _Storage = ctx.survey
        if precision == FLOAT and not any(
            storage.types.get(id(x), FLOAT) != FLOAT and id(x) not in storage.exempt for x in node.inputs
        ):
            return None  # float32 among float32: nothing to change
        return _NodePlan(describe(node), NO_FAMILY, node, precision)

    def rewrite(self, plan: _NodePlan, ctx: PassContext) -> str:
        node, precision, storage = plan.node, plan.precision, ctx.survey
        for k, x in enumerate(list(node.inputs)):
            stored = storage.types.get(id(x))
            if stored is None or id(x) in storage.exempt:
                continue
            if x in ctx.graph.inputs:
                x.dtype = _np(stored)
            if isinstance(x, gs.Constant) and stored == self.half and is_float32(x):
                x.values = half_values(np.asarray(x.values), self.half)
            if stored != precision:
                set_input(node, k, self._cast(x, precision, ctx))
        if precision == FLOAT:
            return f"kept in float32: {self.kept[describe(node)].reason}"
        self._attributes(node)
        for o in node.outputs:
            if storage.types.get(id(o)) == self.half:
                o.dtype = _np(self.half)
                if o in ctx.outputs and self.keep_io_types:
                    self._float_output(node, o, ctx)
        return f"in {'fp16' if self.half == TensorProto.FLOAT16 else 'bf16'}"

    def _attributes(self, node: gs.Node) -> None:
        """Float32 named in a half node's attributes is the half type there."""
        half = self.half
        for key, value in list(node.attrs.items()):
            if (node.op == "Cast" and key == "to" and value == FLOAT) or (key == "dtype" and value == FLOAT):
                node.attrs[key] = half
            elif isinstance(value, gs.Constant) and is_float32(value):
                node.attrs[key] = gs.Constant(value.name, half_values(np.asarray(value.values), half))
            elif isinstance(value, np.ndarray) and value.dtype == np.float32:
                node.attrs[key] = half_values(value, half)
        if node.op in _WITH_STASH:
            node.attrs["stash_type"] = 1

    def _cast(self, x: gs.Tensor, to: int, ctx: PassContext) -> gs.Tensor:
        """``x`` as ``to``: one Cast per tensor and type, shared by every reader."""
        key = (id(x), to)
        if key not in ctx.memo:
            out = gs.Variable(ctx.fresh(f"{x.name}__as_{'fp32' if to == FLOAT else 'half'}"), dtype=_np(to))
            ctx.add_node(gs.Node("Cast", name=ctx.fresh(f"{out.name}_cast"), attrs={"to": to}, inputs=[x],
                                 outputs=[out]))  # fmt: skip
            ctx.memo[key] = out
        return ctx.memo[key]

    def _float_output(self, node: gs.Node, o: gs.Tensor, ctx: PassContext) -> None:
        """A graph output stays float32 under keep_io_types: the node writes ``<name>__half``, a Cast the output."""
        inner = gs.Variable(ctx.fresh(f"{o.name}__half"), dtype=o.dtype, shape=o.shape)
        set_outputs(node, *[inner if t is o else t for t in node.outputs])
        redirect(o, inner)
        o.dtype = np.float32
        ctx.add_node(gs.Node("Cast", name=ctx.fresh(f"{o.name}__output_cast"), attrs={"to": FLOAT}, inputs=[inner],
                             outputs=[o]))  # fmt: skip


def _np(dtype: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))


@dataclass(frozen=True)
class _RoundTrip(NodePlan):
    source: gs.Tensor


class CastRoundTrips:
    """``Cast(Cast(x, to=float32), to=half)`` of a half x made by a Cast is x (see the module docstring)."""

    name = "cast-round-trips"
    ops = ("Cast",)

    def match(self, node: gs.Node, ctx: PassContext) -> gs.Node | None:
        middle = node.inputs[0]
        first = middle.inputs[0] if middle.inputs else None
        if first is None or first.op != "Cast" or first.attrs.get("to") != FLOAT:
            return None
        before = first.inputs[0].inputs[0] if first.inputs[0].inputs else None
        to = node.attrs.get("to")
        if to not in HALF_MAX or before is None or before.op != "Cast" or before.attrs.get("to") != to:
            return None
        return node

    def check(self, node: gs.Node, ctx: PassContext) -> _RoundTrip | None:
        middle = node.inputs[0]
        if len(middle.outputs) != 1 or middle in ctx.outputs or node.outputs[0] in ctx.outputs:
            return None
        return _RoundTrip(describe(node), NO_FAMILY, node, middle.inputs[0].inputs[0])

    def rewrite(self, plan: _RoundTrip, ctx: PassContext) -> str:
        first = plan.node.inputs[0].inputs[0]
        bypass(plan.node, plan.source)
        bypass(first, plan.source)
        return "float32 round trip removed"
