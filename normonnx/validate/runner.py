"""onnxruntime sessions, created the same way everywhere.

A model already in memory is handed to onnxruntime as bytes only when it has
no external data (so onnxruntime never resolves a weight path against the
current directory); otherwise it is given the path of the validated file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from normonnx.errors import MissingKernelError, RuntimeUnavailableError, UnusableInputError, first_line
from normonnx.isolation import CUSTOM_OPS_ENV, THREADS_ENV

if TYPE_CHECKING:  # the isolated child runs models from paths and never needs onnx itself
    import numpy as np
    import onnx


PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class SessionConfig:
    # Which runtime runs the model: onnxruntime (with ``provider``) or OpenVINO's CPU plugin.
    runtime: str = "onnxruntime"
    provider: str = "cpu"
    optimize: bool = False  # False: ORT_DISABLE_ALL (the reference); True: ORT_ENABLE_ALL (deployment)
    threads: int | None = None
    # onnxruntime's idle pool threads spin-wait for a while; with two sessions timed in
    # turns, one session's spinning threads steal cores from the other's run.
    spin: bool = True
    # onnxruntime graph transformers (and rewrite rules) switched off by name: what bisection varies.
    disabled_optimizers: tuple[str, ...] = ()
    # Log at verbose level so that the transformers that changed the graph can be read back (a child only).
    verbose: bool = False

    @property
    def where(self) -> str:
        """How reports name where the model runs: the provider ("cpu", "cuda") or "openvino"."""
        return self.provider if self.runtime == "onnxruntime" else self.runtime


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def provider_available(provider: str) -> bool:
    return PROVIDERS.get(provider, provider) in available_providers()


def require_provider(provider: str) -> str:
    name = PROVIDERS.get(provider)
    if name is None:
        raise UnusableInputError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDERS)}")
    if name not in available_providers():
        raise RuntimeUnavailableError(
            f"{name} is not available in this onnxruntime ({', '.join(available_providers())});"
            " install onnxruntime-gpu on a machine with a GPU"
        )
    return name


def require_runtime(runtime: str, provider: str = "cpu") -> str:
    """How reports name where models run ("cpu", "cuda", "openvino"); a runtime or provider not here raises."""
    if runtime not in RUNTIMES:
        raise UnusableInputError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        from normonnx.validate.openvino_session import require_openvino

        if provider != "cpu":
            raise UnusableInputError(f"--provider {provider}: OpenVINO runs here on its CPU plugin only")
        require_openvino()
    else:
        require_provider(provider)
    return SessionConfig(runtime=runtime, provider=provider).where


def session(model: onnx.ModelProto | str | os.PathLike, config: SessionConfig = SessionConfig()):
    """A session of the configured runtime (onnxruntime's InferenceSession, or OpenVINO behind its interface)."""
    if config.runtime == "openvino":
        from normonnx.validate.openvino_session import OpenVinoSession

        return OpenVinoSession(_runnable(model), _threads(config))
    import onnxruntime as ort

    name = require_provider(config.provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if config.optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 0 if config.verbose else 4  # a failing run is our one-line error, not their log
    threads = _threads(config)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not config.optimize:
        # A reference or verification session runs a few times: repacking every weight for
        # faster GEMMs costs more than it saves there (and makes session creation superlinear).
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not config.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    source = _runnable(model)
    register_custom_ops(options)
    extra = {"disabled_optimizers": list(config.disabled_optimizers)} if config.disabled_optimizers else {}
    try:
        return ort.InferenceSession(source, options, providers=providers, **extra)
    except Exception as e:
        missing = missing_kernel(e)
        if missing is None:
            raise
        raise MissingKernelError(missing) from None


_NOT_REGISTERED = re.compile(r"([\w.]*):?(\w+)\(-?\d+\) is not a registered function/op")


def missing_kernel(error: BaseException) -> str | None:
    """onnxruntime's "X is not a registered function/op" as what to do (None for any other error)."""
    match = _NOT_REGISTERED.search(str(error))
    if match is None:
        return None
    domain, op = match.groups()
    return (
        f"onnxruntime cannot run {domain + ':' if domain else ''}{op} (no kernel, and no custom-op library"
        " implements it): pass --custom-ops LIB with the library that does"
    )


def ops_without_kernel(model: onnx.ModelProto) -> dict[str, int]:
    """ "domain:op" -> node count for the ops onnxruntime itself cannot run: no kernel, and no onnx schema
    whose function body it would expand (a custom op, whose library --custom-ops may load)."""
    from collections import Counter

    from onnx import defs
    from onnxruntime.capi import _pybind_state

    from normonnx.families import is_default_domain
    from normonnx.graph.modelio import iter_nodes

    kernels = {(k.domain or "", k.op_name) for k in _pybind_state.get_all_opkernel_def()}
    opsets = {("" if is_default_domain(o.domain) else o.domain): o.version for o in model.opset_import}
    missing: Counter[str] = Counter()
    for node in iter_nodes(model.graph):
        domain = "" if is_default_domain(node.domain) else node.domain
        if (domain, node.op_type) in kernels:
            continue
        try:
            defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
            continue  # an onnx op (or function) onnxruntime expands
        except defs.SchemaError:
            missing[f"{domain + ':' if domain else ''}{node.op_type}"] += 1
    return dict(missing)


def custom_op_libraries() -> list[str]:
    """The custom-op libraries --custom-ops gave (through the environment, so that children see them)."""
    return [p for p in os.environ.get(CUSTOM_OPS_ENV, "").split(os.pathsep) if p]


def register_custom_ops(options) -> None:
    """Load every --custom-ops library into a SessionOptions; one that does not load is a one-line error."""
    for library in custom_op_libraries():
        try:
            options.register_custom_ops_library(library)
        except Exception as e:
            raise UnusableInputError(f"--custom-ops {library}: onnxruntime cannot load it ({first_line(e)})") from None


def _threads(config: SessionConfig) -> int | None:
    """The session's threads: the config's, else a many-file worker's share (THREADS_ENV), else the runtime's."""
    return config.threads or int(os.environ.get(THREADS_ENV, "0") or 0) or None


def _runnable(model: onnx.ModelProto | str | os.PathLike) -> bytes | str:
    """What a runtime loads: the path of a file, or the bytes of a model in memory without external data."""
    if isinstance(model, str | os.PathLike):
        return str(Path(model))
    from normonnx.graph.modelio import has_external_data

    if has_external_data(model):
        raise UnusableInputError("an in-memory model with external data must be run from its validated path")
    return model.SerializeToString()


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=False))
