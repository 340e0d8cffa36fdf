"""A plain float32 -> float16 copy of a model: the "unmodified fp16 model".

``check`` judges an fp16 candidate against an fp32 reference and also
against what a straight fp16 conversion of that reference loses: a fold
must not be more than twice as wrong as fp16 itself. This converter makes
that baseline when the user does not pass one: every float32 tensor, input,
output, Cast and constant becomes float16; nothing is fused or reordered.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# Inputs that ONNX requires in float32 whatever the data type (Resize's roi and scales).
_KEEP_FLOAT32 = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def _tensor_fp16(t: TensorProto) -> TensorProto:
    if t.data_type != TensorProto.FLOAT:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)


def _value_info_fp16(vi: onnx.ValueInfoProto) -> None:
    tt = vi.type.tensor_type
    if tt.elem_type == TensorProto.FLOAT:
        tt.elem_type = TensorProto.FLOAT16


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = {n.input[i] for n in g.node for (op, i) in _KEEP_FLOAT32 if n.op_type == op and len(n.input) > i}
    converted = [t if t.name in keep else _tensor_fp16(t) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(converted)
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.name not in keep:
            _value_info_fp16(vi)
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            elif (
                a.type == onnx.AttributeProto.TENSOR
                and a.t.data_type == TensorProto.FLOAT
                and not (node.op_type == "Constant" and node.output[0] in keep)
            ):
                a.t.CopyFrom(_tensor_fp16(a.t))
    del g.value_info[:]
    return out
