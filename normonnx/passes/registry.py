"""The passes and the pipelines they form, listed explicitly: no registration by import side effect.

Every pipeline a command runs is built here: ``fold``'s, the constant folding
``export`` applies before emitting, and ``emit``'s lowering and raising.
"""

from __future__ import annotations

from collections.abc import Iterable

from normonnx.passes.common_subexpressions import CommonSubexpressions
from normonnx.passes.constant_if import ConstantIf
from normonnx.passes.fold_constants import FoldConstants
from normonnx.passes.fold_into_consumer import FoldIntoConsumer
from normonnx.passes.fold_into_producer import FoldIntoProducer
from normonnx.passes.fold_norm_affine import FoldNormAffine
from normonnx.passes.identity_arithmetic import IdentityArithmetic
from normonnx.passes.lower import Lower
from normonnx.passes.manager import Pipeline, Stage
from normonnx.passes.matmul_bias_as_gemm import MatMulBiasAsGemm
from normonnx.passes.pad_into_conv import PadIntoConv
from normonnx.passes.raise_norms import RaiseGroupedInstanceNorm, RaiseMoments
from normonnx.passes.reshape_chains import ReshapeChains
from normonnx.passes.reshape_through_elementwise import ReshapeThroughElementwise
from normonnx.passes.rules import FoldOptions
from normonnx.passes.same_type_cast import SameTypeCast
from normonnx.passes.squeeze_through_transpose import SqueezeThroughTranspose
from normonnx.passes.static_shape_parts import StaticShapeParts
from normonnx.passes.to_half import CastRoundTrips, KeptFloat32, ToHalf
from normonnx.passes.transpose_chains import TransposeChains


def constants_pipeline() -> Pipeline:
    """Only the constant folding: computed weights become initializers, every normalization stays."""
    return Pipeline((Stage((FoldConstants(),)),))


def static_values_pipeline() -> Pipeline:
    """Shape parts known from static shapes, and whatever constant they make, folded: what an older
    opset needs as a constant (Reduce axes read from the rank) becomes one."""
    return Pipeline(
        (Stage((StaticShapeParts(), FoldConstants()), fixpoint=True),),
        into_bodies=True,
        reinfer=_shapes_may_have_changed,
    )


def _shapes_may_have_changed(rewrites: dict[str, int], graph) -> bool:
    """Constants were folded and Shape/Size nodes remain: inferring again may make them constant too."""
    return bool(rewrites.get(FoldConstants.name)) and any(n.op in ("Shape", "Size") for n in graph.nodes)


def fold_pipeline(options: FoldOptions) -> Pipeline:
    """Constants first (so the folds see computed weights), then the folds and the exact
    simplifications until nothing changes: each can expose the next (Conv -> BN -> BN; x * 1 -> BN)."""
    folds = [FoldIntoProducer(), FoldIntoConsumer()]
    if options.fold_norm_affine:
        folds.append(FoldNormAffine())
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
    return Pipeline(
        (Stage((FoldConstants(),)), Stage(tuple(folds), fixpoint=True)),
        into_bodies=True,
        reinfer=_shapes_may_have_changed,
    )


def half_pipeline(kept: dict[str, KeptFloat32], half: int, keep_io_types: bool) -> Pipeline:
    """Every node in the precision ``kept`` (``to_half.plan_float32``) gives it, then the Cast pairs that
    only round-trip through float32 cancelled."""
    return Pipeline((Stage((ToHalf(kept, half, keep_io_types),)), Stage((CastRoundTrips(),))))


def lower_pipeline(families: Iterable[str]) -> Pipeline:
    """Each family's standard op replaced by its exact subgraph."""
    return Pipeline((Stage(tuple(Lower(f) for f in families)),), into_bodies=True)


def raise_pipeline(families: Iterable[str]) -> Pipeline:
    """Decomposed subgraphs of these families replaced by their standard op, where the opset has it."""
    wanted = frozenset(families)
    return Pipeline((Stage((RaiseMoments(wanted), RaiseGroupedInstanceNorm(wanted))),))
