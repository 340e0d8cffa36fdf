"""What every command and check returns, at the bottom of the layers, and the one way each becomes JSON.

Pipelines and checks fill these objects; the renderers (``reports/text.py``, ``markdown.py``,
``plots.py``) and the report-folder writer (``reports/folder.py``) read them. Both sides import this
module and neither imports the other, so showing a result never depends on the code that computed
it (STYLE.md: result objects at the bottom, renderers and writers above them). This module imports
only the standard library, numpy and the other bottom modules.

One ``to_dict`` (:class:`Result`) writes every document. A class lists its entries in ``KEYS``, in
document order (the default: every field in field order); an entry is the name of a field, a
property or a method without arguments, or a :class:`Key` where the document renames, rounds,
computes from, leaves out when None, or adds only on request (``to_dict(with_times=True)``). Fields
left out of the document on purpose are named in ``OMITTED``, so that a new field nobody placed is
caught by ``tests/test_results.py``. A :class:`Report` is a whole document a command writes: the
schema version comes first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np

from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_VERIFY_FAILED
from normonnx.reports.schema import SCHEMA_VERSION

# --- the one to_dict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One entry of a document that is not simply an attribute under its own name."""

    name: str  # the key in the document
    attr: str = ""  # the field, property or method it is read from; default: ``name``
    convert: Callable[[Any], Any] | None = None  # applied to the value first (``len``: a count)
    digits: int | None = None  # rounded to this many digits
    omit_none: bool = False  # no entry at all when the value is None
    only_with: str = ""  # present only when ``to_dict`` is given this option (``with_times``)

    @property
    def source(self) -> str:
        return self.attr or self.name


Entry = str | Key


class Result:
    """A result that writes itself as plain JSON data: ``KEYS`` in order, nested results as their own documents."""

    KEYS: ClassVar[tuple[Entry, ...] | None] = None  # None: every field not OMITTED, in field order
    OMITTED: ClassVar[tuple[str, ...]] = ()  # fields that are not in the document on purpose

    @classmethod
    def entries(cls) -> tuple[Key, ...]:
        keys = cls.KEYS if cls.KEYS is not None else tuple(f.name for f in fields(cls) if f.name not in cls.OMITTED)
        return tuple(k if isinstance(k, Key) else Key(k) for k in keys)

    def to_dict(self, **options: bool) -> dict[str, Any]:
        """The document as plain JSON data: what ``json.dumps`` writes is what ``json.loads`` reads back.

        ``options`` reach every nested result (``with_times=True`` keeps every latency sample)."""
        doc: dict[str, Any] = {}
        for key in self.entries():
            if key.only_with and not options.get(key.only_with):
                continue
            value = getattr(self, key.source)
            if inspect.ismethod(value):
                value = value()
            if key.convert is not None:
                value = key.convert(value)
            if value is None and key.omit_none:
                continue
            if key.digits is not None and value is not None:
                value = round(value, key.digits)
            doc[key.name] = plain(value, options)
        return doc


class Report(Result):
    """A whole document a command writes (``--json``, report.json): it opens with the schema version."""

    def to_dict(self, **options: bool) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **super().to_dict(**options)}


def plain(value: Any, options: dict[str, bool] | None = None) -> Any:
    """``value`` as JSON holds it: a result as its document, another dataclass as a dict, a tuple as a
    list, an integer key as a string."""
    if isinstance(value, Result):
        return value.to_dict(**(options or {}))
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value), options)
    if isinstance(value, dict):
        return {_json_key(k): plain(v, options) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, options) for v in value]
    return value


def _json_key(key: Any) -> Any:
    return str(key) if isinstance(key, int) and not isinstance(key, bool) else key


# --- decisions of the passes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision(Result):
    """One pass's verdict on one normalization node."""

    node: str
    family: str
    pass_name: str
    folded: bool
    detail: str


# --- checks: parity, shapes, localization, bisection, latency -------------------------------------


