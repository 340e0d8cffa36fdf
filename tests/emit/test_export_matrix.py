"""Every family x opset x style: exports, passes the full checker, has the promised form, matches torch eager."""

from __future__ import annotations

import onnx
import pytest

from normonnx.pipelines.emit import EMITTED_FAMILIES, newest_opset, planned_form
from normonnx.pipelines.fold import prepare_graph
from normonnx.recognize.scan import scan
from tests.emit.family_nets import FAMILIES

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

OPSETS = (11, 13, 17, 18, 21, 23, newest_opset())
STYLES = ("op", "decomposed", "auto")
OP_NAME = {
    "batchnorm": "BatchNormalization",
    "instancenorm": "InstanceNormalization",
    "groupnorm": "GroupNormalization",
    "layernorm": "LayerNormalization",
    "rmsnorm": "RMSNormalization",
}
PARTS = {"batchchannelnorm": ("batchnorm", "groupnorm"), "affine": (), "weightstd": (), "weightnorm": ()}


def _expected(family: str, opset: int, style: str) -> dict[str, str]:
    """{family: 'op' | 'decomposed'} for the normalizations the export must contain."""
    parts = PARTS.get(family, (family,))
    return {p: planned_form(p, opset, style) for p in parts}


@pytest.fixture(scope="module")
def torch_exports():
    """One torch export per (family, opset); the styles are emitted from it (export_model's own steps)."""
    from normonnx.torchfront.exporter import build, export_torch
    from normonnx.pipelines.export import fold_weight_subgraphs

    cache = {}

    def get(family: str, opset: int):
        if (family, opset) not in cache:
            module, example = build(f"tests.emit.family_nets:{family}")
            raw, _ = export_torch(module, example, opset)
            cache[(family, opset)] = (module, example, fold_weight_subgraphs(raw))
        return cache[(family, opset)]

    return get


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_export(torch_exports, family, opset, style):
    from normonnx.pipelines.emit import emit
    from normonnx.pipelines.export import torch_parity

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
            assert ops.count(OP_NAME[part]) == 1, (part, ops)
        else:
            assert OP_NAME[part] not in ops, (part, ops)
            kinds = {f.family for f in found}
            assert (part if part != "batchnorm" else "affine") in kinds, (part, [(f.family, f.form) for f in found])
    if family in ("weightstd", "weightnorm"):
        assert not [f for f in found if f.form == "weight subgraph"], "weight subgraphs are emitted folded"
    assert set(_expected(family, opset, style)) <= set(EMITTED_FAMILIES)
