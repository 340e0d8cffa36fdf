"""Deployment targets: the runtime a model is emitted for, and what that runtime takes.

Normalization support differs by runtime and by version, and users find out at
deployment. This table is where normonnx keeps it, each claim with its source:
the newest default opset the runtime takes, which normalization ops it runs
with a kernel of its own (and which op versions), its known normalization bugs,
and which form runs fastest where this machine can measure it (onnxruntime CPU
and OpenVINO CPU: ``benchmarks/targets.md``). ``--target`` picks the opset and
each family's form from here, and the report says why.

The ``ort-cpu`` and ``openvino`` rows are measured on every test run
(``tests/test_targets.py``): every family at every form on both runtimes, and a
claim that is wrong fails the suite. The other rows cannot run here; they are
sourced only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import defs

from normonnx.errors import UnusableInputError
from normonnx.families import BY_KEY, WITH_OP

ORT_KERNELS = "https://github.com/microsoft/onnxruntime/blob/main/docs/OperatorKernels.md"
TRT_86_OPS = "https://github.com/onnx/onnx-tensorrt/blob/release/8.6-GA/docs/operators.md"
TRT_10_OPS = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
OV_OPS = "https://github.com/openvinotoolkit/openvino/blob/master/src/frontends/onnx/docs/supported_ops.md"
COREML_OPS = (
    "https://github.com/microsoft/onnxruntime/blob/main/tools/ci_build/github/apple/coreml_supported_mlprogram_ops.md"
)


@dataclass(frozen=True)
class Target:
    """One runtime's row: what it takes, what it runs natively, what is known to break."""

    key: str
    runtime: str
    max_opset: int
    # family -> the versions of its standard op the runtime runs with its own kernel (others: decomposed).
    native: dict[str, tuple[int, ...]]
    # family -> the faster form where both run (measured on this machine, or the fused kernel where not).
    fastest: dict[str, str]
    measured: bool  # whether ``fastest`` and ``native`` are measured here (tests/test_targets.py)
    bugs: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default_factory=tuple)
    # Normalization ops whose kernel accumulates its statistics in float32 for fp16/bf16 input (read from the
    # runtime's sources, ``HALF_STATISTICS_SOURCES``): ``normonnx half`` runs them in half, not as float32 islands.
    float32_statistics: frozenset[str] = frozenset()
    runs_function_bodies: bool = False  # an op without a kernel runs as its ONNX function body (onnxruntime)

    def takes(self, family_key: str, version: int) -> bool:
        """Whether this runtime runs that version of the family's op (with a kernel, or as its function body)."""
        if version > self.max_opset:
            return False
        return self.runs_function_bodies or version in self.native.get(family_key, ())

    def op_version(self, family_key: str, opset: int) -> int | None:
        """The version of the family's op at ``opset`` (None when the op does not exist there)."""
        op = BY_KEY[family_key].onnx_op
        try:
            return defs.get_schema(op, opset).since_version
        except defs.SchemaError:
            return None

    def form(self, family_key: str, opset: int, style: str) -> tuple[str, str]:
        """(form, why) for one family at ``opset``: the op only where this runtime runs that version of it."""
        op = BY_KEY[family_key].onnx_op
        version = self.op_version(family_key, opset)
        if version is None:
            return "decomposed", f"{op} does not exist at opset {opset}"
        if family_key == "groupnorm" and version == 18:
            return "decomposed", "GroupNormalization-18 is deprecated since onnx 1.18 (its checker refuses it)"
        if version not in self.native.get(family_key, ()):
            runs = self.native.get(family_key, ())
            which = f"only {op}-" + "/".join(map(str, runs)) if runs else f"no {op} kernel"
            return "decomposed", f"{self.key} has {which} (opset {opset} means {op}-{version})"
        if style in ("op", "decomposed"):
            return style, f"--norm-style {style}; {self.key} runs {op}-{version}"
        chosen = self.fastest.get(family_key, "op")
        how = "measured fastest here" if self.measured else "its fused kernel"
        return chosen, f"{self.key} runs {op}-{version}; {chosen} is {how}"

    def opset_for(self, model_opset: int, asked: int | None) -> int:
        """The opset to write: the one asked (at most the target's), else the model's capped at the target's."""
        if asked is not None:
            if asked > self.max_opset:
                raise UnusableInputError(f"--opset {asked}: {self.key} takes opsets up to {self.max_opset}")
            return asked
        return min(model_opset, self.max_opset)