@dataclass
class ProbedShapes(Result):
    """The shapes every input gets, and what was guessed to get there (``validate.probe``)."""

    shapes: dict[str, tuple[int, ...]]
    values: dict[str, int] = field(default_factory=dict)  # integer scalar inputs given a value the model tests for
    guessed: list[str] = field(default_factory=list)  # inputs with a guessed dim
    tried: int = 0
    zero_integers: bool = False  # integer inputs all 0: random ids in [0, 8) overran an embedding table

    def describe(self) -> str:
        """``x:2,3,64,64 (guessed)``: what the inputs were, for reports."""
        text = " ".join(
            f"{name}={self.values[name]}" if name in self.values else f"{name}:{','.join(map(str, dims)) or 'scalar'}"
            for name, dims in self.shapes.items()
        )
        return text + (" (guessed)" if self.guessed else "") + (", integer inputs 0" if self.zero_integers else "")


@dataclass
class OutputResult(Result):
    """One output compared over every sample (``validate.parity.compare_output``)."""

    name: str
    shape: list[int]
    dtype: str
    max_abs: float
    max_rel: float
    cosine: float
    p99_abs: float
    ref_max: float
    threshold: float | None  # None: the gate is on SQNR
    nonfinite_mismatch: int
    passed: bool
    reason: str = ""
    noise_floor: float | None = None
    judged_by: str = "gate"
    sqnr_db: float | None = None  # signal-to-noise of the difference in dB, where the gate is on it
    min_sqnr_db: float | None = None  # the gate, when it is one on SQNR (int8) rather than on max|diff|

    KEYS = (
        "name", "shape", "dtype", "max_abs", "max_rel", "cosine", "p99_abs", "ref_max", "threshold",
        "nonfinite_mismatch", "passed", "reason", "noise_floor", "judged_by", Key("sqnr_db", omit_none=True),
        Key("min_sqnr_db", omit_none=True),
    )  # fmt: skip


@dataclass
class ParityResult(Result):
    """Every output of a candidate judged against its reference (``validate.parity.compare``)."""

    outputs: list[OutputResult] = field(default_factory=list)
    samples: int = 0
    inputs: ProbedShapes | None = None  # the shapes compared at, and whether they were guessed

    KEYS = ("passed", "samples", Key("inputs", omit_none=True), "outputs")

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def worst(self) -> OutputResult | None:
        if not self.outputs:
            return None
        return max(self.outputs, key=_closeness_to_failing)

    def summary(self, against: str = "") -> str:
        """One line for a terminal: the verdict and the worst output."""
        verdict = "PASSED" if self.passed else "FAILED"
        worst = self.worst()
        if worst is None:
            return f"parity{against} {verdict}: no outputs compared"
        if worst.min_sqnr_db is not None:
            sqnr = f"{worst.sqnr_db:.1f} dB" if worst.sqnr_db is not None else "undefined"
            return (
                f"parity{against} {verdict}: worst output '{worst.name}' SQNR {sqnr} (gate >= {worst.min_sqnr_db:g}"
                f" dB), max|diff| {worst.max_abs:.3g} over {self.samples} inputs"
                + (f" -- {worst.reason}" if worst.reason else "")
            )
        return (
            f"parity{against} {verdict}: worst output '{worst.name}' max|diff| {worst.max_abs:.3g}"
            f" (threshold {worst.threshold:.3g}) over {self.samples} inputs"
            + (f" at {self.inputs.describe()}" if self.inputs is not None and self.inputs.guessed else "")
            + (f" -- {worst.reason}" if worst.reason else "")
        )


def _closeness_to_failing(o: OutputResult) -> float:
    """How close an output is to failing its gate (1: on the edge); a failed output ranks above all."""
    if not o.passed:
        return np.inf
    if o.min_sqnr_db is not None:
        return 10 ** ((o.min_sqnr_db - (o.sqnr_db if o.sqnr_db is not None else -np.inf)) / 10)
    return o.max_abs / max(o.threshold, 1e-30)


@dataclass
class Bisection(Result):
    """The one transformation that breaks parity (``validate.bisect``)."""

    kind: str  # what was bisected: "onnxruntime graph transformers", "fold rewrites"
    candidates: list[str]
    culprit: str | None
    runs: int
    note: str = ""


