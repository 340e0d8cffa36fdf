"""Norm-aware half precision: which nodes stay in float32, and the model written that way.

Every float32 tensor goes to fp16 or bf16, except where half arithmetic is known to break:

* normalization statistics. LayerNormalization, GroupNormalization-21 and RMSNormalization-23
  run in half with ``stash_type=1`` (the spec computes their statistics in float32); every
  other normalization op (InstanceNormalization, a BatchNormalization that did not fold,
  GroupNormalization-18) and every decomposed form the recognizer knows (LayerNorm, RMSNorm,
  GroupNorm and InstanceNorm written out, the E[x^2] - E[x]^2 and tf2onnx's moments forms) is
  an fp32 island from the reduction's input to the normalized output; the affine after it
  runs in half;
* Pow and Exp (they overflow fp16 from modest inputs), and Softmax and sum reductions over an
  axis of ``LONG_AXIS`` or more (or of unknown length);
* any tensor a float32 calibration run sees above the half type's largest value over
  ``RANGE_MARGIN``: its producer and its readers run in float32.

Islands next to each other merge (a cheap node between two fp32 islands joins them), a Cast
pair that only round-trips is cancelled, and a constant is stored once, in the type its readers
use (float32 with one shared Cast when both read it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from normonnx.families import LINEAR_OPS
from normonnx.graph.access import describe, static_shape
from normonnx.recognize.moments import match_core, match_shifted

FLOAT = TensorProto.FLOAT
HALF_MAX = {TensorProto.FLOAT16: 65504.0, TensorProto.BFLOAT16: 3.3895e38}
RANGE_MARGIN = 8.0
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


def plan_float32(graph: gs.Graph, ranges: dict[str, float], half: int) -> dict[str, KeptFloat32]:
    """Node name -> why it stays in float32 (every other float node goes to ``half``)."""
    kept: dict[str, KeptFloat32] = {}

    def keep(node: gs.Node, reason: str) -> None:
        kept.setdefault(describe(node), KeptFloat32(describe(node), node.op, reason))

    for node in graph.nodes:
        problem = _half_unsupported(node, half, graph.opset)
        if problem:
            keep(node, problem)
            continue
        if node.op in _WITH_STASH and graph.opset >= _WITH_STASH[node.op]:
            continue  # runs in half; its statistics are float32 by stash_type=1 (set on conversion)
        if node.op in _ISLAND_OPS:
            keep(node, f"{node.op} has no stash_type: its statistics stay in float32")
        elif node.op in _ALWAYS_FP32:
            keep(node, _ALWAYS_FP32[node.op])
        elif node.op in _LONG_REDUCTIONS:
            n = _reduced_length(node)
            if n is None or n >= LONG_AXIS:
                keep(node, f"{node.op} over {'an axis of unknown length' if n is None else f'{n} elements'}")
    for node in graph.nodes:  # decomposed normalizations: statistics through the normalizing node
        core = match_core(node) if node.op in ("Div", "Mul") else None
        if core is None and node.op == "Add":
            shifted = match_shifted(node)
            core = shifted[0] if shifted else None
        if core is not None:
            for n in core.nodes:
                keep(n, f"statistics of a decomposed normalization (anchored at {describe(core.anchor or node)})")
    limit = HALF_MAX[half] / RANGE_MARGIN
    for t in graph.tensors().values():
        peak = ranges.get(t.name)
        if peak is None or peak <= limit:
            continue
        reason = f"'{t.name}' reaches {peak:.3g} in calibration, beyond {HALF_MAX[half]:.5g} / {RANGE_MARGIN:g}"
        for n in [*t.inputs, *t.outputs]:
            keep(n, reason)
    _merge_islands(graph, kept)
    return kept


def _half_unsupported(node: gs.Node, half: int, opset: int) -> str | None:
    """Why ``node``'s op cannot take its float data in ``half`` at this opset (None if it can): the spec's
    type constraint of its first input (Conv has no bfloat16 before opset 22), or an op the spec lacks."""
    float_in = [t for t in node.inputs if t.dtype is not None and np.dtype(t.dtype) == np.float32]
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


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    names = {v.name for v in [*g.input, *g.value_info, *g.output] if v.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in g.initializer if t.data_type == FLOAT}
    return names


def convert(model: onnx.ModelProto, kept: dict[str, KeptFloat32], half: int, keep_io_types: bool) -> onnx.ModelProto:
    """``model`` (with named nodes) in ``half``, but for the ``kept`` nodes, with the casts between."""
    floats = _float_tensors(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    in_fp32 = {n.name for n in g.node if n.name in kept}
    storage: dict[str, int] = {}  # float tensor -> the type it is stored in
    for i in g.input:
        if i.name in floats and i.name not in inits:
            storage[i.name] = FLOAT if keep_io_types else half
    for n in g.node:
        for k, o in enumerate(n.output):
            if o in floats:
                # A normalization op's Mean/InvStdDev outputs have the stash type: float32 (stash_type=1).
                stats = k > 0 and n.op_type in _WITH_STASH
                storage[o] = FLOAT if n.name in in_fp32 or stats else half
    exempt = {n.input[k] for n in g.node for op, k in _FLOAT32_INPUTS if n.op_type == op and len(n.input) > k}
    readers: dict[str, set[int]] = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            if x in inits and x in floats and (n.op_type, k) not in _FLOAT32_INPUTS:
                readers.setdefault(x, set()).add(FLOAT if n.name in in_fp32 else half)
    new_inits = []
    for t in g.initializer:
        types = readers.get(t.name)
        if t.data_type == FLOAT and types == {half}:
            value = numpy_helper.to_array(t).astype(onnx.helper.tensor_dtype_to_np_dtype(half))
            new_inits.append(numpy_helper.from_array(value, t.name))
            storage[t.name] = half
        else:
            new_inits.append(t)
            if t.data_type == FLOAT:
                storage[t.name] = FLOAT
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def as_type(name: str, to: int) -> str:
        if (name, to) not in casts:
            casts[(name, to)] = f"{name}__as_{'fp32' if to == FLOAT else 'half'}"
            nodes.append(helper.make_node("Cast", [name], [casts[(name, to)]], to=to, name=f"{casts[(name, to)]}_cast"))
        return casts[(name, to)]

    for n in g.node:
        precision = FLOAT if n.name in in_fp32 else half
        for k, x in enumerate(n.input):
            if x in storage and x not in exempt and storage[x] != precision:
                n.input[k] = as_type(x, precision)
        if precision == half:
            for a in n.attribute:
                if (n.op_type == "Cast" and a.name == "to" and a.i == FLOAT) or (a.name == "dtype" and a.i == FLOAT):
                    a.i = half
                elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    arr = numpy_helper.to_array(a.t).astype(onnx.helper.tensor_dtype_to_np_dtype(half))
                    a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
            if n.op_type in _WITH_STASH:
                stash = [a for a in n.attribute if a.name == "stash_type"]
                if stash:
                    stash[0].i = 1
                else:
                    n.attribute.append(helper.make_attribute("stash_type", 1))
        nodes.append(n)
    for o in g.output:
        if o.name not in storage:
            continue
        want = FLOAT if keep_io_types else storage[o.name]
        if storage[o.name] != want:
            inner = f"{o.name}__half"
            for n in nodes:
                n.output[:] = [inner if x == o.name else x for x in n.output]
                n.input[:] = [inner if x == o.name else x for x in n.input]
            nodes.append(helper.make_node("Cast", [inner], [o.name], to=want, name=f"{o.name}__output_cast"))
        o.type.tensor_type.elem_type = want
    stored = {t.name: t.data_type for t in new_inits}
    for i in g.input:  # an initializer listed as an input too (ir_version 3) is declared as it is stored
        if i.name in stored:
            i.type.tensor_type.elem_type = stored[i.name]
        elif i.name in storage:
            i.type.tensor_type.elem_type = storage[i.name]
    del g.node[:]
    g.node.extend(_without_round_trips(nodes, {o.name for o in g.output}))
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]
    return model


def _without_round_trips(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Cast(Cast(x, to=float32), to=half) of a half x is x: the pair goes when nothing else reads the middle."""
    producer = {o: n for n in nodes for o in n.output}
    reads: dict[str, int] = {}
    for n in nodes:
        for x in n.input:
            reads[x] = reads.get(x, 0) + 1
    replace: dict[str, str] = {}
    dropped: set[int] = set()
    for n in nodes:
        if n.op_type != "Cast" or n.input[0] not in producer:
            continue
        first = producer[n.input[0]]
        to = next(a.i for a in n.attribute if a.name == "to")
        if first.op_type != "Cast" or next(a.i for a in first.attribute if a.name == "to") != FLOAT:
            continue
        source = first.input[0]
        if reads.get(n.input[0], 0) != 1 or n.output[0] in outputs or n.input[0] in outputs:
            continue
        if to in HALF_MAX and _type_of(source, producer) == to:
            replace[n.output[0]] = source
            dropped.update({id(n), id(first)})
    kept = []
    for n in nodes:
        if id(n) in dropped:
            continue
        n.input[:] = [replace.get(x, x) for x in n.input]
        kept.append(n)
    return kept


def _type_of(name: str, producer: dict[str, onnx.NodeProto]) -> int | None:
    n = producer.get(name)
    if n is not None and n.op_type == "Cast":
        return next(a.i for a in n.attribute if a.name == "to")
    return None
