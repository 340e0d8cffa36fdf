"""Relabelling a model to an older default opset, op by op, exactly or not at all.

onnx's version converter has few down adapters (not even Pow 15 -> 13), and
none for what today's exporters write at opset 18: Resize with its new
attributes, Split with num_outputs, Reduce* with an axes input, Shape with
start and end. Here each node is checked against the op schemas themselves:
when the node means the same at the target version (same inputs and
attributes used, no attribute the target lacks), it is relabelled; when the
signature changed in a way exporters use, an adapter writes the older form
(an input moved to an attribute, sizes computed, a Transpose around a
Softmax); when neither is possible the node is refused by name, with why.

Every adapter is exact: it writes the same function of the inputs, and
either keeps the same floating-point operations or reorders none.
onnxruntime's own ops in the default domain (its LayerNormalization before
opset 17, SimplifiedLayerNormalization) have no onnx schema and are left as
they are: onnxruntime registers them at every opset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from normonnx.errors import UnusableInputError
from normonnx.families import is_default_domain

INT64_MAX = np.iinfo(np.int64).max

_AXES_INPUT_SINCE = {
    "ReduceSum": 13,
    **{
        op: 18
        for op in (
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        )
    },
    "Squeeze": 13,
    "Unsqueeze": 13,
}
_SOFTMAX = ("Softmax", "LogSoftmax", "Hardmax")
# Ops onnxruntime registers in the default domain without an onnx schema at the model's opset.
ONNXRUNTIME_DEFAULT_DOMAIN_OPS = ("LayerNormalization", "SimplifiedLayerNormalization")


_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "float", onnx.TensorProto.DOUBLE: "double", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool", onnx.TensorProto.STRING: "string",
}  # fmt: skip


class OpsetError(UnusableInputError):
    pass


class ComputedAtRunTime(OpsetError):
    """A value the older form needs as a constant is computed in the graph (folding constants may fix it)."""


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if is_default_domain(o.domain))


def onnxruntime_op_without_schema(node: onnx.NodeProto, opset: int) -> bool:
    """onnxruntime's own op in the default domain (its LayerNormalization before 17), unknown to onnx here."""
    if not is_default_domain(node.domain) or node.op_type not in ONNXRUNTIME_DEFAULT_DOMAIN_OPS:
        return False
    try:
        defs.get_schema(node.op_type, opset)
        return False
    except defs.SchemaError:
        return True


_CONSTANT_KINDS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def _constant_tensor(attr: onnx.AttributeProto) -> onnx.TensorProto | None:
    """A Constant node's value as a tensor, whichever attribute holds it (strings and sparse: None)."""
    if attr.name == "value":
        return attr.t
    kind = _CONSTANT_KINDS.get(attr.name)
    if kind is None:
        return None
    return numpy_helper.from_array(np.asarray(helper.get_attribute_value(attr), dtype=kind))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _drop_attributes(node: onnx.NodeProto, drop: Callable[[onnx.AttributeProto], bool]) -> None:
    """Remove the node's attributes ``drop`` picks (a repeated proto field has no filter in place)."""
    kept = [a for a in node.attribute if not drop(a)]
    if len(kept) != len(node.attribute):
        del node.attribute[:]
        node.attribute.extend(kept)


def _drop_named(node: onnx.NodeProto, *names: str) -> None:
    _drop_attributes(node, lambda a: a.name in names)


def _drop_default_attributes(node: onnx.NodeProto, src: defs.OpSchema, dst: defs.OpSchema) -> None:
    """Remove attributes the target version lacks when they hold the source version's default
    (exporters write Reshape's allowzero=0 and the like): dropping them changes nothing."""

    def is_default(a: onnx.AttributeProto) -> bool:
        spec = src.attributes.get(a.name)
        default = spec.default_value if spec is not None else None
        return (
            a.name not in dst.attributes
            and default is not None
            and default.type == a.type
            and helper.get_attribute_value(default) == helper.get_attribute_value(a)
        )

    _drop_attributes(node, is_default)


