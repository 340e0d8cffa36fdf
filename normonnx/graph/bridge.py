"""The one bridge to onnx-graphsurgeon: ModelProto <-> Graph, and every graphsurgeon internal.

graphsurgeon rebuilds the ModelProto from scratch; a deployment tool must
hand back the user's model-level fields untouched: ir_version, every opset
import, producer, model version, doc strings, metadata_props, and the exact
ValueInfo of graph inputs and outputs (dim_params, denotations).

Everything normonnx needs from graphsurgeon beyond its public API -- the
lazily loaded values of a constant (read without pinning them in memory),
its exporter for single nodes and tensors, its logger -- is used here and
nowhere else, so an upgrade of graphsurgeon touches this one file.

graphsurgeon 0.6.1 keeps a node's op, name, domain, attributes and tensors, a
graph's name, doc string, nodes and tensors, a function's name, domain, doc
string, attributes and opsets. It drops a node's doc_string, metadata_props
(where the torch exporter records module scopes), overload and
device_configurations; a graph's metadata_props (main graph and every
If/Loop/Scan body); a function's overload, value_info and metadata_props.
``to_graph`` attaches those fields to graphsurgeon's own node, graph and function
objects, so they follow a node through rewrites, renames and cleanup, and
``to_model`` writes them back. graphsurgeon's ``Node.copy`` and ``Graph.copy``
do not copy them; a rewrite's new nodes take their anchor's metadata through
``inherit_metadata``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx, update_import_domains
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues
from onnx_graphsurgeon.logger import G_LOGGER

from normonnx.families import is_default_domain
from normonnx.graph.edit import cleanup

G_LOGGER.severity = G_LOGGER.ERROR
log = logging.getLogger(__name__)


def model_and_name(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    """A ModelProto (a path is loaded and validated) and how to name it in messages."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    from normonnx.graph.modelio import load_model

    return load_model(model), str(model)


def prepare_graph(model: onnx.ModelProto, *, always_infer: bool = False) -> gs.Graph:
    """A graphsurgeon graph of ``model`` with inferred dtypes and shapes (see annotate_shapes).

    Weights on disk (absolute, validated locations) are read through normonnx's own reader.
    """
    from normonnx.graph.external import read_external
    from normonnx.graph.shapes import annotate_shapes

    graph = to_graph(model)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues):
            proto = t._values.tensor
            if isinstance(proto, onnx.TensorProto) and proto.data_location == onnx.TensorProto.EXTERNAL:
                t._values = _ReadBy(proto, read_external)
    annotate_shapes(model, graph, always_infer)
    return graph


class _ReadBy(LazyValues):
    """graphsurgeon's lazy values, read by a normonnx reader (from an absolute validated location)."""

    def __init__(self, tensor: onnx.TensorProto, reader: Callable[[onnx.TensorProto], np.ndarray]) -> None:
        super().__init__(tensor)
        self._reader = reader

    def load(self) -> np.ndarray:
        return self._reader(self.tensor)


def lazy_constant(name: str, proto: onnx.TensorProto, reader: Callable[[onnx.TensorProto], np.ndarray]) -> gs.Constant:
    """A constant whose values stay on disk until ``reader`` is asked for them."""
    return gs.Constant(name, _ReadBy(proto, reader))


def stored_values(constant: gs.Constant) -> np.ndarray:
    """A constant's values; lazily loaded weights are read each time and not kept
    (graphsurgeon's own ``values`` would pin every weight a pass looked at in memory)."""
    values = constant._values
    return np.asarray(values.load() if isinstance(values, LazyValues) else values)


def stored_nbytes(constant: gs.Constant) -> int:
    """A constant's size in bytes, known without loading lazily loaded values."""
    values = constant._values
    return int(getattr(values, "nbytes", 0) or np.asarray(constant.values).nbytes)


def graph_constant_bytes(graph: gs.Graph) -> int:
    """Bytes of every constant, control-flow bodies included."""
    tensors = {id(t): t for g in (graph, *graph.subgraphs(recursive=True)) for t in g.tensors().values()}
    return sum(stored_nbytes(t) for t in tensors.values() if isinstance(t, gs.Constant))


def node_proto(node: gs.Node) -> onnx.NodeProto:
    """One graphsurgeon node as a NodeProto."""
    return OnnxExporter.export_node(node)


def tensor_proto(constant: gs.Constant) -> onnx.TensorProto:
    """A constant as a self-contained TensorProto (weights on disk are read in)."""
    proto = OnnxExporter.export_tensor_proto(constant)
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        proto = onnx.numpy_helper.from_array(stored_values(constant), constant.name)
    return proto


