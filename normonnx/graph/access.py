"""Small read-only questions about an onnx-graphsurgeon graph.

Every pass asks the same things: is this tensor a constant (and what is it),
who produces it, who consumes it, is it a graph output. They live here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from normonnx.families import is_default_domain
from normonnx.graph.bridge import stored_values
from normonnx.graph.edit import GraphOutputs


def op_is(node: gs.Node | None, *ops: str) -> bool:
    """True for a node of the default ONNX domain whose op is one of ``ops``."""
    return node is not None and node.op in ops and is_default_domain(node.domain)


def bodies(graph: gs.Graph) -> Iterator[gs.Graph]:
    """Every If/Loop/Scan body of ``graph``, at any depth (a body before the bodies inside it).

    Lazy: a caller may rewrite a body it was given before the walk goes into that body.
    """
    for node in list(graph.nodes):
        for value in node.attrs.values():
            for body in value if isinstance(value, list) else [value]:
                if isinstance(body, gs.Graph):
                    yield body
                    yield from bodies(body)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor``, or None for inputs and initializers."""
    return tensor.inputs[0] if tensor.inputs else None


def _elements(shape: Sequence[object] | None) -> float:
    """The element count of a known shape (infinite for an unknown one: not small)."""
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return math.inf
    return math.prod(shape)


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_empty(tensor: gs.Tensor) -> bool:
    """An omitted optional input."""
    return isinstance(tensor, gs.Variable) and not tensor.name


def constant_value(tensor: gs.Tensor, max_elements: int | None = None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None otherwise.

    Weights on disk are read each time and not kept (see ``bridge.stored_values``). With ``max_elements``,
    a larger initializer is None too, and is never read: a pass looking for shapes and scalars would
    otherwise convert every weight it passes by (the LSTM of an OCR model, on every sweep).
    """
    if isinstance(tensor, gs.Constant):
        if max_elements is not None and _elements(tensor.shape) > max_elements:
            return None
        return stored_values(tensor)
    node = producer(tensor)
    if not op_is(node, "Constant"):
        return None
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        if max_elements is not None and _elements(attrs["value"].shape) > max_elements:
            return None
        return np.asarray(attrs["value"].values)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs and (max_elements is None or len(attrs[key]) <= max_elements):
            return np.array(list(attrs[key]), dtype=dtype)
    return None


def shape_of(tensor: gs.Tensor) -> list | None:
    """The tensor's (inferred) shape: ints, dim names or None per dim; None when unknown."""
    shape = getattr(tensor, "shape", None)
    return None if shape is None else list(shape)


def rank_of(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _known(d) -> bool:
    return isinstance(d, (int, np.integer)) and d >= 0


def static_shape(tensor: gs.Tensor) -> list[int] | None:
    """The shape when every dim is a known size (an initializer's always is)."""
    if isinstance(tensor, gs.Constant):
        return list(tensor.shape)
    shape = shape_of(tensor)
    return [int(d) for d in shape] if shape is not None and all(_known(d) for d in shape) else None


def static_dims(tensor: gs.Tensor, axes) -> list[int] | None:
    """The sizes of ``axes`` when all are known and positive."""
    shape = shape_of(tensor)
    if shape is None:
        return None
    dims = [shape[a] for a in axes]
    return [int(d) for d in dims] if all(_known(d) and d > 0 for d in dims) else None


def numpy_dtype(dtype) -> np.dtype | None:
    """graphsurgeon's dtype (a numpy dtype, or an ONNX enum for types numpy lacks) as a numpy dtype."""
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
    return np.dtype(dtype)


def is_float32(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is known to hold float32."""
    return numpy_dtype(tensor.dtype) == np.float32


def read_from_outside(node: gs.Node) -> list[gs.Tensor]:
    """The tensors the If/Loop/Scan bodies of ``node`` (at any depth) read from outside them."""
    graphs = []
    for value in node.attrs.values():
        for body in value if isinstance(value, list) else [value]:
            if isinstance(body, gs.Graph):
                graphs += [body, *bodies(body)]
    inside = {id(t) for g in graphs for n in g.nodes for t in n.outputs} | {id(t) for g in graphs for t in g.inputs}
    return [t for g in graphs for n in g.nodes for t in n.inputs if t.name and id(t) not in inside]


def onnx_dtype(dtype) -> int | None:
    """graphsurgeon's dtype as an ONNX TensorProto enum (None when unknown)."""
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):
        return int(dtype)
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError):
        return None


def is_constant(tensor: gs.Tensor) -> bool:
    if isinstance(tensor, gs.Constant):
        return True
    node = producer(tensor)
    return op_is(node, "Constant")


def input_or_none(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's input at ``index``; None when absent or omitted."""
    if index >= len(node.inputs) or is_empty(node.inputs[index]):
        return None
    return node.inputs[index]


def is_training_batchnorm(node: gs.Node, opset: int) -> bool:
    """Batch statistics: training_mode=1 (opset 14+), or any extra declared output before opset 14."""
    if node.attrs.get("training_mode", 0) == 1:
        return True
    extra = [t for t in node.outputs[1:] if t.name]
    return bool(extra) and (opset < 14 or any(t.outputs for t in extra))


def describe(node: gs.Node) -> str:
    """How a node is named in messages: its name, or its op and first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op}->{out}"


def sole_consumer(tensor: gs.Tensor, outputs: GraphOutputs) -> gs.Node | str:
    """The only consumer of an intermediate tensor, or the reason there is none."""
    if tensor in outputs:
        return f"'{tensor.name}' is a graph output"
    users = tensor.outputs
    if len(users) != 1:
        return f"'{tensor.name}' has {len(users)} consumers"
    return users[0]


def unique_name_factory(names: Iterable[str]):
    """Return ``fresh(base)`` that never repeats a name already in the graph."""
    taken = set(names)

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    return fresh


def all_names(graph: gs.Graph) -> set[str]:
    """Every tensor and node name in the graph and its subgraphs."""
    names: set[str] = set()
    pending = [graph]
    while pending:
        g = pending.pop()
        for node in g.nodes:
            if node.name:
                names.add(node.name)
            names.update(t.name for t in node.inputs if t.name)
            names.update(t.name for t in node.outputs if t.name)
            pending.extend(v for v in node.attrs.values() if isinstance(v, gs.Graph))
        names.update(t.name for t in g.inputs)
        names.update(t.name for t in g.outputs)
    return names
