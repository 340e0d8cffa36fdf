"""Changing a model's default opset, up or down.

Up: onnx's version converter, which has adapters for most ops. Down: onnx's
converter has few down adapters (not even Pow 15 -> 13), so normonnx relabels
each op after checking, from the op schemas themselves, that the node means
the same at the target version: same inputs and attributes used, no attribute
the target lacks. The ops whose signature changed in ways exporters use get an
adapter (axes moved between attribute and input; BatchNormalization's
training_mode); the ops whose meaning changed with an unchanged signature
(Softmax's axis coercion before 13, Resize) are converted only when provably
the same, or refused by name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import defs, numpy_helper

from normonnx.errors import UnusableInputError, first_line
from normonnx.families import is_default_domain
from normonnx.graph.bridge import keep_dropped_fields

_REDUCE_AXES_INPUT_SINCE = {
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


class OpsetError(UnusableInputError):
    pass


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if is_default_domain(o.domain))


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
    return numpy_helper.from_array(np.asarray(onnx.helper.get_attribute_value(attr), dtype=kind))


def _drop_attributes(node: onnx.NodeProto, drop: Callable[[onnx.AttributeProto], bool]) -> None:
    """Remove the node's attributes ``drop`` picks (a repeated proto field has no filter in place)."""
    kept = [a for a in node.attribute if not drop(a)]
    if len(kept) != len(node.attribute):
        del node.attribute[:]
        node.attribute.extend(kept)


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
            and onnx.helper.get_attribute_value(default) == onnx.helper.get_attribute_value(a)
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


class _Down:
    """Rewrites one graph from opset ``src`` to ``dst`` in place."""

    def __init__(self, model: onnx.ModelProto, src: int, dst: int) -> None:
        self.model, self.src, self.dst = model, src, dst
        self.consts: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and len(n.attribute) == 1:
                tensor = _constant_tensor(n.attribute[0])
                if tensor is not None:
                    self.consts[n.output[0]] = tensor
        self._types: dict[str, int] | None = None

    def elem_types(self) -> dict[str, int]:
        """Tensor name -> element type, inferred once (only BatchNormalization's mixed types need it)."""
        if self._types is None:
            try:
                graph = onnx.shape_inference.infer_shapes(self.model).graph
            except Exception:  # inference is a help here, not a requirement
                graph = self.model.graph
            self._types = {t.name: t.data_type for t in graph.initializer}
            for vi in [*graph.input, *graph.value_info, *graph.output]:
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                    self._types[vi.name] = vi.type.tensor_type.elem_type
            self._types.update((k, t.data_type) for k, t in self.consts.items())
        return self._types

    def constant(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def node(self, node: onnx.NodeProto) -> None:
        if not is_default_domain(node.domain):
            return
        try:
            src = defs.get_schema(node.op_type, self.src)
            dst = defs.get_schema(node.op_type, self.dst)
        except defs.SchemaError:
            raise OpsetError(
                f"{node.op_type} ({node.name or node.output[0]}) does not exist at opset {self.dst}"
            ) from None
        if src.since_version == dst.since_version:
            return
        where = f"{node.op_type} ({node.name or node.output[0]})"
        since = _REDUCE_AXES_INPUT_SINCE.get(node.op_type)
        if since is not None and self.dst < since <= self.src:
            self._axes_to_attribute(node, where)
        elif node.op_type in _SOFTMAX and self.dst < 13 <= self.src:
            self._softmax(node, where)
        elif node.op_type == "BatchNormalization" and self.dst < 14 <= self.src:
            self._batchnorm(node, where)
        elif node.op_type in ("Resize", "Upsample"):
            raise OpsetError(
                f"{where}: its semantics changed between opsets {dst.since_version} and {src.since_version}"
            )
        if node.op_type == "BatchNormalization" and self.dst < 15 <= self.src:
            self._batchnorm_types(node, where)
        if node.op_type == "Reshape":
            self._reshape(node)
        elif node.op_type == "Constant" and self.dst < 12 and node.attribute[0].name != "value":
            tensor = _constant_tensor(node.attribute[0])  # value_ints and friends came at opset 12
            if tensor is not None:
                del node.attribute[:]
                node.attribute.append(onnx.helper.make_attribute("value", tensor))
        _drop_default_attributes(node, src, dst)
        problem = _signature_ok(node, dst)
        if problem:
            raise OpsetError(f"{where} {problem} (opset {self.dst})")

    def _axes_to_attribute(self, node: onnx.NodeProto, where: str) -> None:
        if len(node.input) < 2 or not node.input[1]:
            if any(a.name == "noop_with_empty_axes" and a.i == 1 for a in node.attribute):
                raise OpsetError(f"{where}: noop_with_empty_axes=1 has no equivalent at opset {self.dst}")
            return
        axes = self.constant(node.input[1])
        if axes is None:
            raise OpsetError(f"{where}: its axes are computed at run time; opset {self.dst} needs them constant")
        del node.input[1:]
        _drop_attributes(node, lambda a: a.name == "noop_with_empty_axes")
        node.attribute.append(onnx.helper.make_attribute("axes", [int(a) for a in axes.reshape(-1)]))

    def _reshape(self, node: onnx.NodeProto) -> None:
        """allowzero=1 means nothing when the constant shape holds no 0 (dynamo writes it on every view)."""
        shape = self.constant(node.input[1]) if len(node.input) > 1 else None
        if shape is not None and not np.any(shape == 0):
            _drop_attributes(node, lambda a: a.name == "allowzero")

    def _softmax(self, node: onnx.NodeProto, where: str) -> None:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if axis != -1:
            raise OpsetError(f"{where}: axis {axis} means a different thing before opset 13 (inputs coerced to 2-D)")

    def _batchnorm(self, node: onnx.NodeProto, where: str) -> None:
        if any(a.name == "training_mode" and a.i == 1 for a in node.attribute) or len(node.output) > 1:
            raise OpsetError(f"{where}: training mode cannot be written below opset 14")
        _drop_attributes(node, lambda a: a.name == "training_mode")

    def _batchnorm_types(self, node: onnx.NodeProto, where: str) -> None:
        """Before opset 15 the parameters share X's type (mean and var may differ at 14 only):
        constant parameters of another type (fp32 with an fp16 X) are stored in X's type."""
        types = self.elem_types()
        x_type = types.get(node.input[0])
        if not x_type:
            return
        last = 3 if self.dst == 14 else 5
        for i in range(1, min(last, len(node.input))):
            name = node.input[i]
            if types.get(name, x_type) == x_type:
                continue
            tensor = self.consts.get(name)
            if tensor is None:
                raise OpsetError(
                    f"{where}: input {name} is computed in another type than X; opset {self.dst} needs X's type"
                )
            dtype = onnx.helper.tensor_dtype_to_np_dtype(x_type)
            cast = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(dtype), f"{name}_as_{dtype.name}")
            if cast.name not in self.consts:
                self.model.graph.initializer.append(cast)
                self.consts[cast.name] = cast
                types[cast.name] = x_type
            node.input[i] = cast.name


