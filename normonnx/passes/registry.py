"""The passes, listed explicitly: no registration by import side effect."""

from __future__ import annotations

from normonnx.passes.base import Pass
from normonnx.passes.fold_constants import FoldConstants
from normonnx.passes.fold_into_consumer import FoldIntoConsumer
from normonnx.passes.fold_into_producer import FoldIntoProducer


def fold_prelude() -> list[Pass]:
    """Run once first: makes computed weights constant so the folds can see them."""
    return [FoldConstants()]


def fold_fixpoint() -> list[Pass]:
    """Run until nothing changes: each fold can expose the next (Conv -> BN -> BN)."""
    return [FoldIntoProducer(), FoldIntoConsumer()]
