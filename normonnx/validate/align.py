"""Which tensor of one model is which tensor of another: by name, then by structure.

A name both models use is only a hypothesis (another folder keeps a conv's output name after
the conv absorbed its BN; localization tests it against the values downstream). Tensors a tool
renamed are found by structure: the same op with the same attributes applied to inputs that are
themselves the same (graph inputs by position, small constants by value, weights by shape). Only the top-level graph is
aligned; If/Loop/Scan bodies are not entered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class Pair:
    """One candidate tensor and the reference tensor it is compared with."""

    candidate: str
    reference: str
    how: str  # "name", "map" (given by --map), "output" (graph outputs by position) or "structure"


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


# Constants up to this many elements (axes, Reshape targets, scalars) count by value; larger ones (the
# weights, which a fold or a planted error changes) by dtype and shape only.
_BY_VALUE_ELEMENTS = 64


def _tensor_digest(t: onnx.TensorProto) -> str:
    size = 1
    for d in t.dims:
        size *= d
    if size > _BY_VALUE_ELEMENTS or t.data_location == onnx.TensorProto.EXTERNAL:
        return _digest("weight", tuple(t.dims), t.data_type)
    return _digest("const", tuple(t.dims), t.data_type, numpy_helper.to_array(t).tobytes())


def _attr_digest(a: onnx.AttributeProto) -> object:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return None  # a body is not compared: the node gets no structural identity
    if a.type == onnx.AttributeProto.TENSOR:
        return _tensor_digest(a.t)
    value = helper.get_attribute_value(a)
    return value.decode() if isinstance(value, bytes) else value


def signatures(model: onnx.ModelProto) -> dict[str, str]:
    """A structural identity for every tensor of the top-level graph (none for tensors a body makes)."""
    g = model.graph
    sig: dict[str, str] = {}
    initializers = {t.name for t in g.initializer}
    for k, i in enumerate(x for x in g.input if x.name not in initializers):
        sig[i.name] = _digest("input", k)
    for t in g.initializer:
        sig[t.name] = _tensor_digest(t)
    for node in g.node:
        attrs = []
        for a in sorted(node.attribute, key=lambda a: a.name):
            d = _attr_digest(a)
            if d is None:
                attrs = None
                break
            attrs.append((a.name, d))
        inputs = tuple(sig.get(i) if i else "" for i in node.input)
        known = attrs is not None and all(s is not None for s in inputs)
        if node.op_type == "Constant" and known:
            for k, o in enumerate(node.output):
                sig[o] = _digest("constant-node", tuple(attrs), k)
            continue
        for k, o in enumerate(node.output):
            if o:
                sig[o] = _digest(node.domain or "", node.op_type, tuple(attrs), inputs, k) if known else _digest("?", o)
    return sig


def _computed(model: onnx.ModelProto) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o]


def align(candidate: onnx.ModelProto, reference: onnx.ModelProto, renames: dict[str, str] | None = None) -> list[Pair]:
    """Candidate tensors computed by top-level nodes (in its order) paired with the reference's."""
    renames = renames or {}
    ref_computed = _computed(reference)
    ref_names = set(ref_computed)
    cand_outputs = [o.name for o in candidate.graph.output]
    ref_outputs = [o.name for o in reference.graph.output]
    by_position = dict(zip(cand_outputs, ref_outputs, strict=False)) if len(cand_outputs) == len(ref_outputs) else {}
    cand_sig, ref_sig = signatures(candidate), signatures(reference)
    ref_by_sig: dict[str, list[str]] = {}
    for name in ref_computed:
        ref_by_sig.setdefault(ref_sig[name], []).append(name)
    pairs: list[Pair] = []
    taken: set[str] = set()
    pending: list[str] = []
    for name in _computed(candidate):
        if name in renames and renames[name] in ref_names:
            pairs.append(Pair(name, renames[name], "map"))
        elif name in ref_names:
            pairs.append(Pair(name, name, "name"))
        elif name in by_position and by_position[name] in ref_names:
            pairs.append(Pair(name, by_position[name], "output"))
        else:
            pending.append(name)
            continue
        taken.add(pairs[-1].reference)
    structural = {}
    for name in pending:
        matches = [r for r in ref_by_sig.get(cand_sig.get(name, ""), []) if r not in taken]
        if len(matches) == 1:
            structural[name] = matches[0]
            taken.add(matches[0])
    order = {name: k for k, name in enumerate(_computed(candidate))}
    pairs += [Pair(c, r, "structure") for c, r in structural.items()]
    pairs.sort(key=lambda p: order[p.candidate])
    return pairs
