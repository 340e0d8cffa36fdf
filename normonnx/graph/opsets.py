"""Changing a model's default opset, up or down.

Up: onnx's version converter, which has adapters for most ops; onnxruntime's
own ops in the default domain (its LayerNormalization before 17,
SimplifiedLayerNormalization) have no schema there and stop it, so they cross
under a private domain and come back (LayerNormalization as the standard op
from 17 on, which has the same attributes and outputs). Down: normonnx's own
adapters (``graph.downconvert``), exact or refused by name.
"""

from __future__ import annotations

import onnx

from normonnx.errors import first_line
from normonnx.families import is_default_domain
from normonnx.graph.bridge import keep_dropped_fields
from normonnx.graph.downconvert import ComputedAtRunTime, OpsetError, default_opset, down, onnxruntime_op_without_schema
from normonnx.graph.modelio import iter_nodes

__all__ = ["ComputedAtRunTime", "OpsetError", "convert_opset", "default_opset", "runnable_copy"]
# A domain no runtime knows, under which onnxruntime's default-domain ops cross onnx's up converter.
_CROSSING_DOMAIN = "normonnx.crossing"


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

        hidden = _hide_onnxruntime_ops(model, src)
        try:
            out = version_converter.convert_version(hidden, target)
        except Exception as e:  # the converter raises bare RuntimeErrors naming the op
            raise OpsetError(f"onnx cannot convert this model from opset {src} to {target}: {first_line(e)}") from None
        _bring_back_onnxruntime_ops(out)
        # The converter's shape hints can contradict what inference finds at the new opset (ddddocr's
        # Reshape at 12 -> 17): hints only, dropped; whoever needs shapes infers them again.
        del out.graph.value_info[:]
        keep_dropped_fields(out, model)  # the converter drops node and graph metadata_props
    else:
        out = down(model, target)
    try:
        onnx.checker.check_model(_hide_onnxruntime_ops(out, target), full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OpsetError(f"the model converted to opset {target} is not valid: {first_line(e)}") from None
    return out


def _hide_onnxruntime_ops(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` (or a copy) with onnxruntime's schema-less default-domain ops moved to a private domain."""
    if not any(onnxruntime_op_without_schema(n, opset) for n in iter_nodes(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in iter_nodes(out.graph):
        if onnxruntime_op_without_schema(node, opset):
            node.domain = _CROSSING_DOMAIN
    out.opset_import.append(onnx.helper.make_opsetid(_CROSSING_DOMAIN, 1))
    return out


def _bring_back_onnxruntime_ops(model: onnx.ModelProto) -> None:
    for node in iter_nodes(model.graph):
        if node.domain == _CROSSING_DOMAIN:
            node.domain = ""
    kept = [o for o in model.opset_import if o.domain != _CROSSING_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


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
