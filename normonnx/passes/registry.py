"""The passes, listed explicitly: no registration by import side effect."""

from __future__ import annotations

from normonnx.passes._base import FoldOptions, Pass
from normonnx.passes.fold_constants import FoldConstants
from normonnx.passes.fold_into_consumer import FoldIntoConsumer
from normonnx.passes.fold_into_producer import FoldIntoProducer
from normonnx.passes.fold_norm_affine import FoldNormAffine


def fold_prelude() -> list[Pass]:
    """Run once first: makes computed weights constant so the folds can see them."""
    return [FoldConstants()]


def fold_fixpoint(options: FoldOptions) -> list[Pass]:
    """Run until nothing changes: each fold can expose the next (Conv -> BN -> BN)."""
    passes: list[Pass] = [FoldIntoProducer(), FoldIntoConsumer()]
    if options.fold_norm_affine:
        passes.append(FoldNormAffine())
    return passes
