"""Half-faithful evaluation: what a GPU computes for an fp16/bf16 model, run on the CPU.

onnxruntime's CPU provider runs most fp16 ops in fp32 behind casts it inserts, and only rounds
where those casts happen to be, so a model whose (x - mean)^2 overflows fp16 passes every CPU
check. A GPU stores every tensor in its type and computes each kernel in fp32 inside (elementwise
math, reductions, GEMM and convolution accumulators). This module writes that down as a float32
model: every op computes in float32, and every tensor the half model holds in fp16 or bf16 is
rounded to that type (a Cast to it and back) as it is written. Normalization ops honour
``stash_type``: with 1 (the default) their statistics are float32, as the op computes them; with 0
the op is first written out as its exact subgraph in the half type, so every statistic is rounded.

``validate.runners.FaithfulRunner`` runs the copy on onnxruntime with optimizations off (an
optimizer would cancel the rounding casts). If/Loop/Scan bodies that hold half tensors are not
rewritten: ``faithful_copy`` says so.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_NORM_OPS_WITH_STASH = {"LayerNormalization": "layernorm", "GroupNormalization": "groupnorm",
                        "RMSNormalization": "rmsnorm"}  # fmt: skip


class NotSimulated(ValueError):
    """The model holds half tensors where the simulation does not reach (a body)."""


def has_half_tensors(model: onnx.ModelProto) -> bool:
    """Whether the model computes anything in fp16 or bf16 (by its weights, casts or graph inputs/outputs)."""
    g = model.graph
    if any(t.data_type in HALF_TYPES for t in g.initializer):
        return True
    if any(v.type.tensor_type.elem_type in HALF_TYPES for v in [*g.input, *g.output, *g.value_info]):
        return True
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i in HALF_TYPES:
                return True
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF_TYPES:
                return True
    return False


def _stash_zero_norms_lowered(model: onnx.ModelProto) -> onnx.ModelProto:
    """Normalization ops with stash_type=0 on half data written out as their subgraph in the half type."""
    wanted = {
        _NORM_OPS_WITH_STASH[n.op_type]
        for n in model.graph.node
        if n.op_type in _NORM_OPS_WITH_STASH and any(a.name == "stash_type" and a.i == 0 for a in n.attribute)
    }
    if not wanted:
        return model
    from normonnx.graph.access import describe
    from normonnx.graph.bridge import prepare_graph
    from normonnx.passes import FoldOptions
    from normonnx.passes.registry import lower_pipeline

    graph = prepare_graph(model, always_infer=True)
    stash_one = {
        describe(n) for n in graph.nodes if n.op in _NORM_OPS_WITH_STASH and int(n.attrs.get("stash_type", 1)) == 1
    }
    options = FoldOptions(undone=frozenset(stash_one))
    return lower_pipeline(sorted(wanted)).apply(model, options, graph=graph, sort=True).model


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _bodies_hold_half(model: onnx.ModelProto) -> bool:
    for n in model.graph.node:
        for a in n.attribute:
            for body in [a.g] if a.HasField("g") else a.graphs:
                sub = onnx.ModelProto(graph=body)
                if has_half_tensors(sub) or any(x.data_type in HALF_TYPES for x in body.initializer):
                    return True
    return False


def faithful_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 model that computes what a GPU computes for ``model`` (see the module docstring).

    Half inputs and outputs become float32 (values rounded to the half type on the way in, and exact
    in it on the way out): numpy has no bfloat16 that onnxruntime takes.
    """
    if _bodies_hold_half(model):
        raise NotSimulated("half tensors inside If/Loop/Scan bodies are not simulated")
    model = _stash_zero_norms_lowered(model)
    types = _types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.value_info[:]
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}

    def rounded(name: str, half: int, final: str) -> None:
        """``name`` (computed in float32) rounded to ``half``: ``final__half`` in that type, ``final`` back
        in float32."""
        nodes.append(helper.make_node("Cast", [name], [f"{final}__half"], to=half))
        nodes.append(helper.make_node("Cast", [f"{final}__half"], [final], to=TensorProto.FLOAT))

    for t in g.initializer:
        if t.data_type in HALF_TYPES:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))
    for i in g.input:
        half = i.type.tensor_type.elem_type
        if half in HALF_TYPES:  # fed in float32 (numpy has no bfloat16 onnxruntime takes), rounded on entry
            i.type.tensor_type.elem_type = TensorProto.FLOAT
            rename[i.name] = f"{i.name}__f32"
            rounded(i.name, half, rename[i.name])
    outputs = {o.name for o in g.output}
    for o in g.output:
        if o.type.tensor_type.elem_type in HALF_TYPES:
            o.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in model.graph.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.input[:] = [rename.get(x, x) for x in n.input]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF_TYPES:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
            if n.op_type == "Cast" and a.name == "to" and a.i in HALF_TYPES:
                a.i = TensorProto.FLOAT
        halves = {}
        for k, o in enumerate(n.output):
            half = types.get(o)
            if o and half in HALF_TYPES:
                halves[o] = half
                n.output[k] = f"{o}__f32raw"
        nodes.append(n)
        for o, half in halves.items():
            rename[o] = f"{o}__f32"
            rounded(f"{o}__f32raw", half, rename[o])
            if o in outputs:  # the graph output: its rounded value, in float32
                nodes.append(helper.make_node("Identity", [rename[o]], [o]))
    del g.node[:]
    g.node.extend(nodes)
    return out


def half_type(model: onnx.ModelProto) -> int | None:
    """The half type a model computes in (fp16 before bf16 when both appear), or None."""
    found = set()
    for t in model.graph.initializer:
        found.add(t.data_type)
    for v in [*model.graph.input, *model.graph.output]:
        found.add(v.type.tensor_type.elem_type)
    for n in model.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to":
                found.add(a.i)
    return next((t for t in HALF_TYPES if t in found), None)