def rename_inputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with its graph inputs renamed, in order, to ``names``.

    Renamed through graphsurgeon's tensors, so uses inside If/Loop/Scan bodies
    follow; a tensor that already holds one of those names moves out of the way.
    """
    graph = to_graph(model)
    if len(graph.inputs) != len(names) or [t.name for t in graph.inputs] == names:
        return model
    tensors = graph.tensors()
    taken = set(tensors) | set(names)
    for name in names:
        holder = tensors.get(name)
        if holder is not None and holder not in graph.inputs:
            k = 0
            while f"{name}_{k}" in taken:
                k += 1
            holder.name = f"{name}_{k}"
            taken.add(holder.name)
    for t, name in zip(graph.inputs, names, strict=True):
        t.name = name
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    for old, new in zip(renamed.graph.input, names, strict=True):
        old.name = new
    return to_model(graph, renamed, sort=False)


def overridable_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers also listed as graph inputs in an ir_version >= 4 model.

    There they are defaults a caller may override at run time, so nothing
    may be folded into or out of them (onnxruntime treats them the same way).
    In ir_version 3 every initializer must be listed as an input and they are
    constants.
    """
    if model.ir_version < 4:
        return []
    inputs = {i.name for i in model.graph.input}
    return [t for t in model.graph.initializer if t.name in inputs]


def _without_overridable(model: onnx.ModelProto, field: str) -> onnx.ModelProto:
    """``model``, or a copy whose graph ``field`` (input or initializer) drops the overridable initializers."""
    overridable = {t.name for t in overridable_initializers(model)}
    if not overridable:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    entries = getattr(out.graph, field)
    kept = [e for e in entries if e.name not in overridable]
    del entries[:]
    entries.extend(kept)
    return out


