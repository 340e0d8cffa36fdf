"""ModelProto <-> onnx-graphsurgeon Graph, keeping what graphsurgeon drops.

graphsurgeon rebuilds the ModelProto from scratch; a deployment tool must
hand back the user's model-level fields untouched: ir_version, every opset
import, producer, model version, doc strings, metadata_props, and the exact
ValueInfo of graph inputs and outputs (dim_params, denotations).
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

G_LOGGER.severity = G_LOGGER.ERROR
log = logging.getLogger(__name__)


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
    return gs.import_onnx(_without_overridable(model, "initializer"))


def to_model(
    graph: gs.Graph, template: onnx.ModelProto, *, opset: int | None = None, sort: bool = True
) -> onnx.ModelProto:
    """Export ``graph`` with the model-level fields of ``template``.

    ``opset`` replaces the default-domain version (for emit); otherwise the
    template's opset imports are kept as they were. ``sort=False`` skips the
    topological sort for a graph whose rewrites kept the node order valid.
    """
    graph.cleanup(remove_unused_graph_inputs=False)
    if sort:
        graph.toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = template.ir_version
    used_domains = {n.domain for n in model.graph.node}
    imports = []
    seen = set()
    for op in template.opset_import:
        version = opset if (opset is not None and op.domain in ("", "ai.onnx")) else op.version
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
    # A type without a shape says nothing shape inference cannot, and the
    # checker rejects it: keep only value_info that carries a shape.
    kept = [v for v in model.graph.value_info if v.type.tensor_type.HasField("shape")]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
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


def _restore_value_info(new, old) -> None:
    by_name = {v.name: v for v in old}
    for v in new:
        if v.name in by_name:
            v.CopyFrom(by_name[v.name])


def _min_ir_version(opset: int) -> int:
    """The lowest ir_version that may declare ``opset`` (onnx's own table)."""
    try:
        return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)
    except Exception:  # a table entry onnx does not know: keep the template's
        return 3
