"""Every family x opset x style: exports, passes the full checker, has the promised form, matches torch eager.

The expected forms come from the table below, written by hand from the ONNX
operator changelog (first opset of each op) and benchmarks/emit_forms.md
(``auto`` picks the decomposed GroupNorm), not from normonnx's planner.
``auto`` equals ``op`` for every family but GroupNorm, so it is exported
only for the families where it differs; the planner's ``auto`` column is
checked against the table for every family and opset without exporting.
"""

from __future__ import annotations

import onnx
import pytest

from normonnx.graph.bridge import prepare_graph
from normonnx.pipelines.emit import newest_opset, planned_form
from normonnx.recognize.scan import scan

OPSETS = (11, 13, 17, 18, 21, 23, newest_opset())
# family -> (ONNX op, first opset of the op in its current form, the form ``auto`` prefers)
TABLE = {
    "batchnorm": ("BatchNormalization", 1, "op"),
    "instancenorm": ("InstanceNormalization", 1, "op"),
    "layernorm": ("LayerNormalization", 17, "op"),
    "groupnorm": ("GroupNormalization", 21, "decomposed"),
    "rmsnorm": ("RMSNormalization", 23, "op"),
}
PARTS = {"batchchannelnorm": ("batchnorm", "groupnorm"), "affine": (), "weightstd": (), "weightnorm": ()}
ALL = ("batchnorm", "instancenorm", "groupnorm", "layernorm", "rmsnorm", "weightstd", "batchchannelnorm", "affine",
       "weightnorm")  # fmt: skip


def _form(part: str, opset: int, style: str) -> str:
    _, first, auto = TABLE[part]
    if opset < first:
        return "decomposed"
    return auto if style == "auto" else style


def _expected(family: str, opset: int, style: str) -> dict[str, str]:
    """{family: 'op' | 'decomposed'} for the normalizations the export must contain."""
    return {p: _form(p, opset, style) for p in PARTS.get(family, (family,))}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("style", ("op", "decomposed", "auto"))
@pytest.mark.parametrize("part", sorted(TABLE))
def test_planner_matches_the_table(part, style, opset):
    assert planned_form(part, opset, style) == _form(part, opset, style)


def _cases():
    for family in ALL:
        for opset in OPSETS:
            for style in ("op", "decomposed"):
                yield family, opset, style
            if any(TABLE[p][2] != "op" for p in PARTS.get(family, (family,))):
                yield family, opset, "auto"


@pytest.fixture(scope="module")
def torch_exports():
    """One torch export per (family, opset); the styles are emitted from it (export_model's own steps)."""
    pytest.importorskip("torch")
    from normonnx.pipelines.export import fold_weight_subgraphs
    from normonnx.torchfront.exporter import build, export_torch

    cache = {}

    def get(family: str, opset: int):
        if (family, opset) not in cache:
            module, example = build(f"tests.torchfront.family_nets:{family}")
            raw, _ = export_torch(module, example, opset)
            cache[(family, opset)] = (module, example, fold_weight_subgraphs(raw))
        return cache[(family, opset)]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("family", "opset", "style"), list(_cases()))
def test_export(torch_exports, family, opset, style):
    from normonnx.pipelines.emit import emit
    from normonnx.validate.torch_reference import torch_parity

    module, example, exported = torch_exports(family, opset)
    model, _ = emit(exported, opset, style)
    onnx.checker.check_model(model, full_check=True)
    parity = torch_parity(module, model, example)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == opset
    assert parity.passed, parity.to_dict()
    ops = [n.op_type for n in model.graph.node]
    found = scan(prepare_graph(model))
    for part, form in _expected(family, opset, style).items():
        if form == "op":
            assert ops.count(TABLE[part][0]) == 1, (part, ops)
        else:
            assert TABLE[part][0] not in ops, (part, ops)
            kinds = {f.family for f in found}
            assert (part if part != "batchnorm" else "affine") in kinds, (part, [(f.family, f.form) for f in found])
    if family in ("weightstd", "weightnorm"):
        assert not [f for f in found if f.form == "weight subgraph"], "weight subgraphs are emitted folded"