@dataclass
class Divergence(Result):
    """A compared tensor that differs from its reference and stays different downstream."""

    node: str
    op: str
    tensor: str
    max_abs: float
    threshold: float | None  # None: the gate is on SQNR
    ref_max: float
    reference: str = ""  # what it was compared with: a reference tensor, or a torch module path
    module: str | None = None  # the torch module the node came from, where the exporter recorded it
    inputs: list[dict] = field(default_factory=list)  # each compared input: tensor, agrees, max_abs
    sqnr_db: float | None = None  # where the gate is on SQNR (an int8 candidate)
    min_sqnr_db: float | None = None
    nonfinite: int = 0  # inf/NaN values where the reference differs (an overflow in half)

    KEYS = (
        "node", "op", "tensor", "max_abs", "threshold", "ref_max", "reference", "module", "inputs",
        Key("sqnr_db", omit_none=True), Key("min_sqnr_db", omit_none=True), "nonfinite",
    )  # fmt: skip

    @property
    def relative(self) -> float:
        return self.max_abs / max(1.0, self.ref_max)


@dataclass
class Localization(Result):
    """Where a parity failure starts (``validate.localize``)."""

    compared: int
    first: Divergence | None
    diverging: list[Divergence] = field(default_factory=list)  # the first few that persist, in order
    note: str = ""
    changed_meaning: list[str] = field(default_factory=list)  # differ, but what is computed from them agrees
    path: list[dict] = field(default_factory=list)  # tensor, op, max_abs, relative: from the first one to an output
    aligned: dict[str, int] = field(default_factory=dict)  # pairs by how they were found

    KEYS = ("compared", "first", "diverging", "changed_meaning", "path", "aligned", "note")


@dataclass
class LatencyStats(Result):
    """One model's latency over interleaved runs (``validate.latency``); every sample only on request."""

    name: str
    runs: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # samples (batch items) per second at the median
    times_ms: list[float]

    KEYS = (
        "name", "runs", "median_ms", "p10_ms", "p90_ms", "mean_ms", "throughput",
        Key("times_ms", only_with="with_times"),
    )  # fmt: skip


@dataclass
class Speedup(Result):
    baseline: str
    candidate: str
    median: float  # baseline time / candidate time, per round, median
    p10: float
    p90: float


@dataclass
class CheckReport(Report):
    """``normonnx check``: parity, and where and why it fails."""

    candidate: str
    reference: str
    reference_kind: str  # "onnx" or "torch"
    provider: str
    inputs: str  # "seeded at x:2,3,64,64 (guessed)" or the .npz path
    parity: ParityResult
    localization: Localization | None = None
    fp16_baseline: ParityResult | None = None
    bisection: Bisection | None = None
    evaluator: str = "onnxruntime"  # what computed the candidate's outputs
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    KEYS = (
        "candidate", "reference", "reference_kind", "provider", "inputs", "passed", "parity", "localization",
        "fp16_baseline", "bisection", "evaluator", "notes", Key("seconds", digits=3),
    )  # fmt: skip

    @property
    def passed(self) -> bool:
        return self.parity.passed


@dataclass
class BenchReport(Report):
    """``normonnx bench``: latency of one model, or of two side by side."""

    models: dict[str, str]  # label -> path
    provider: str
    threads: int | None
    stats: dict[str, LatencyStats]
    speedup: Speedup | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    shapes_guessed: bool = False  # some dynamic dim was sized by validate.probe, not by --shape
    seconds: float = 0.0
    cores: int | None = None  # the cores onnxruntime's default thread pool uses when --threads is not given
    notes: list[str] = field(default_factory=list)  # a spread too wide to trust, and how to get a stable number

    KEYS = (
        "models", "provider", "threads", "cores", "input_shapes", "shapes_guessed", Key("latency", "stats"),
        "speedup", "notes", Key("seconds", digits=3),
    )  # fmt: skip


# --- pipelines ------------------------------------------------------------------------------------


@dataclass
class NormStatus(Result):
    """One normalization found in a model, and what the fold did with it."""

    family: str
    form: str
    anchor: str
    detail: str
    folded: bool
    why: str  # where it went, or every reason it stayed


@dataclass
class GraphStats(Result):
    nodes: int
    ops: dict[str, int]
    norms: dict[str, int]
    tensor_bytes: int


