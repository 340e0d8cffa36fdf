"""OpenVINO (CPU) behind the slice of onnxruntime's session interface normonnx uses.

A second runtime that runs on this machine: ``check --runtime openvino`` and
``bench --runtime openvino`` make this session wherever they would make an
onnxruntime one (``validate.runner.session``), so isolation, comparison,
localization and interleaved timing are the same code for both.

OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it;
normonnx asks for float32 (``INFERENCE_PRECISION_HINT``), so a float32 model
is judged as float32 on both runtimes, and for the latency hint (batch 1,
one request at a time), as ``bench`` measures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normonnx.errors import RuntimeUnavailableError, UnusableInputError

if TYPE_CHECKING:
    import numpy as np
    import onnx

INSTALL_HINT = "OpenVINO is not installed: pip install openvino"


@dataclass(frozen=True)
class Port:
    """What onnxruntime's NodeArg tells: a name, a type string, a shape with None for dynamic axes."""

    name: str
    type: str
    shape: list[int | None]


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailableError(INSTALL_HINT) from None
    return openvino


def _port(port: Any, fallback: str, preferred: list[str] = ()) -> Port:
    """OpenVINO merges a tensor's aliases (an Identity's input and output) into one port: the name the ONNX
    graph gives it (``preferred``, its inputs or outputs) is the one reported."""
    names = port.get_names()
    known = [n for n in preferred if n in names]
    name = known[0] if known else (sorted(names)[0] if names else fallback)
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return Port(name, f"tensor({port.get_element_type().get_type_name()})", shape)


def _reason(error: BaseException) -> str:
    """The informative line of an OpenVINO exception (the first names a C++ source file)."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip(" -")]
    rules = [line for line in lines if "conversion rule" in line]  # which ops its ONNX frontend lacks
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '", "FrontEnd API", "Summary"))]
    return (rules or useful or lines or [type(error).__name__])[0][:300]


def _graph_names(model: onnx.ModelProto | str | os.PathLike | bytes) -> tuple[list[str], list[str]]:
    """The ONNX graph's input and output names (weights are not read)."""
    import onnx

    if isinstance(model, str | os.PathLike):
        proto = onnx.load(str(model), load_external_data=False)
    else:
        proto = onnx.ModelProto.FromString(model) if isinstance(model, bytes) else model
    return [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]


class OpenVinoSession:
    """One model compiled for OpenVINO's CPU plugin, run one request at a time."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike | bytes, threads: int | None = None) -> None:
        ov = require_openvino()
        core = ov.Core()
        if isinstance(model, str | os.PathLike):
            source: Any = str(Path(model))
        else:
            source = model if isinstance(model, bytes) else model.SerializeToString()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self._compiled = core.compile_model(core.read_model(source), "CPU", config)
        except Exception as e:  # OpenVINO's first line names its source file; the reason comes later
            raise UnusableInputError(f"OpenVINO cannot run the model: {_reason(e)}") from None
        self._request = self._compiled.create_infer_request()
        inputs, outputs = _graph_names(model)
        self._inputs = [_port(p, f"input{k}", inputs) for k, p in enumerate(self._compiled.inputs)]
        self._outputs = [_port(p, f"output{k}", outputs) for k, p in enumerate(self._compiled.outputs)]
        self._output_index = {}
        for k, p in enumerate(self._compiled.outputs):
            for name in p.get_names():
                self._output_index[name] = k

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs (all when None), copied out of OpenVINO's buffers, in the order asked."""
        import numpy as np

        result = self._request.infer(feeds).to_tuple()
        wanted = [o.name for o in self._outputs] if names is None else names
        return [np.array(result[self._output_index[name]], copy=True) for name in wanted]
