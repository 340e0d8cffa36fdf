"""The pass infrastructure: rules record their decisions under their own name; a fixpoint that does
not converge is reported, not silently cut off."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.passes import FoldOptions, PassContext, Pipeline, Refusal, Stage, run_rule
from normonnx.passes.registry import fold_pipeline


class _AlwaysRewrites:
    """A rule that claims a rewrite every round: the fixpoint can never settle."""

    name = "always"

    def match(self, node, ctx):
        return node

    def check(self, node, ctx):
        return _Plan(node.name, "")

    def rewrite(self, plan, ctx):
        return "nothing, and says otherwise"


class _Plan:
    def __init__(self, anchor: str, family: str) -> None:
        self.anchor, self.family = anchor, family


class _RefuseEverything:
    name = "refuse-everything"

    def match(self, node, ctx):
        return node

    def check(self, node, ctx):
        return Refusal(node.name, "batchnorm", f"{node.op} is not welcome")

    def rewrite(self, plan, ctx):  # pragma: no cover - never reached
        raise AssertionError("a refused match must not be rewritten")


def _graph() -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=[1, 2])
    y = gs.Variable("y", dtype=np.float32, shape=[1, 2])
    return gs.Graph(nodes=[gs.Node("Relu", "relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y], opset=17)


def test_a_fixpoint_that_does_not_converge_is_reported():
    result = Pipeline((Stage((_AlwaysRewrites(),), fixpoint=True),), max_rounds=3).run(PassContext(_graph()))
    assert not result.converged
    assert result.rewrites == {"always": 3}
    assert "after 3 rounds" in result.note and "always" in result.note


def test_a_single_stage_runs_once_and_converges():
    result = Pipeline((Stage((_AlwaysRewrites(),)),)).run(PassContext(_graph()))
    assert result.converged and result.rewrites == {"always": 1} and result.note == ""


def test_a_rule_records_its_refusals_under_its_own_name():
    ctx = PassContext(_graph())
    assert run_rule(_RefuseEverything(), ctx) == 0
    assert [(d.node, d.pass_name, d.folded, d.detail) for d in ctx.decisions] == [
        ("relu", "refuse-everything", False, "Relu is not welcome")
    ]


def test_fold_pipeline_names_are_the_names_decisions_carry():
    names = fold_pipeline(FoldOptions(fold_norm_affine=True)).names
    assert names == [
        "fold-constants",
        "fold-into-producer",
        "fold-into-consumer",
        "fold-norm-affine",
        "pad-into-conv",
        "identity-arithmetic",
        "same-type-cast",
        "common-subexpressions",
        "static-shape-parts",
        "reshape-chains",
        "reshape-through-elementwise",
        "transpose-chains",
        "squeeze-through-transpose",
        "constant-if",
        "matmul-bias-as-gemm",
        "fold-constants",
    ]