def _signature_ok(node: onnx.NodeProto, dst: defs.OpSchema) -> str | None:
    """Why ``node`` does not fit ``dst``'s signature (None if it does)."""
    used = len(node.input)
    while used and not node.input[used - 1]:
        used -= 1
    variadic = any(p.option == defs.OpSchema.FormalParameterOption.Variadic for p in dst.inputs)
    if used > len(dst.inputs) and not variadic:
        return f"uses {used} inputs, the target version takes {len(dst.inputs)}"
    extra = [a.name for a in node.attribute if a.name not in dst.attributes]
    if extra:
        return f"attribute {extra[0]} does not exist at the target version"
    return None


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies) inside it, outer first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} ({node.name or node.output[0]})"


class _Facts:
    """What the adapters read from the whole model: constants, element types and static shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consts: dict[str, onnx.TensorProto] = {}
        # A name two graphs define (sibling If branches may) has no single value or shape: left unknown,
        # so an adapter that needs it refuses rather than reads the other branch's.
        defined: Counter[str] = Counter()
        for g in _graphs(model.graph):
            defined.update({*(t.name for t in g.initializer), *(i.name for i in g.input),
                            *(o for n in g.node for o in n.output)})  # fmt: skip
        ambiguous = {name for name, count in defined.items() if count > 1}
        for g in _graphs(model.graph):
            self.consts.update((t.name, t) for t in g.initializer)
            for n in g.node:
                if n.op_type == "Constant" and len(n.attribute) == 1:
                    tensor = _constant_tensor(n.attribute[0])
                    if tensor is not None:
                        self.consts[n.output[0]] = tensor
        self.types: dict[str, int] = {k: t.data_type for k, t in self.consts.items()}
        self.shapes: dict[str, list[int | None]] = {k: list(t.dims) for k, t in self.consts.items()}
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # inference helps the adapters; without it they refuse what needs a shape
            inferred = model.graph
        for g in _graphs(inferred):
            for vi in [*g.input, *g.value_info, *g.output]:
                if not vi.type.HasField("tensor_type"):
                    continue
                tt = vi.type.tensor_type
                if tt.elem_type:
                    self.types.setdefault(vi.name, tt.elem_type)
                if tt.HasField("shape"):
                    self.shapes.setdefault(
                        vi.name, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                    )
        for name in ambiguous:
            self.consts.pop(name, None)
            self.types.pop(name, None)
            self.shapes.pop(name, None)
        self.names = {n for g in _graphs(model.graph) for node in g.node for n in node.output}
        self.names |= set(self.consts) | {i.name for g in _graphs(model.graph) for i in g.input}

    def constant(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name


class Down:
    """Rewrites a model from opset ``src`` to ``dst`` in place, one node at a time."""

    def __init__(self, model: onnx.ModelProto, src: int, dst: int) -> None:
        self.model, self.src, self.dst = model, src, dst
        self.facts = _Facts(model)

    def run(self) -> None:
        # Bodies before the graphs that hold them: rebuilding a graph's node list copies its nodes,
        # bodies included, so a body edited after its parent would be edited in a discarded copy.
        for graph in reversed(list(_graphs(self.model.graph))):
            nodes: list[onnx.NodeProto] = []
            for node in graph.node:
                nodes.extend(self.node(node))
            del graph.node[:]
            graph.node.extend(nodes)

    # --- helpers the adapters share

    def const(self, base: str, value: np.ndarray) -> str:
        """A new initializer (in the main graph: subgraphs see it by scope) holding ``value``."""
        name = self.facts.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(tensor)
        self.facts.consts[name] = tensor
        return name

    def make(self, op: str, inputs: list[str], base: str, **attrs) -> onnx.NodeProto:
        out = self.facts.fresh(base)
        return helper.make_node(op, inputs, [out], name=out, **attrs)

    def constant_input(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
        """Input ``index`` as a constant (None when absent); computed at run time raises, naming ``what``."""
        if len(node.input) <= index or not node.input[index]:
            return None
        value = self.facts.constant(node.input[index])
        if value is None:
            raise ComputedAtRunTime(
                f"{where(node)}: its {what} is computed at run time; opset {self.dst} needs it constant"
            )
        return value

    # --- the walk

    def node(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        if not is_default_domain(node.domain) or onnxruntime_op_without_schema(node, self.src):
            return [node]
        written = _WRITTEN_WITH_OLDER_OPS.get(node.op_type)
        if written is not None and self.dst < written[0]:
            return written[1](self, node)
        try:
            src = defs.get_schema(node.op_type, self.src)
            dst = defs.get_schema(node.op_type, self.dst)
        except defs.SchemaError:
            raise OpsetError(f"{where(node)} does not exist at opset {self.dst}{_lowering_hint(node)}") from None
        if src.since_version == dst.since_version:
            return [node]
        before: list[onnx.NodeProto] = []
        after: list[onnx.NodeProto] = []
        replaced = self.adapt(node, before, after)
        if replaced is not None:
            return replaced
        _drop_default_attributes(node, src, dst)
        problem = _signature_ok(node, dst) or self._types_ok(node, dst)
        if problem:
            raise OpsetError(f"{where(node)} {problem} (opset {self.dst})")
        return [*before, node, *after]

    def _types_ok(self, node: onnx.NodeProto, dst: defs.OpSchema) -> str | None:
        """Why an input's element type is not one the target version takes (Max on int64 before 12)."""
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in dst.type_constraints}
        for k, name in enumerate(node.input):
            if not name or not dst.inputs:
                continue
            param = dst.inputs[min(k, len(dst.inputs) - 1)]
            elem = self.facts.types.get(name)
            types = allowed.get(param.type_str)
            if elem is None or types is None:
                continue
            type_str = f"tensor({_TYPE_NAMES.get(elem, '?')})"
            if type_str not in types:
                return f"reads {type_str}, which the op takes only after opset {self.dst}"
        return None

    def crossing(self, since: int) -> bool:
        """Whether the conversion goes from at or after ``since`` to before it."""
        return self.dst < since <= self.src

    def adapt(
        self, node: onnx.NodeProto, before: list[onnx.NodeProto], after: list[onnx.NodeProto]
    ) -> list[onnx.NodeProto] | None:
        """Rewrite ``node`` into a form the target takes: in place (with nodes to put before or after it),
        or as a whole replacement list (returned)."""
        op = node.op_type
        since = _AXES_INPUT_SINCE.get(op)
        if since is not None and self.crossing(since):
            self._input_to_attribute(node, 1, "axes", noop_attribute="noop_with_empty_axes")
        elif op in _SOFTMAX and self.crossing(13):
            return self._softmax(node)
        elif op == "BatchNormalization":
            self._batchnorm(node, before, after)
        elif op == "Resize":
            self._resize(node)
        elif op == "Upsample":
            raise OpsetError(f"{where(node)}: Upsample is not converted down; re-export with Resize")
        elif op == "Split":
            self._split(node, before)
        elif op == "Shape" and self.crossing(15):
            self._shape(node, after)
        elif op == "Pad":
            self._pad(node)
        elif op == "Reshape":
            self._reshape(node)
        elif op == "RoiAlign" and self.crossing(16):
            self._roialign(node)
        elif op == "DFT" and self.crossing(20):
            raise OpsetError(f"{where(node)}: DFT's axis became an input with another default at opset 20")
        elif op == "GridSample" and self.crossing(20):
            self._gridsample(node)
        elif op == "Constant" and self.dst < 12 and node.attribute[0].name != "value":
            tensor = _constant_tensor(node.attribute[0])  # value_ints and friends came at opset 12
            if tensor is not None:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", tensor))
        return None

    # --- adapters

    def _input_to_attribute(
        self, node: onnx.NodeProto, index: int, name: str, noop_attribute: str | None = None
    ) -> None:
        """An input that became an attribute's job before: ReduceX/Squeeze/Unsqueeze axes, Split's split."""
        if len(node.input) <= index or not node.input[index]:
            if noop_attribute and _attr(node, noop_attribute) == 1:
                raise OpsetError(f"{where(node)}: {noop_attribute}=1 has no equivalent at opset {self.dst}")
            if noop_attribute:
                _drop_named(node, noop_attribute)
            return
        value = self.constant_input(node, index, name)
        if value.size == 0 and node.op_type in ("Squeeze", "Unsqueeze"):
            raise OpsetError(f"{where(node)}: an empty axes input, which runtimes read differently, is not converted")
        if value.size == 0 and noop_attribute and _attr(node, noop_attribute) == 1:
            raise OpsetError(f"{where(node)}: empty axes with {noop_attribute}=1 has no equivalent at opset {self.dst}")
        del node.input[index:]
        if noop_attribute:
            _drop_named(node, noop_attribute)
        if value.size:  # empty axes: every axis, which the older op does without the attribute
            node.attribute.append(helper.make_attribute(name, [int(a) for a in value.reshape(-1)]))

    def _roialign(self, node: onnx.NodeProto) -> None:
        """RoiAlign-10 always computes as RoiAlign-16's output_half_pixel (16's default is half_pixel)."""
        mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        if mode != b"output_half_pixel":
            raise OpsetError(f"{where(node)}: coordinate_transformation_mode {mode.decode()} came at opset 16")
        _drop_named(node, "coordinate_transformation_mode")

    def _gridsample(self, node: onnx.NodeProto) -> None:
        """GridSample-20 renamed 16's modes (bilinear -> linear, bicubic -> cubic) and took N-D inputs."""
        rank = self.facts.rank(node.input[0])
        if rank != 4:
            raise OpsetError(f"{where(node)}: GridSample before opset 20 takes 4-D inputs only (rank {rank})")
        mode = _attr(node, "mode", b"linear")
        _drop_named(node, "mode")
        older = {b"linear": "bilinear", b"cubic": "bicubic", b"nearest": "nearest"}.get(mode)
        if older is None:
            raise OpsetError(f"{where(node)}: mode {mode.decode()} has no form before opset 20")
        node.attribute.append(helper.make_attribute("mode", older))

    def _reshape(self, node: onnx.NodeProto) -> None:
        """allowzero=1 means nothing when the constant shape holds no 0 (dynamo writes it on every view)."""
        shape = self.facts.constant(node.input[1]) if len(node.input) > 1 else None
        if shape is not None and not np.any(shape == 0):
            _drop_named(node, "allowzero")

    def _softmax(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Before 13 the op coerces its input to 2-D at ``axis``: the same as 13's per-axis op only for
        the last axis. Another axis is moved last by a Transpose, and back (moving data, no arithmetic)."""
        axis = int(_attr(node, "axis", -1))
        _drop_named(node, "axis")
        node.attribute.append(helper.make_attribute("axis", -1))  # written out: before 13 the default is 1
        if axis == -1:
            return [node]
        rank = self.facts.rank(node.input[0])
        if rank is None:
            raise OpsetError(
                f"{where(node)}: axis {axis} means a different thing before opset 13 (inputs coerced to 2-D),"
                " and the input rank is unknown"
            )
        axis %= rank
        if axis == rank - 1:
            return [node]
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]  # a swap: its own inverse
        moved = self.make("Transpose", [node.input[0]], f"{node.output[0]}_axis_last", perm=perm)
        result = node.output[0]
        inner = self.facts.fresh(f"{result}_last")
        node.input[0], node.output[0] = moved.output[0], inner
        back = helper.make_node("Transpose", [inner], [result], name=self.facts.fresh(f"{result}_back"), perm=perm)
        return [moved, node, back]

    def _batchnorm(self, node: onnx.NodeProto, before: list[onnx.NodeProto], after: list[onnx.NodeProto]) -> None:
        if self.crossing(14):
            if _attr(node, "training_mode") == 1 or len(node.output) > 1:
                raise OpsetError(f"{where(node)}: training mode cannot be written below opset 14")
            _drop_named(node, "training_mode")
        if self.crossing(15):
            self._batchnorm_types(node, before, after)

    def _batchnorm_types(self, node: onnx.NodeProto, before: list[onnx.NodeProto], after: list[onnx.NodeProto]) -> None:
        """Before opset 15 the parameters share X's type (mean and var may differ at 14 only). Constant
        parameters of another type are stored in X's type when that changes no value; otherwise (an fp16 X
        with float32 statistics) the op computes in the parameters' type between two Casts, as BN-15 does."""
        types = self.facts.types
        x_type = types.get(node.input[0])
        if not x_type:
            return
        last = 3 if self.dst == 14 else 5
        others = [i for i in range(1, min(last, len(node.input))) if types.get(node.input[i], x_type) != x_type]
        if not others:
            return
        values = {i: self.facts.constant(node.input[i]) for i in others}
        computed = [node.input[i] for i, v in values.items() if v is None]
        if computed:
            raise OpsetError(
                f"{where(node)}: input {computed[0]} is computed in another type than X;"
                f" opset {self.dst} needs X's type"
            )
        dtype = helper.tensor_dtype_to_np_dtype(x_type)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow means the other path, not a warning
            stored = {i: v.astype(dtype) for i, v in values.items()}
        if all(np.array_equal(stored[i].astype(v.dtype), v) for i, v in values.items()):
            for i in others:
                cast = self.const(f"{node.input[i]}_as_x", stored[i])
                types[cast] = x_type
                node.input[i] = cast
            return
        self._batchnorm_in_wider_type(node, x_type, before, after)

    def _batchnorm_in_wider_type(
        self, node: onnx.NodeProto, x_type: int, before: list[onnx.NodeProto], after: list[onnx.NodeProto]
    ) -> None:
        """X cast up to the parameters' type, the op there, the result cast back: no parameter rounded."""
        wide = {self.facts.types.get(name) for name in node.input[1:5] if name}
        if len(wide) != 1 or not wide <= {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}:
            raise OpsetError(f"{where(node)}: its parameters do not share one float type; opset {self.dst} needs one")
        (to,) = wide
        up = self.make("Cast", [node.input[0]], f"{node.output[0]}_x_wide", to=to)
        result = node.output[0]
        node.input[0], node.output[0] = up.output[0], self.facts.fresh(f"{result}_wide")
        back = helper.make_node(
            "Cast", [node.output[0]], [result], name=self.facts.fresh(f"{result}_narrow"), to=x_type
        )
        before.append(up)
        after.append(back)

    def _resize(self, node: onnx.NodeProto) -> None:
        """Resize-18/19's additions (antialias, keep_aspect_ratio_policy, axes, half_pixel_symmetric) are
        dropped when they take their defaults, axes expanded to every axis when constant; Resize-11 takes
        roi and scales as required inputs, given as empty tensors where 13 omits them."""
        if self.crossing(19) and _attr(node, "coordinate_transformation_mode") == b"half_pixel_symmetric":
            raise OpsetError(f"{where(node)}: coordinate_transformation_mode half_pixel_symmetric came at opset 19")
        if self.crossing(18):
            if _attr(node, "antialias", 0) != 0:
                raise OpsetError(f"{where(node)}: antialias=1 came at opset 18")
            if _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
                raise OpsetError(f"{where(node)}: keep_aspect_ratio_policy other than stretch came at opset 18")
            self._resize_axes(node)
            _drop_named(node, "antialias", "keep_aspect_ratio_policy", "axes")
        if self.crossing(13):
            while len(node.input) < 3:
                node.input.append("")
            if not node.input[1]:
                node.input[1] = self.const(f"{node.output[0]}_roi", np.zeros(0, np.float32))
            if not node.input[2]:
                node.input[2] = self.const(f"{node.output[0]}_scales", np.zeros(0, np.float32))

    def _resize_axes(self, node: onnx.NodeProto) -> None:
        axes = _attr(node, "axes")
        if axes is None:
            return
        rank = self.facts.rank(node.input[0])
        if rank is None:
            raise OpsetError(f"{where(node)}: axes {list(axes)} on an input of unknown rank")
        axes = [a % rank for a in axes]
        if axes == list(range(rank)):
            return
        if sorted(axes) != axes:
            raise OpsetError(f"{where(node)}: axes {axes} out of order")
        # roi: starts then ends per listed axis; scales: per listed axis; sizes: per listed axis.
        roi = self.constant_input(node, 1, "roi")
        if roi is not None and roi.size:
            full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(roi.dtype)
            for k, a in enumerate(axes):
                full[a], full[rank + a] = roi[k], roi[len(axes) + k]
            node.input[1] = self.const(f"{node.output[0]}_roi", full)
        scales = self.constant_input(node, 2, "scales")
        if scales is not None and scales.size:
            full = np.ones(rank, scales.dtype)
            full[axes] = scales
            node.input[2] = self.const(f"{node.output[0]}_scales", full)
        sizes = self.constant_input(node, 3, "sizes")
        if sizes is not None and sizes.size:
            dims = self.facts.shapes.get(node.input[0]) or []
            others = [dims[a] for a in range(rank) if a not in axes]
            if any(d is None for d in others):
                raise OpsetError(f"{where(node)}: axes {axes} with sizes, and the other axes' sizes are unknown")
            full = np.array([d if d is not None else 0 for d in dims], np.int64)
            full[axes] = sizes
            node.input[3] = self.const(f"{node.output[0]}_sizes", full)

    def _split(self, node: onnx.NodeProto, before: list[onnx.NodeProto]) -> None:
        """Split-18's num_outputs -> the split sizes it means (ceil(d / n) each, the rest last), known now
        or computed; Split-13's split input -> Split-11's attribute when constant."""
        if self.crossing(18):
            n = _attr(node, "num_outputs")
            _drop_named(node, "num_outputs")
            if n is not None and (len(node.input) < 2 or not node.input[1]):
                self._split_sizes(node, int(n), before)
        if self.crossing(13):
            self._input_to_attribute(node, 1, "split")

    def _split_sizes(self, node: onnx.NodeProto, n: int, before: list[onnx.NodeProto]) -> None:
        axis = int(_attr(node, "axis", 0))
        dims = self.facts.shapes.get(node.input[0])
        dim = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
        if dim is not None:
            if dim % n == 0:
                return  # Split-13 without sizes splits equally into its outputs: the same thing
            chunk = -(-dim // n)
            sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
            while len(node.input) < 2:
                node.input.append("")
            node.input[1] = self.const(f"{node.output[0]}_sizes", np.array(sizes, np.int64))
            return
        if self.dst < 13:
            raise OpsetError(
                f"{where(node)}: num_outputs={n} on an axis of unknown size; opset {self.dst} needs the split sizes"
            )
        # Computed: chunk = ceil(d / n) = (d + n - 1) / n; sizes = [chunk] * (n - 1) ++ [d - (n - 1) * chunk].
        base = node.output[0]
        shape = self.make("Shape", [node.input[0]], f"{base}_shape")
        d = self.make("Gather", [shape.output[0], self.const(f"{base}_axis", np.array([axis], np.int64))], f"{base}_d")
        plus = self.make("Add", [d.output[0], self.const(f"{base}_nm1", np.array([n - 1], np.int64))], f"{base}_dn")
        chunk = self.make("Div", [plus.output[0], self.const(f"{base}_n", np.array([n], np.int64))], f"{base}_chunk")
        taken = self.make("Mul", [chunk.output[0], self.const(f"{base}_k", np.array([n - 1], np.int64))], f"{base}_t")
        rest = self.make("Sub", [d.output[0], taken.output[0]], f"{base}_rest")
        firsts = self.make("Tile", [chunk.output[0], self.const(f"{base}_reps", np.array([n - 1], np.int64))],
                           f"{base}_firsts")  # fmt: skip
        sizes = self.make("Concat", [firsts.output[0], rest.output[0]], f"{base}_sizes", axis=0)
        before.extend([shape, d, plus, chunk, taken, rest, firsts, sizes])
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = sizes.output[0]

    def _shape(self, node: onnx.NodeProto, after: list[onnx.NodeProto]) -> None:
        """Shape-15's start/end -> the whole shape, then a Slice of it."""
        start, end = _attr(node, "start"), _attr(node, "end")
        _drop_named(node, "start", "end")
        if start is None and end is None:
            return
        result = node.output[0]
        whole = self.facts.fresh(f"{result}_whole")
        node.output[0] = whole
        inputs = [
            whole,
            self.const(f"{result}_start", np.array([start or 0], np.int64)),
            self.const(f"{result}_end", np.array([INT64_MAX if end is None else end], np.int64)),
        ]
        after.append(helper.make_node("Slice", inputs, [result], name=self.facts.fresh(f"{result}_slice")))

    def _pad(self, node: onnx.NodeProto) -> None:
        """Pad-19's wrap mode has no older form; Pad-18's axes input -> pads over every axis."""
        if self.crossing(19) and _attr(node, "mode") == b"wrap":
            raise OpsetError(f"{where(node)}: mode wrap came at opset 19")
        if self.crossing(18) and len(node.input) > 3 and node.input[3]:
            axes = self.constant_input(node, 3, "axes")
            pads = self.constant_input(node, 1, "pads")
            rank = self.facts.rank(node.input[0])
            if rank is None:
                raise OpsetError(f"{where(node)}: axes on an input of unknown rank")
            full = np.zeros(2 * rank, np.int64)
            for k, a in enumerate(int(a) % rank for a in axes.reshape(-1)):
                full[a], full[rank + a] = pads[k], pads[len(axes) + k]
            node.input[1] = self.const(f"{node.output[0]}_pads", full)
            del node.input[3:]

    def _hardswish(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """HardSwish(x) = x * HardSigmoid(x; alpha=1/6, beta=1/2): its definition, with ops of opset 6."""
        if self.facts.types.get(node.input[0]) == onnx.TensorProto.BFLOAT16:
            raise OpsetError(f"{where(node)}: HardSigmoid takes no bfloat16 before opset 22")
        gate = self.make("HardSigmoid", [node.input[0]], f"{node.output[0]}_gate", alpha=1.0 / 6, beta=0.5)
        mul = helper.make_node("Mul", [node.input[0], gate.output[0]], [node.output[0]], name=node.name or None)
        return [gate, mul]

    def _or_equal(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """GreaterOrEqual / LessOrEqual (opset 12) = Or(Greater / Less, Equal): false on NaN, as they are."""
        strict = "Greater" if node.op_type == "GreaterOrEqual" else "Less"
        first = self.make(strict, list(node.input), f"{node.output[0]}_{strict.lower()}")
        equal = self.make("Equal", list(node.input), f"{node.output[0]}_equal")
        both = helper.make_node("Or", [first.output[0], equal.output[0]], [node.output[0]], name=node.name or None)
        return [first, equal, both]


# Ops newer than the target written with the older ops that define them: op -> (since, writer).
_WRITTEN_WITH_OLDER_OPS: dict[str, tuple[int, Callable[[Down, onnx.NodeProto], list[onnx.NodeProto]]]] = {
    "HardSwish": (14, Down._hardswish),
    "GreaterOrEqual": (12, Down._or_equal),
    "LessOrEqual": (12, Down._or_equal),
}


def _lowering_hint(node: onnx.NodeProto) -> str:
    return "" if node.op_type not in _NORM_OPS else " (emit it decomposed: --norm-style decomposed)"


_NORM_OPS = ("LayerNormalization", "GroupNormalization", "RMSNormalization", "InstanceNormalization")


def down(model: onnx.ModelProto, dst: int) -> onnx.ModelProto:
    """A copy of ``model`` at default opset ``dst`` < its own (local functions inlined first)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if out.functions:
        from onnx import inliner

        out = inliner.inline_local_functions(out)
    Down(out, default_opset(out), dst).run()
    for op in out.opset_import:
        if is_default_domain(op.domain):
            op.version = dst
    # Old runtimes reject IR versions newer than their own: use the oldest the opset allows.
    out.ir_version = min(out.ir_version, max(7, helper.find_min_ir_version_for(list(out.opset_import), True)))
    return out