@dataclass
class FoldReport(Report):
    """``normonnx fold``: the model before and after, every normalization's fate, parity."""

    source: str
    before: GraphStats
    after: GraphStats
    norms: list[NormStatus] = field(default_factory=list)
    rewrites: dict[str, int] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    seconds: float = 0.0
    parity: ParityResult | None = None
    output: str | None = None
    stale_files: list[str] = field(default_factory=list)  # weights the replaced output used; never deleted
    notes: list[str] = field(default_factory=list)  # e.g. a fixpoint that did not converge
    bisection: Bisection | None = None  # when the full fold failed parity: the rewrite left undone

    KEYS = (
        "source", "output", "before", "after", Key("folded", convert=len), Key("kept", convert=len),
        Key("normalizations", "norms"), "rewrites", Key("seconds", digits=4), "parity", "stale_files", "notes",
        "bisection",
    )  # fmt: skip
    OMITTED = ("decisions",)  # joined into ``norms``

    @property
    def folded(self) -> list[NormStatus]:
        return [n for n in self.norms if n.folded]

    @property
    def kept(self) -> list[NormStatus]:
        return [n for n in self.norms if not n.folded]


@dataclass
class Inspection(Report):
    """``normonnx inspect``: every normalization, its form, and whether it folds."""

    source: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    nodes: int
    norms: list[NormStatus] = field(default_factory=list)
    target: str | None = None  # inspect --target: the deployment target asked about
    not_on_target: list[str] = field(default_factory=list)  # what will not run there as it is
    target_bugs: list[str] = field(default_factory=list)  # the target's known normalization bugs
    # "domain:op" -> nodes, for the ops onnxruntime itself has no kernel for (custom ops: --custom-ops LIB)
    ops_without_kernel: dict[str, int] = field(default_factory=dict)

    KEYS = (
        "source", "ir_version", "opsets", "producer", "nodes", Key("normalizations", "norms"), "foldable", "target",
        "not_on_target", "target_bugs", "ops_without_kernel",
    )  # fmt: skip

    @property
    def foldable(self) -> int:
        return sum(n.folded for n in self.norms)


@dataclass
class EmitReport(Report):
    """``normonnx emit``: the forms chosen per family, the normalizations before and after, parity."""

    source: str
    source_opset: int
    opset: int
    style: str
    forms: dict[str, str]
    norms_before: dict[str, int]
    norms_after: dict[str, int]
    decisions: list[Decision] = field(default_factory=list)
    parity: ParityResult | None = None
    seconds: float = 0.0
    output: str | None = None
    nodes_before: int = 0
    nodes_after: int = 0
    notes: list[str] = field(default_factory=list)
    bisection: Bisection | None = None  # when the full emit failed parity: the rewrite left undone
    target: str | None = None  # the deployment target (normonnx.targets) that chose the opset and forms
    why: dict[str, str] = field(default_factory=dict)  # family -> why the target chose its form

    KEYS = (
        "source", "output", "source_opset", "opset", "style", "target", "forms", "why", Key("before", "norms_before"),
        Key("after", "norms_after"), "nodes_before", "nodes_after", "refused", "parity", Key("seconds", digits=4),
        "notes", "bisection",
    )  # fmt: skip
    OMITTED = ("decisions",)  # those that refused are ``refused``

    @property
    def refused(self) -> list[Decision]:
        done = {d.node for d in self.decisions if d.folded}
        return [d for d in self.decisions if not d.folded and d.node not in done]


@dataclass
class HalfReport(Report):
    """``normonnx half``: what stayed float32 and why, how much is in the half type, the half-faithful verdict."""

    source: str
    dtype: str
    keep_io_types: bool
    kept: list[Any] = field(default_factory=list)  # passes.to_half.KeptFloat32: node, op, reason
    weight_bytes_half: float = 0.0  # share of weight bytes stored in the half type
    linear_ops_half: tuple[int, int] = (0, 0)  # (in half, all) Conv/ConvTranspose/MatMul/Gemm
    activations_half: float = 0.0  # share of activation elements stored in the half type
    rescaled: list[Any] = field(default_factory=list)  # passes.rescale.Region: tensors, k, peak, boundary
    rescale_refused: list[Any] = field(default_factory=list)  # passes.rescale.RefusedRegion: tensors, peak, reason
    search: list[str] = field(default_factory=list)  # each round of the search for nodes at fault
    calibration: str = ""
    evaluator: str = "half-faithful (float32 inside every op, every half tensor rounded)"
    parity: ParityResult | None = None
    plain_cast: ParityResult | None = None
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    KEYS = (
        "source", "output", "dtype", "keep_io_types", Key("kept_float32", "kept"),
        Key("weight_bytes_half", digits=4), "linear_ops_half", Key("activations_half", digits=4), "rescaled",
        "rescale_refused", "search", "calibration", "evaluator", "parity", "plain_cast", "notes",
        Key("seconds", digits=3),
    )  # fmt: skip

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed


@dataclass
class FloatNode(Result):
    """A node of an int8 model that computes in float as onnxruntime deploys it, and why."""

    node: str
    op: str
    reason: str


@dataclass
class ErrorJump(Result):
    """A node where the int8 model's error grows most: the SQNR of its inputs and of its output (dB)."""

    node: str
    op: str
    tensor: str
    sqnr_in_db: float
    sqnr_out_db: float

    @property
    def drop_db(self) -> float:
        return self.sqnr_in_db - self.sqnr_out_db

    KEYS = ("node", "op", "tensor", Key("sqnr_in_db", digits=2), Key("sqnr_out_db", digits=2),
            Key("drop_db", digits=2))  # fmt: skip


@dataclass
class Int8Model(Result):
    """One int8 model of a float32 model, judged on held-out inputs as onnxruntime deploys it."""

    flow: str  # "normonnx" or "onnxruntime" (its default flow: quant_pre_process + quantize_static)
    parity: ParityResult
    top1: dict[str, float] = field(default_factory=dict)  # classifier output -> agreement with float32
    qdq: int = 0  # QuantizeLinear + DequantizeLinear nodes
    float_nodes: list[FloatNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    KEYS = ("flow", "parity", "top1", "qdq", "float_nodes", "notes")

    def float_ops(self) -> dict[str, int]:
        """Nodes computing in float, by op type."""
        counts: dict[str, int] = {}
        for f in self.float_nodes:
            counts[f.op] = counts.get(f.op, 0) + 1
        return dict(sorted(counts.items()))

    def worst_sqnr(self) -> float | None:
        values = [o.sqnr_db for o in self.parity.outputs if o.sqnr_db is not None]
        return min(values) if values else None


@dataclass
class QuantizeReport(Report):
    """``normonnx quantize``: what normonnx prepared, what onnxruntime quantized, the proof on held-out inputs
    against the float32 model and against onnxruntime's own flow, and the latency of all of them."""

    source: str
    settings: str  # Int8Settings.describe()
    data: str  # where calibration and held-out inputs came from
    seeded: bool = False  # calibrated on seeded inputs: the weaker choice
    prepared: list[str] = field(default_factory=list)  # what normonnx did before the quantizer
    kept_float: list[FloatNode] = field(default_factory=list)  # left in float by normonnx, on purpose
    int8: Int8Model | None = None  # normonnx's int8 model
    baseline: Int8Model | None = None  # onnxruntime's default flow on the same calibration data
    written: str = "normonnx"  # whose int8 model is the output: "normonnx" or "onnxruntime's flow"
    jumps: list[ErrorJump] = field(default_factory=list)  # where the error grows most
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    speedups: dict[str, Speedup] = field(default_factory=dict)
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    KEYS = (
        "source", "output", "passed", "written", "settings", "data", "seeded", "prepared", "kept_float", "int8",
        "baseline",
        "jumps", "latency", "speedups", "notes", Key("seconds", digits=3),
    )  # fmt: skip

    @property
    def output_model(self) -> Int8Model | None:
        """The judgement of the int8 model written (or that would have been)."""
        return self.int8 if self.written == "normonnx" else self.baseline

    @property
    def parity(self) -> ParityResult | None:
        return self.output_model.parity if self.output_model is not None else None

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed


@dataclass
class ExportReport(Report):
    """``normonnx export``: the exporter, the emit it ran, parity against torch eager."""

    factory: str
    exporter: str
    emit: EmitReport
    parity: ParityResult | None = None
    output: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> {axis: dim name}
    parity_resized: ParityResult | None = None  # with the dynamic axes at a second size
    resized_shapes: list[list[int]] = field(default_factory=list)

    half: HalfReport | None = None  # the HalfReport of --precision

    KEYS = (
        "factory", "exporter", "output", "emit", "half", "parity", "dynamic", "parity_resized", "resized_shapes",
        Key("seconds", digits=4),
    )  # fmt: skip
    OMITTED = ("notes",)  # shown on the terminal only

    @property
    def passed(self) -> bool:
        checks = [p for p in (self.parity, self.parity_resized) if p is not None]
        return all(p.passed for p in checks) and (self.half is None or self.half.passed)


def _medians(stats: dict[str, LatencyStats]) -> dict[str, float]:
    return {k: v.median_ms for k, v in stats.items()}


@dataclass
class ConvertReport(Report):
    """``normonnx convert``: a checkpoint to a validated, benchmarked deployment, in one report."""

    name: str
    spec: str
    checkpoint: str | None
    opset: int
    style: str
    exporter: str = ""
    layers: dict[str, int] = field(default_factory=dict)  # normalization layers of the torch model
    norms: list[NormStatus] = field(default_factory=list)  # what the fold found in the export, and did
    forms_after: dict[str, int] = field(default_factory=dict)  # normalizations left in the deployed model
    parity: ParityResult | None = None
    parity_resized: ParityResult | None = None  # dynamic axes at a second size
    top1: float | None = None
    top1_samples: int = 0
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    speedup: float | None = None  # unfolded time / folded time, median of per-round ratios
    speedup_spread: tuple[float, float] | None = None
    floor_ratio: float | None = None  # folded time / no-normalization time (1.0 = at the floor)
    floor_spread: tuple[float, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    int8: QuantizeReport | None = None  # --precision int8: the quantize report of model.int8.onnx
    top1_int8: float | None = None  # the int8 model's top-1 agreement with torch on the held-out part of --data
    int8_required: bool = True  # False (the demo): an int8 model that fails its gate is reported, not a failure

    KEYS = (
        "name", "spec", "checkpoint", "opset", "style", "exporter", "passed", "layers",
        Key("normalizations", "norms"), Key("found_in_export", "norms", convert=len),
        Key("folded_by_normonnx", "folded"), Key("left_in_model", "left"), "forms_after", "parity",
        "parity_resized", "max_error", Key("top1_agreement", "top1"), "top1_samples",
        Key("latency_ms", "latency", convert=_medians), Key("speedup_vs_unfolded", "speedup"), "speedup_spread",
        "floor_ratio", "floor_spread", "files", Key("seconds", digits=2), "notes", Key("int8", omit_none=True),
        Key("top1_agreement_int8", "top1_int8", omit_none=True),
    )  # fmt: skip
    OMITTED = ("int8_required",)

    @property
    def folded(self) -> int:
        """Normalizations normonnx folded (the exporter may have folded others before)."""
        return sum(n.folded for n in self.norms)

    @property
    def layer_count(self) -> int:
        return sum(self.layers.values())

    @property
    def left(self) -> int:
        return sum(self.forms_after.values())

    @property
    def passed(self) -> bool:
        resized_ok = self.parity_resized is None or self.parity_resized.passed
        int8_ok = self.int8 is None or self.int8.passed or not self.int8_required
        return (
            bool(self.parity and self.parity.passed) and resized_ok and (self.top1 is None or self.top1 == 1.0)
            and int8_ok
        )  # fmt: skip

    @property
    def max_error(self) -> float | None:
        worst = self.parity.worst() if self.parity else None
        return None if worst is None else worst.max_abs

    def layer_summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.layers.items()) or "none"

    def kept_forms(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.forms_after.items())) or "none"