def _down(model: onnx.ModelProto, dst: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    src = default_opset(out)
    if out.functions or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in out.graph.node for a in n.attribute
    ):
        raise OpsetError(f"models with functions or subgraphs are not converted down to opset {dst}")
    rewriter = _Down(out, src, dst)
    for node in out.graph.node:
        rewriter.node(node)
    for op in out.opset_import:
        if is_default_domain(op.domain):
            op.version = dst
    # Old runtimes reject IR versions newer than their own: use the oldest the opset allows.
    out.ir_version = min(out.ir_version, max(7, onnx.helper.find_min_ir_version_for(list(out.opset_import), True)))
    return out


def _check_batchnorm_outputs(model: onnx.ModelProto, target: int) -> None:
    """BatchNormalization's 4th and 5th outputs (saved mean and variance, opsets 9 to 13) end at opset 14."""
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and is_default_domain(node.domain) and len(node.output) > 3:
            raise OpsetError(
                f"BatchNormalization ({node.name or node.output[0]}) has {len(node.output)} outputs, the training"
                f" form of opsets 9 to 13; opset {target} has no saved mean and variance outputs: emit at opset 13"
            )


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The model at default opset ``target`` (validated by onnx's checker)."""
    src = default_opset(model)
    if target == src:
        return model
    if target > src:
        from onnx import version_converter

        if src < 14 <= target:
            _check_batchnorm_outputs(model, target)

        try:
            out = version_converter.convert_version(model, target)
        except Exception as e:  # the converter raises bare RuntimeErrors naming the op
            raise OpsetError(f"onnx cannot convert this model from opset {src} to {target}: {first_line(e)}") from None
        keep_dropped_fields(out, model)  # the converter drops node and graph metadata_props
    else:
        out = _down(model, target)
    try:
        onnx.checker.check_model(out, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OpsetError(f"the model converted to opset {target} is not valid: {first_line(e)}") from None
    return out


# The oldest default opset onnxruntime runs (BatchNormalization-6's is_test and consumed_inputs are gone at 7).
OLDEST_RUNNABLE_OPSET = 7


def runnable_copy(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` raised to the oldest opset onnxruntime runs, when it is older (else None).

    Files from 2017 (opset 6 and below: BatchNormalization with is_test, consumed_inputs,
    spatial) load in onnx but not in onnxruntime: normonnx works on, and verifies against,
    this copy made by onnx's own version converter.
    """
    if default_opset(model) >= OLDEST_RUNNABLE_OPSET:
        return None
    return convert_opset(model, OLDEST_RUNNABLE_OPSET)
