"""The passes and the pipelines they form, listed explicitly: no registration by import side effect.

Every pipeline a command runs is built here: ``fold``'s, the constant folding
``export`` applies before emitting, and ``emit``'s lowering and raising.
"""

from __future__ import annotations

from collections.abc import Iterable

from normonnx.passes._base import FoldOptions, Pipeline, RulePass, Stage
from normonnx.passes.common_subexpressions import CommonSubexpressions
from normonnx.passes.fold_constants import FoldConstants
from normonnx.passes.fold_into_consumer import FoldIntoConsumer
from normonnx.passes.fold_into_producer import FoldIntoProducer
from normonnx.passes.fold_norm_affine import FoldNormAffine
from normonnx.passes.lower import Lower
from normonnx.passes.raise_norms import RaiseGroupedInstanceNorm, RaiseMoments
from normonnx.passes.simplify import (
    ConstantIf,
    IdentityArithmetic,
    MatMulBiasAsGemm,
    PadIntoConv,
    ReshapeChains,
    ReshapeThroughElementwise,
    SameTypeCast,
    SqueezeThroughTranspose,
    StaticShapeParts,
    TransposeChains,
)


def constants_pipeline() -> Pipeline:
    """Only the constant folding: computed weights become initializers, every normalization stays."""
    return Pipeline((Stage((FoldConstants(),)),))


def fold_pipeline(options: FoldOptions) -> Pipeline:
    """Constants first (so the folds see computed weights), then the folds and the exact
    simplifications until nothing changes: each can expose the next (Conv -> BN -> BN; x * 1 -> BN)."""
    folds = [RulePass(FoldIntoProducer()), RulePass(FoldIntoConsumer())]
    if options.fold_norm_affine:
        folds.append(RulePass(FoldNormAffine()))
    if options.simplify:
        # What a simplification makes constant (a Concat of shape parts) is folded in the same round.
        folds += [
            PadIntoConv(),
            IdentityArithmetic(),
            SameTypeCast(),
            CommonSubexpressions(),
            StaticShapeParts(),
            ReshapeChains(),
            ReshapeThroughElementwise(),
            TransposeChains(),
            SqueezeThroughTranspose(),
            ConstantIf(),
            MatMulBiasAsGemm(),
            FoldConstants(),
        ]
    return Pipeline((Stage((FoldConstants(),)), Stage(tuple(folds), fixpoint=True)))


def lower_pipeline(families: Iterable[str]) -> Pipeline:
    """Each family's standard op replaced by its exact subgraph."""
    return Pipeline((Stage(tuple(RulePass(Lower(f)) for f in families)),))


def raise_pipeline(families: Iterable[str]) -> Pipeline:
    """Decomposed subgraphs of these families replaced by their standard op, where the opset has it."""
    wanted = frozenset(families)
    return Pipeline((Stage((RulePass(RaiseMoments(wanted)), RulePass(RaiseGroupedInstanceNorm(wanted)))),))