@dataclass
class DemoReport(Report):
    """``normonnx demo``: every zoo model's convert report, and the models that failed."""

    opset: int
    style: str
    models: list[ConvertReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # name: reason


@dataclass
class FileResult(Result):
    """One file of a many-file run: what happened to it, in a row of the summary."""

    source: str
    output: str | None
    verdict: str  # PASSED, FAILED (parity), ERROR (unusable input), DONE (not verified)
    exit_code: int
    nodes_before: int | None = None
    nodes_after: int | None = None
    folded: int | None = None
    kept: int | None = None
    max_error: float | None = None
    seconds: float = 0.0
    message: str = ""


@dataclass
class BatchReport(Report):
    """A many-file run: one row per file, and the exit code of the worst."""

    command: str
    output_dir: str
    jobs: int
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    KEYS = ("command", "output_dir", "jobs", "exit_code", "counts", Key("seconds", digits=3), Key("files", "results"))

    @property
    def exit_code(self) -> int:
        """0 when every file passed; 2 when any was unusable; else 1 when any failed its check."""
        codes = {r.exit_code for r in self.results}
        if EXIT_UNUSABLE_INPUT in codes:
            return EXIT_UNUSABLE_INPUT
        return EXIT_VERIFY_FAILED if EXIT_VERIFY_FAILED in codes else EXIT_OK

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out
