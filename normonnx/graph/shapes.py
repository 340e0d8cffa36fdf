"""Shape inference that neither copies the weights nor touches the caller's model.

onnx's shape inference returns a full copy of the model; for a model of
several GB that doubles peak memory. Shapes depend on weight dims, not weight
values, so inference runs on a skeleton (nodes, inputs, outputs, small
initializers in full, large ones as dims only) and the inferred types are
written onto the graphsurgeon tensors.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.families import FAMILIES, is_default_domain

log = logging.getLogger(__name__)

_SMALL_TENSOR_BYTES = 4096
# Ops whose folding or recognition reads shapes or dtypes; a graph without
# any (a plain Conv/BN chain) skips inference.
_SHAPE_READERS = {"MatMul", "Shape", "Size", "CastLike", "Tile", "Expand", "ReduceMean", "Reshape"}


_ARITHMETIC = {"Mul", "Add", "Sub", "Div"}


def needs_shapes(model: onnx.ModelProto) -> bool:
    """Whether some fold reads a shape: a shape reader, or arithmetic on a BatchNormalization's
    output (a per-channel constant of shape [C, 1, 1] lines up with the channels only at rank 4)."""
    from normonnx.graph.modelio import iter_nodes

    nodes = list(iter_nodes(model.graph))
    if any(n.op_type in _SHAPE_READERS for n in nodes):
        return True
    bn_outputs = {n.output[0] for n in nodes if n.op_type == "BatchNormalization" and n.output}
    return any(n.op_type in _ARITHMETIC and bn_outputs.intersection(n.input) for n in nodes)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model for shape inference: its small constants (shape operands) and only the type of the rest."""
    from normonnx.graph.modelio import raw_bytes

    sk = onnx.ModelProto(ir_version=model.ir_version)
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g, src = sk.graph, model.graph
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    # Stored value_info can be stale (a tool edited the graph and left it): inference starts from
    # the inputs, trusting stored shapes only for what it cannot compute, custom-domain ops' outputs.
    custom = {o for n in src.node if not is_default_domain(n.domain) for o in n.output}
    g.value_info.extend(v for v in src.value_info if v.name in custom)
    for init in src.initializer:
        small = not init.HasField("raw_data") or raw_bytes(init) <= _SMALL_TENSOR_BYTES
        if small and init.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(init)
        else:
            t = g.initializer.add()
            t.name, t.data_type = init.name, init.data_type
            t.dims.extend(init.dims)
    return sk


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


# Their first output has the type and shape of their first input, by definition; onnx infers nothing
# for some of them (GroupNormalization-21 is a function op), which left everything after them untyped.
_SHAPE_PRESERVING = {f.onnx_op for f in FAMILIES if f.onnx_op}
_MAX_INFERENCE_PASSES = 8


def _infer(skeleton: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's inference, with the outputs of normalization ops it leaves untyped given their input's type
    and inference run again from there (a chain of them needs one pass each)."""
    for _ in range(_MAX_INFERENCE_PASSES):
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
        g = inferred.graph
        typed = {v.name: v for v in [*g.input, *g.value_info, *g.output] if v.type.tensor_type.elem_type}
        typed.update(
            (t.name, onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))) for t in g.initializer
        )
        added = []
        for node in g.node:
            if node.op_type in _SHAPE_PRESERVING and is_default_domain(node.domain) and node.output:
                out, src = node.output[0], typed.get(node.input[0])
                if out and out not in typed and src is not None:
                    vi = onnx.ValueInfoProto()
                    vi.CopyFrom(src)
                    vi.name = out
                    added.append(vi)
                    typed[out] = vi
        if not added:
            return inferred
        skeleton.graph.value_info.extend(added)
    return inferred


def inferred(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.GraphProto:
    """The graph of ``model`` with every type and shape onnx (and ``_infer``) can infer, the graph inputs
    fixed at ``input_shapes`` where given; weights are not copied."""
    skeleton = _skeleton(model)
    for i in skeleton.graph.input:
        if input_shapes and i.name in input_shapes:
            dims = i.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[i.name]:
                dims.add().dim_value = int(d)
    return _infer(skeleton).graph


def annotate_shapes(model: onnx.ModelProto, graph: gs.Graph, always: bool = False) -> None:
    """Give graph tensors the dtypes and shapes onnx can infer (best effort, never raises).

    Unless ``always``, a graph with no op that reads shapes (see ``needs_shapes``) is skipped.
    """
    if not always and not needs_shapes(model):
        return
    try:
        inferred = _infer(_skeleton(model))
    except Exception as e:  # inference is an aid: a model it cannot handle still folds
        log.debug("shape inference failed: %s", e)
        return
    from normonnx.graph.modelio import iter_nodes

    tensors = graph.tensors()
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    for node in iter_nodes(inferred.graph):  # bodies: onnx infers them, into their own value_info
        for a in node.attribute:
            for body in [a.g] if a.HasField("g") else list(a.graphs):
                infos += [*body.value_info, *body.output]
    # graphsurgeon's own walk of the bodies, not graph.access.bodies: access reads constants through
    # graph.bridge, which prepares a graph with this module, so shapes stays below both.
    for body in graph.subgraphs(recursive=True):
        for name, t in body.tensors().items():
            tensors.setdefault(name, t)
    for vi in infos:
        t = tensors.get(vi.name)
        if not isinstance(t, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        elem = vi.type.tensor_type.elem_type
        if t.dtype is None and elem:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        dims = _dims(vi)
        if dims is not None and (t.shape is None or _better(t.shape, dims)):
            t.shape = dims


def _better(old: list, new: list) -> bool:
    """Whether inferred ``new`` should replace the stored ``old``: it knows more, or contradicts it."""
    if len(old) != len(new):
        return True
    known = lambda dims: sum(isinstance(d, (int, np.integer)) for d in dims)
    contradicts = any(
        isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)) and a != b
        for a, b in zip(old, new, strict=True)
    )
    return contradicts or known(new) > known(old)
