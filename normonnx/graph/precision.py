"""Plain float32 -> float16 / float64 copies of a model: the "unmodified fp16 model", the exact one.

``check`` judges an fp16 candidate against an fp32 reference and also
against what a straight fp16 conversion of that reference loses: a fold
must not be more than twice as wrong as fp16 itself. This converter makes
that baseline when the user does not pass one: every float32 tensor, input,
output, Cast and constant becomes float16; nothing is fused or reordered.
The float64 copy measures how far the float32 original itself is from exact
(the noise floor of validate.verify).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Inputs that ONNX requires in float32 whatever the data type (Resize's roi and scales).
_KEEP_FLOAT32 = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def _tensor_as(t: TensorProto, elem_type: int, sources: tuple[int, ...] = (TensorProto.FLOAT,)) -> TensorProto:
    if t.data_type not in sources:
        return t
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    with np.errstate(over="ignore"):  # a value beyond the new type's range becomes inf, as a plain cast makes it
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name)


def with_float_type(
    model: onnx.ModelProto, elem_type: int, sources: tuple[int, ...] = (TensorProto.FLOAT,)
) -> onnx.ModelProto:
    """A copy of ``model`` with every tensor, input, output, Cast and constant of a ``sources`` type made
    ``elem_type``, in If/Loop/Scan bodies too."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _convert_graph(out.graph, elem_type, sources, top=True)
    return out


def _convert_graph(g: onnx.GraphProto, elem_type: int, sources: tuple[int, ...], top: bool) -> None:
    keep = {n.input[i] for n in g.node for (op, i) in _KEEP_FLOAT32 if n.op_type == op and len(n.input) > i}
    converted = [t if t.name in keep else _tensor_as(t, elem_type, sources) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(converted)
    # A body's value_info is kept (typed anew) only where it declares a type: onnx needs its inputs' types.
    for vi in [*g.input, *g.output, *([] if top else g.value_info)]:
        tt = vi.type.tensor_type
        if vi.name not in keep and tt.elem_type in sources:
            tt.elem_type = elem_type
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i in sources:
                a.i = elem_type
            elif (
                a.type == onnx.AttributeProto.TENSOR
                and a.t.data_type in sources
                and not (node.op_type == "Constant" and node.output[0] in keep)
            ):
                a.t.CopyFrom(_tensor_as(a.t, elem_type, sources))
            for body in [a.g] if a.HasField("g") else list(a.graphs):
                _convert_graph(body, elem_type, sources, top=False)
    if top:
        del g.value_info[:]


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    return with_float_type(model, TensorProto.FLOAT16)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in double precision: the exact answer its float32 (or float16) run approximates."""
    return with_float_type(model, TensorProto.DOUBLE, (TensorProto.FLOAT, TensorProto.FLOAT16))
