"""Terminal output that says only what is true and useful (issue 23's list, each reproduced)."""

from __future__ import annotations

import numpy as np
import onnx

from normonnx.reports.text import localization_lines, render_batch
from normonnx.results import BatchReport, FileResult
from tests.builders import GraphBuilder


def _ln_matmul(tmp_path):
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", [2, 5, 8])
    z = b.node("LayerNormalization", [x, b.weight(rng.uniform(0.5, 2, 8)), b.weight(rng.standard_normal(8))])
    b.output(b.node("MatMul", [z, b.weight(rng.standard_normal((8, 6)))]), shape=[2, 5, 6])
    path = tmp_path / "ln.onnx"
    onnx.save(b.model(), path)
    return path


def test_emit_names_only_the_families_the_model_has_and_no_same_opset_arrow(cli, tmp_path):
    r = cli("emit", _ln_matmul(tmp_path), "-o", tmp_path / "o.onnx")
    assert r.code == 0
    head = r.out.splitlines()[1]
    assert head.startswith("opset 17, style auto") and "->" not in head
    assert "layernorm" in r.out and "groupnorm" not in r.out and "rmsnorm" not in r.out


def test_norm_affine_says_the_normalization_stays(cli, tmp_path):
    r = cli("fold", _ln_matmul(tmp_path), "-o", tmp_path / "o.onnx", "--norm-affine")
    assert r.code == 0
    assert "folded: 0 (none)" in r.out
    assert "affines folded into the next linear op, the normalization kept: 1 (layernorm 1)" in r.out


def test_many_file_tables_leave_out_columns_no_file_has():
    rows = [FileResult(f"m{k}.onnx", f"o{k}.onnx", "PASSED", 0, max_error=1e-7) for k in range(2)]
    text = render_batch(BatchReport("emit", "out", jobs=1, results=rows, seconds=1.0))
    header = text.splitlines()[1]
    assert "max error" in header and "folded" not in header and "kept" not in header and "nodes before" not in header


def test_a_long_error_path_is_one_readable_line():
    from normonnx.results import Divergence, Localization

    path = [{"op": f"Op{k}", "relative": 0.1 * k} for k in range(40)]
    first = Divergence("n", "Conv", "t", 1.0, 1e-5, 1.0)
    loc = Localization(compared=40, first=first, path=path)
    (line,) = [line for line in localization_lines(loc) if "error to the output" in line]
    assert len(line) < 160 and "... 34 more" in line and "Op0" in line and "Op39" in line