# Where each row's float32_statistics comes from (read 2026-12; each file's kernel for half input).
HALF_STATISTICS_SOURCES = {
    "ort-cpu": "onnxruntime core/providers/cpu/nn/layer_norm_impl.cc and rms_norm.cc (half converted to float"
    " before the sums); instance_norm.cc and batch_norm.cc register float only, so onnxruntime casts half to float"
    " around them (core/optimizer/insert_cast_transformer.h)",
    "ort-cuda": "onnxruntime core/providers/cuda/nn/layer_norm_impl.cu (Welford in float), rms_norm.cc,"
    " instance_norm.cc ('stats_desc needs to be of float type even for float16 input'), batch_norm.cc (float"
    " parameters for half data); not com.microsoft SkipLayerNormalization, which accumulates in half outside its"
    " strict mode (https://github.com/microsoft/onnxruntime/issues/29034)",
    "tensorrt": "onnx-tensorrt onnxOpImporters.cpp builds INormalizationLayer for LayerNormalization,"
    " InstanceNormalization and GroupNormalization; NvInfer.h: 'by default TensorRT will run the normalization"
    " computation in DataType::kFLOAT32 even in mixed precision mode'; BatchNormalization becomes an IScaleLayer",
    "openvino": "openvino frontends/onnx op/layer_normalization.cpp (Convert to stash_type, MVN); the MVN kernels"
    " (intel_cpu nodes/mvn.cpp, intel_gpu mvn_gpu_bfyx_opt.cl) accumulate in float",
}
_BATCHNORM = (15, 14, 9, 7)  # every BatchNormalization version a runtime of today takes
_ORT_NATIVE = {"batchnorm": _BATCHNORM, "instancenorm": (6, 22), "layernorm": (17,), "rmsnorm": (23,)}
_OP_WHERE_NATIVE = {f: "op" for f in WITH_OP}  # the op wherever the runtime has it natively
_ORT_FLOAT32_STATISTICS = frozenset(
    {"LayerNormalization", "RMSNormalization", "InstanceNormalization", "BatchNormalization"}
)
_TRT_FLOAT32_STATISTICS = frozenset({"LayerNormalization", "InstanceNormalization", "BatchNormalization"})

TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target(
            "ort-cpu",
            "onnxruntime, CPU execution provider",
            23,
            _ORT_NATIVE,
            {f: BY_KEY[f].auto_form for f in WITH_OP},
            measured=True,
            bugs=(
                "no GroupNormalization kernel on CPU: the op runs as its function body"
                " (https://github.com/microsoft/onnxruntime/issues/24538)",
            ),
            sources=(ORT_KERNELS, "https://github.com/microsoft/onnxruntime/pull/24449 (ONNX 1.18, opset 23)"),
            float32_statistics=_ORT_FLOAT32_STATISTICS,
            runs_function_bodies=True,
        ),
        Target(
            "ort-cuda",
            "onnxruntime, CUDA execution provider",
            23,
            _ORT_NATIVE,
            _OP_WHERE_NATIVE,
            measured=False,
            bugs=(
                "GroupNormalization-21 has no kernel (https://github.com/microsoft/onnxruntime/issues/24538);"
                " com.microsoft GroupNorm is onnxruntime's own fused op",
            ),
            sources=(ORT_KERNELS,),
            float32_statistics=_ORT_FLOAT32_STATISTICS,
            runs_function_bodies=True,
        ),
        Target(
            "tensorrt-8.6",
            "TensorRT 8.6 ONNX parser",
            17,
            {"batchnorm": _BATCHNORM, "instancenorm": (6,), "layernorm": (17,)},
            _OP_WHERE_NATIVE,
            measured=False,
            bugs=(
                "LayerNorm decomposed runs in fp16 and may overflow: export at opset 17 so the parser builds"
                " its normalization layer (https://github.com/NVIDIA/TensorRT/issues/2781,"
                " https://github.com/NVIDIA/TensorRT/issues/2564)",
                "opsets 7 to 17 only: GroupNormalization (18) and RMSNormalization (23) do not exist there",
            ),
            sources=(TRT_86_OPS,),
            float32_statistics=_TRT_FLOAT32_STATISTICS,
        ),
        Target(
            "tensorrt-10",
            "TensorRT 10.x ONNX parser (10.0 and later)",
            20,
            {"batchnorm": _BATCHNORM, "instancenorm": (6,), "layernorm": (17,), "groupnorm": (18,)},
            _OP_WHERE_NATIVE,
            measured=False,
            bugs=(
                "GroupNormalization-21 fails before 10.9 (https://github.com/NVIDIA/TensorRT/issues/4336,"
                " fixed by https://github.com/onnx/onnx-tensorrt/pull/1022)",
                "RMSNormalization-23 is parsed from 10.15 only (https://github.com/NVIDIA/TensorRT/issues/4639)",
                "LayerNorm in fp16 still loses accuracy in 10.10 (https://github.com/NVIDIA/TensorRT/issues/4493)",
            ),
            sources=(TRT_10_OPS, "https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/docs/operators.md"),
            float32_statistics=_TRT_FLOAT32_STATISTICS | {"GroupNormalization"},
        ),
        Target(
            "openvino",
            "OpenVINO ONNX frontend, CPU plugin",
            23,
            {
                "batchnorm": _BATCHNORM,
                "instancenorm": (6, 22),
                "layernorm": (17,),
                "groupnorm": (18, 21),
                "rmsnorm": (23,),
            },
            _OP_WHERE_NATIVE,  # measured: no decomposed form is faster there (benchmarks/targets.md)
            measured=True,
            bugs=(
                "GroupNormalization-21 read as per channel only since https://github.com/openvinotoolkit/openvino/pull/32700",
                "RMSNormalization-23 missing in 2026.2.1 (https://github.com/openvinotoolkit/openvino/issues/36694);"
                " 2026.4.1 runs it (measured by tests/test_targets.py)",
            ),
            sources=(OV_OPS,),
            float32_statistics=frozenset({"LayerNormalization"}),
        ),
        Target(
            "coreml",
            "onnxruntime, CoreML execution provider (ML Program)",
            20,
            {"batchnorm": _BATCHNORM, "instancenorm": (6,), "layernorm": (17,)},
            _OP_WHERE_NATIVE,
            measured=False,
            bugs=(
                "every op builder takes opsets 1 to 20 (base_op_builder.h): newer nodes fall back to the CPU",
                "GroupNormalization's builder reads a per-channel scale on opset-18 nodes (per group): decomposed",
                "normalization scale and bias must be constant and stash_type 1",
            ),
            sources=(COREML_OPS,),
        ),
    )
}


def what_will_not_run(model: onnx.ModelProto, deploy: Target) -> list[str]:
    """One line per thing in ``model`` that ``deploy``'s runtime will not run as it is, with what to do."""
    from collections import Counter

    from normonnx.families import BY_OP, is_default_domain, onnxruntime_norm_family
    from normonnx.graph.downconvert import default_opset, onnxruntime_op_without_schema
    from normonnx.graph.modelio import iter_nodes

    opset = default_opset(model)
    lines = []
    if opset > deploy.max_opset:
        lines.append(
            f"opset {opset}: {deploy.key} takes up to {deploy.max_opset}"
            f" (normonnx emit --target {deploy.key} converts it)"
        )
    missing: Counter[str] = Counter()
    on_ort = deploy.key.startswith("ort-") or deploy.key == "coreml"  # CoreML's EP falls back to onnxruntime CPU
    for node in iter_nodes(model.graph):
        if onnxruntime_norm_family(node.op_type, node.domain) or onnxruntime_op_without_schema(node, opset):
            if not on_ort:
                missing[f"{node.op_type} (an onnxruntime op): {deploy.key} does not run it"] += 1
            continue
        if not is_default_domain(node.domain):
            if not (on_ort and node.domain == "com.microsoft"):
                missing[f"{node.domain}:{node.op_type}: an op of a custom domain, unknown to {deploy.key}"] += 1
            continue
        family = BY_OP.get(node.op_type)
        if family is not None and family.key in deploy.native:
            version = deploy.op_version(family.key, opset)
            if version not in deploy.native[family.key]:
                missing[f"{node.op_type}-{version}: no kernel in {deploy.key} (emit --target decomposes it)"] += 1
        elif family is not None:
            missing[f"{node.op_type}: no kernel in {deploy.key} (emit --target decomposes it)"] += 1
    lines += [f"{what} ({n} nodes)" if n > 1 else what for what, n in missing.items()]
    return lines


def target(key: str) -> Target:
    try:
        return TARGETS[key]
    except KeyError:
        raise UnusableInputError(f"--target {key}: choose one of {', '.join(TARGETS)}") from None
