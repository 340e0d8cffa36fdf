"""normonnx.results: the one ``to_dict``, and every result's document in the shape ``--json`` has always had.

The expected documents are written out by hand (key order included): a consumer of ``--json`` or
report.json reads these keys, so a change here is a schema change (reports/schema.py).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from normonnx import results
from normonnx.reports.schema import SCHEMA_VERSION
from normonnx.results import (
    BenchReport,
    Bisection,
    Decision,
    EmitReport,
    ExportReport,
    FoldReport,
    GraphStats,
    Key,
    LatencyStats,
    NormStatus,
    OutputResult,
    ParityResult,
    ProbedShapes,
    Report,
    Result,
)


def _all_results() -> list[type[Result]]:
    found, todo = [], [Result]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__ == results.__name__ and sub is not Report:
                found.append(sub)
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _all_results(), ids=lambda c: c.__name__)
def test_every_field_is_in_the_document_or_left_out_on_purpose(cls):
    names = {f.name for f in fields(cls)}
    read = {k.source for k in cls.entries()}
    assert set(cls.OMITTED) <= names, f"{cls.__name__}.OMITTED names no field: {set(cls.OMITTED) - names}"
    missing = names - read - set(cls.OMITTED)
    assert not missing, f"{cls.__name__}: fields in no entry of KEYS and not OMITTED: {sorted(missing)}"
    for key in cls.entries():
        assert hasattr(cls, key.source) or key.source in names, f"{cls.__name__}: {key.name} reads nothing"
    assert len({k.name for k in cls.entries()}) == len(cls.entries()), f"{cls.__name__}: a key twice"


@dataclass
class _Inner(Result):
    value: float


@dataclass
class _Doc(Report):
    name: str
    inner: _Inner
    seconds: float = 0.0
    spread: tuple[float, float] = (1.0, 2.0)
    axes: dict[int, str] = field(default_factory=dict)
    maybe: str | None = None
    hidden: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)

    KEYS = (
        Key("title", "name"), "inner", Key("seconds", digits=2), "spread", "axes", Key("maybe", omit_none=True),
        Key("count", "hidden", convert=len), Key("samples", only_with="with_samples"), "doubled", "total",
    )  # fmt: skip
    OMITTED = ("hidden",)

    @property
    def doubled(self) -> float:
        return 2 * self.inner.value

    def total(self) -> int:
        return 3


def test_the_mechanism_renames_rounds_converts_omits_and_nests():
    doc = _Doc("a", _Inner(0.5), 1.23456, axes={0: "batch"}, hidden=["x", "y"], samples=[1.0])
    assert doc.to_dict() == {
        "schema": SCHEMA_VERSION,
        "title": "a",
        "inner": {"value": 0.5},
        "seconds": 1.23,
        "spread": [1.0, 2.0],
        "axes": {"0": "batch"},
        "count": 2,
        "doubled": 1.0,
        "total": 3,
    }
    assert list(doc.to_dict()) == ["schema", "title", "inner", "seconds", "spread", "axes", "count", "doubled", "total"]
    with_samples = _Doc("a", _Inner(0.5), maybe="m", samples=[1.0]).to_dict(with_samples=True)
    assert with_samples["maybe"] == "m" and with_samples["samples"] == [1.0]


def test_a_document_is_what_json_reads_back():
    doc = _Doc("a", _Inner(0.5), axes={3: "h"}).to_dict()
    assert json.loads(json.dumps(doc)) == doc


def _parity(inputs: ProbedShapes | None = None) -> ParityResult:
    out = OutputResult("y", [1, 4], "float32", 1e-6, 2e-6, 1.0, 1e-6, 3.0, 3e-5, 0, True)
    return ParityResult([out], 2, inputs)


def test_parity_document():
    assert _parity().to_dict() == {
        "passed": True,
        "samples": 2,
        "outputs": [
            {
                "name": "y", "shape": [1, 4], "dtype": "float32", "max_abs": 1e-6, "max_rel": 2e-6, "cosine": 1.0,
                "p99_abs": 1e-6, "ref_max": 3.0, "threshold": 3e-5, "nonfinite_mismatch": 0, "passed": True,
                "reason": "", "noise_floor": None, "judged_by": "gate",
            }
        ],
    }  # fmt: skip
    probed = ProbedShapes({"x": (2, 3)}, guessed=["x"], tried=1)
    assert list(_parity(probed).to_dict()) == ["passed", "samples", "inputs", "outputs"]
    assert _parity(probed).to_dict()["inputs"] == {
        "shapes": {"x": [2, 3]}, "values": {}, "guessed": ["x"], "tried": 1, "zero_integers": False
    }  # fmt: skip


def test_fold_document():
    stats = GraphStats(3, {"Conv": 3}, {"batchnorm": 1}, 100)
    norms = [NormStatus("batchnorm", "op", "bn", "BatchNormalization", True, "into conv")]
    decisions = [Decision("bn", "batchnorm", "fold_into_producer", True, "conv")]
    report = FoldReport("m.onnx", stats, stats, norms, {"p": 1}, decisions, 0.123456, _parity(), "o.onnx")
    doc = report.to_dict()
    assert list(doc) == [
        "schema", "source", "output", "before", "after", "folded", "kept", "normalizations", "rewrites", "seconds",
        "parity", "stale_files", "notes", "bisection",
    ]  # fmt: skip
    assert doc["schema"] == SCHEMA_VERSION and doc["seconds"] == 0.1235
    assert (doc["folded"], doc["kept"], doc["bisection"]) == (1, 0, None)
    assert doc["before"] == {"nodes": 3, "ops": {"Conv": 3}, "norms": {"batchnorm": 1}, "tensor_bytes": 100}
    assert doc["normalizations"] == [
        {"family": "batchnorm", "form": "op", "anchor": "bn", "detail": "BatchNormalization", "folded": True,
         "why": "into conv"}
    ]  # fmt: skip
    assert doc["parity"] == _parity().to_dict()


def test_export_document_nests_emit_and_keeps_its_keys():
    refused = Decision("ln", "layernorm", "raise_norms", False, "mixed dtypes")
    emit = EmitReport("m.onnx", 17, 13, "auto", {}, {}, {}, [refused], bisection=Bisection("k", ["a"], "a", 1))
    doc = ExportReport("mod:f", "dynamo", emit, notes=["terminal only"], dynamic={"x": {0: "batch"}}).to_dict()
    assert list(doc) == [
        "schema", "factory", "exporter", "output", "emit", "half", "parity", "dynamic", "parity_resized",
        "resized_shapes", "seconds",
    ]  # fmt: skip
    assert doc["dynamic"] == {"x": {"0": "batch"}}
    assert doc["emit"]["schema"] == SCHEMA_VERSION
    assert doc["emit"]["refused"] == [
        {"node": "ln", "family": "layernorm", "pass_name": "raise_norms", "folded": False, "detail": "mixed dtypes"}
    ]
    assert doc["emit"]["bisection"] == {"kind": "k", "candidates": ["a"], "culprit": "a", "runs": 1, "note": ""}


def test_bench_document_keeps_the_samples_only_when_asked():
    stats = {"a": LatencyStats("a", 2, 1.0, 0.9, 1.1, 1.0, 1000.0, [0.9, 1.1])}
    report = BenchReport({"a": "a.onnx"}, "cpu", None, stats, seconds=1.23456)
    doc = report.to_dict()
    assert list(doc) == [
        "schema", "models", "provider", "threads", "cores", "input_shapes", "shapes_guessed", "latency", "speedup",
        "notes", "seconds",
    ]  # fmt: skip
    assert doc["latency"]["a"] == {
        "name": "a", "runs": 2, "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "mean_ms": 1.0, "throughput": 1000.0
    }  # fmt: skip
    assert doc["seconds"] == 1.235
    assert report.to_dict(with_times=True)["latency"]["a"]["times_ms"] == [0.9, 1.1]


def test_result_types_are_imported_from_results_only():
    """A result type has one home: importing it through a module that merely uses it would keep that module
    (a pipeline, a check) between the renderers and the results."""
    names = {c.__name__ for c in _all_results()}
    root = Path(__file__).resolve().parents[1]
    problems = []
    for folder in ("normonnx", "models", "tests", "scripts"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module != "normonnx.results":
                    wrong = [a.name for a in node.names if a.name in names and node.module.startswith("normonnx")]
                    if wrong:
                        problems.append(f"{path.relative_to(root)}:{node.lineno} imports {wrong} from {node.module}")
    assert not problems, "\n".join(problems)