def without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose overridable initializers are plain constants (no longer inputs)."""
    return _without_overridable(model, "input")


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """graphsurgeon would import an initializer listed as an input as a constant and drop the
    input: overridable ones are imported as the graph inputs they are (``to_model`` puts their
    defaults back)."""
    source = _without_overridable(model, "initializer")
    graph = gs.import_onnx(source)
    _carry_in(source.graph, graph)
    for proto, function in zip(source.functions, graph.functions, strict=True):
        _carry_in(proto, function, _FUNCTION_FIELDS)
    return graph


def to_model(
    graph: gs.Graph, template: onnx.ModelProto, *, opset: int | None = None, sort: bool = True
) -> onnx.ModelProto:
    """Export ``graph`` with the model-level fields of ``template``.

    ``opset`` replaces the default-domain version (for emit); otherwise the
    template's opset imports are kept as they were. ``sort=False`` skips the
    topological sort for a graph whose rewrites kept the node order valid.
    """
    cleanup(graph)
    if sort:
        graph.toposort()
    model = _export(graph)
    _carry_out(model.graph, graph)
    for proto, function in zip(model.functions, graph.functions, strict=True):
        _carry_out(proto, function)
    model.ir_version = template.ir_version
    used_domains = {n.domain for n in model.graph.node}
    imports = []
    seen = set()
    for op in template.opset_import:
        version = opset if (opset is not None and is_default_domain(op.domain)) else op.version
        imports.append(onnx.helper.make_opsetid(op.domain, version))
        seen.add(op.domain)
    for op in model.opset_import:  # domains introduced by a pass (none today)
        if op.domain not in seen and op.domain in used_domains:
            imports.append(op)
    del model.opset_import[:]
    model.opset_import.extend(imports)
    if opset is not None:
        model.ir_version = max(template.ir_version, _min_ir_version(opset))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(template, field))
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    if template.functions and not model.functions:
        model.functions.extend(template.functions)
    _keep_declared_value_info(model.graph, _declared_value_info(template.graph))
    _restore_value_info(model.graph.input, template.graph.input)
    _restore_value_info(model.graph.output, template.graph.output)
    inputs = {i.name for i in model.graph.input}
    model.graph.initializer.extend(t for t in overridable_initializers(template) if t.name in inputs)
    if model.ir_version < 4:  # every initializer must be listed as an input too
        model.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in model.graph.initializer
            if t.name not in inputs
        )
    model.graph.name = template.graph.name
    model.graph.doc_string = template.graph.doc_string
    return model


def _export(graph: gs.Graph) -> onnx.ModelProto:
    """graphsurgeon's ``export_onnx``, every weight copied once.

    graphsurgeon builds each new weight as a TensorProto, gathers the weights into a GraphProto and
    copies that into the model: a folded weight was copied four times, an untouched one twice (0.1 s
    of a ResNet-50's fold). Here each goes straight into the model's graph.
    """
    model = onnx.ModelProto()
    g = model.graph
    g.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    g.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    g.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    tensors = graph.tensors()
    for t in tensors.values():
        if isinstance(t, gs.Constant):
            _export_constant(t, g)
    ends = {t.name for t in (*graph.inputs, *graph.outputs)}
    g.value_info.extend(
        OnnxExporter.export_value_info_proto(t, False)
        for name, t in tensors.items()
        if name not in ends and isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None)
    )
    g.name = graph.name or ""
    if graph.doc_string:
        g.doc_string = graph.doc_string
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    model.opset_import.extend(update_import_domains(graph))
    return model


def _export_constant(constant: gs.Constant, graph: onnx.GraphProto) -> None:
    """One constant into ``graph``'s initializers (its sparse ones for a sparse constant)."""
    values = constant._values
    if isinstance(values, SparseValues):
        graph.sparse_initializer.add().CopyFrom(values.tensor)
        return
    proto = graph.initializer.add()
    if isinstance(values, LazyValues):  # the stored tensor as it was read
        proto.CopyFrom(values.tensor)
        proto.name = constant.name
        return
    array = np.asarray(values)
    converted = getattr(constant, "export_dtype", constant.dtype) != constant.dtype  # graphsurgeon >= 0.5.3
    if array.dtype.kind not in "biuf" or converted:  # graphsurgeon's conversions
        proto.CopyFrom(OnnxExporter.export_tensor_proto(constant))
        return
    proto.name = constant.name
    proto.data_type = dtype_to_onnx(array.dtype)
    proto.dims.extend(array.shape)
    proto.raw_data = array.tobytes()
    if constant.data_location is not None:
        proto.data_location = constant.data_location


# The proto fields graphsurgeon drops, carried on its objects under this attribute.
_CARRIED = "_normonnx_carried"
_NODE_FIELDS = ("doc_string", "metadata_props", "overload", "device_configurations")
_GRAPH_FIELDS = ("metadata_props",)
_FUNCTION_FIELDS = ("overload", "value_info", "metadata_props")
_Carrier = onnx.NodeProto | onnx.GraphProto | onnx.FunctionProto


def node_metadata(node: gs.Node) -> dict[str, str]:
    """The node's metadata_props as the source model had them (the torch exporter's module scopes
    among them); empty for a node a rewrite made."""
    carried = _carried(node)
    return {p.key: p.value for p in carried.metadata_props} if carried is not None else {}


def inherit_metadata(new_nodes: Iterable[gs.Node], anchor: gs.Node) -> None:
    """Each of ``new_nodes`` without metadata of its own takes ``anchor``'s: the nodes a rewrite
    puts in place of ``anchor`` stay attributed to the torch module it came from. Only
    metadata_props: a doc string, overload or device placement describes the anchor itself."""
    anchor_carried = _carried(anchor)
    props = anchor_carried.metadata_props if anchor_carried is not None else ()
    for node in new_nodes:
        if node is anchor or not props or node_metadata(node):
            continue
        carried = _carried(node)
        if carried is None:
            carried = onnx.NodeProto()
            setattr(node, _CARRIED, carried)
        carried.metadata_props.extend(props)


def keep_dropped_fields(converted: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Fill in what onnx's version converter dropped from ``source`` (node and graph metadata_props,
    among others): nodes are matched by their outputs, bodies by their node and attribute name. A
    node the converter added matches nothing and stays as it is."""
    fields = {onnx.NodeProto: _NODE_FIELDS, onnx.GraphProto: _GRAPH_FIELDS}
    before = dict(_keyed_parts(source.graph))
    for key, part in _keyed_parts(converted.graph):
        old = before.get(key)
        if old is not None:
            _fill_missing(part, old, fields[type(part)])


def _keyed_parts(graph: onnx.GraphProto, owner: tuple = ()) -> Iterator[tuple[tuple, _Carrier]]:
    """Every graph and node under ``graph``, keyed by what a conversion keeps: a node's outputs, a body's
    node and attribute."""
    yield ("graph", *owner), graph
    for node in graph.node:
        outputs = tuple(node.output)
        yield ("node", outputs), node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _keyed_parts(a.g, (outputs, a.name))


def _fill_missing(proto, source, fields: tuple[str, ...]) -> None:
    """``source``'s ``fields`` into ``proto`` where ``proto`` has none (fields this onnx lacks are skipped)."""
    known = proto.DESCRIPTOR.fields_by_name
    for name in fields:
        if name not in known or not getattr(source, name) or getattr(proto, name):
            continue
        value = getattr(source, name)
        if isinstance(value, str | bytes):
            setattr(proto, name, value)
        else:
            getattr(proto, name).extend(value)


def _dropped(proto: _Carrier, fields: tuple[str, ...]) -> _Carrier | None:
    """A proto of ``proto``'s type holding only its ``fields`` (None when all are empty)."""
    kept = type(proto)()
    _fill_missing(kept, proto, fields)
    return kept if kept.ByteSize() else None


def _carry_in(proto: onnx.GraphProto | onnx.FunctionProto, graph: gs.Graph, fields=_GRAPH_FIELDS) -> None:
    """Attach what graphsurgeon dropped to its graph (or function), its nodes and their bodies, at any
    depth; graphsurgeon imports one node per NodeProto, in order."""
    _attach(graph, _dropped(proto, fields))
    for proto_node, node in zip(proto.node, graph.nodes, strict=True):
        _attach(node, _dropped(proto_node, _NODE_FIELDS))
        for a in proto_node.attribute:
            body = node.attrs.get(a.name)
            if a.type == onnx.AttributeProto.GRAPH and isinstance(body, gs.Graph):
                _carry_in(a.g, body)


def _carried(holder: gs.Node | gs.Graph) -> _Carrier | None:
    """What ``_carry_in`` attached, read from the instance (a graphsurgeon graph resolves a missing
    attribute as a registered function and logs an error)."""
    return vars(holder).get(_CARRIED)


def _attach(holder: gs.Node | gs.Graph, carried: _Carrier | None) -> None:
    if carried is not None:
        setattr(holder, _CARRIED, carried)


def _carry_out(proto: onnx.GraphProto | onnx.FunctionProto, graph: gs.Graph) -> None:
    """Write back what ``_carry_in`` attached. graphsurgeon exports nodes in order; a function's
    constants come first, as Constant nodes of its own."""
    _restore(proto, graph)
    skipped = len(proto.node) - len(graph.nodes)
    for proto_node, node in zip(proto.node[skipped:], graph.nodes, strict=True):
        _restore(proto_node, node)
        for a in proto_node.attribute:
            body = node.attrs.get(a.name)
            if a.type == onnx.AttributeProto.GRAPH and isinstance(body, gs.Graph):
                _carry_out(a.g, body)


def _restore(proto: _Carrier, holder: gs.Node | gs.Graph) -> None:
    carried = _carried(holder)
    if carried is not None:
        proto.MergeFrom(carried)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for body in [a.g] if a.HasField("g") else a.graphs:
                yield from _graphs(body)


def _declared_value_info(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {v.name: v for g in _graphs(graph) for v in g.value_info}


def _keep_declared_value_info(graph: onnx.GraphProto, declared: dict[str, onnx.ValueInfoProto]) -> None:
    """Shape annotations only where the source had them (with what is known now): the shapes inference
    added for the passes stay out of the file, because onnxruntime picks fusions by them (on a
    TorchScript BERT, inferred shapes let it fuse SkipLayerNormalization, 29% slower at that size).
    A type without a shape says nothing and the checker rejects it. The source's doc string and
    metadata of each kept entry come back (graphsurgeon writes only the type)."""
    for g in _graphs(graph):
        kept = [v for v in g.value_info if v.name in declared and v.type.tensor_type.HasField("shape")]
        for v in kept:
            _fill_missing(v, declared[v.name], ("doc_string", "metadata_props"))
        del g.value_info[:]
        g.value_info.extend(kept)


def _restore_value_info(new, old) -> None:
    """The template's ValueInfo (dim_params, denotations) back on each graph input and output, in the element
    type the graph now has there (a precision rewrite changes it; nothing else may)."""
    by_name = {v.name: v for v in old}
    for v in new:
        if v.name in by_name:
            elem_type = v.type.tensor_type.elem_type
            v.CopyFrom(by_name[v.name])
            if elem_type and v.type.HasField("tensor_type"):
                v.type.tensor_type.elem_type = elem_type


def _min_ir_version(opset: int) -> int:
    """The lowest ir_version that may declare ``opset`` (onnx's own table)."""
    try:
        return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)
    except Exception:  # a table entry onnx does not know: keep the template's
        return 3
