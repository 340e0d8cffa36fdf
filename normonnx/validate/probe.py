"""Input shapes at which the *original* model runs, found before anything is compared.

A model with dynamic dims says nothing about the sizes it accepts: a YOLO's
upsampled branch must meet its skip connection (sides a multiple of the
network's stride), an OCR detector needs a multiple of 32, a reflect Pad
needs a sequence longer than the pad, a recurrent state's batch must match
the signal's. Feeding every dynamic dim one default breaks such originals,
and onnxruntime's message then blames the model.

So the sizes are derived from the model first: dims that share a dim_param
share a size; a dim's role (batch, spatial side, sequence) comes from its
name or its position; spatial sides are multiples of the network's total
stride; an integer scalar input compared with a constant (silero's sample
rate) takes that constant. A short ordered list of candidates is then tried
on the original, by the runner the command built for it (in one isolated
child), until one runs. What the user names with ``--shape`` is never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from normonnx.errors import UnusableInputError
from normonnx.results import ProbedShapes
from normonnx.validate.inputs import InputSpec, input_specs, random_inputs

if TYPE_CHECKING:
    import onnx

    from normonnx.validate.runners import OnnxruntimeRunner

_BATCH_NAME = re.compile(r"^(n|b|bs|batch\w*|\w*_?batch(_size)?|num_\w+)$", re.IGNORECASE)
_SPATIAL_NAME = re.compile(r"(^h$|^w$|height|width|^(in_|img_|image_)?(h|w)$|_h$|_w$|side)", re.IGNORECASE)
_SEQUENCE_NAME = re.compile(r"(seq|len|length|time|^t$|frames?|samples?|tokens?|steps?|words?)", re.IGNORECASE)

BATCH_SIZES = (2, 1)  # verification: 2 first, a batch axis mixed up with another shows only with batch > 1
DEPLOYMENT_BATCH_SIZES = (1, 2)  # latency: batch 1 first, as a model is deployed
SPATIAL_SIDES = (32, 64, 224, 320, 640)
SEQUENCE_LENGTHS = (16, 64, 512, 1024)
MAX_STRIDE = 128


@dataclass(frozen=True)
class Dim:
    """One dynamic dim the user did not size: where it is, its role, the key it shares a size by."""

    input: str
    axis: int
    role: str  # "batch", "spatial" or "sequence"
    key: str


def _role(spec: InputSpec, axis: int, name: str | None) -> str:
    if name:
        if _BATCH_NAME.match(name):
            return "batch"
        if _SPATIAL_NAME.search(name):
            return "spatial"
        if _SEQUENCE_NAME.search(name):
            return "sequence"
    shape = spec.shape or ()
    dynamic = [a for a, d in enumerate(shape) if not (isinstance(d, int) and d > 0)]
    if axis == 0 or dynamic == [axis]:
        # A leading dim, or the one dim a state tensor ([2, B, 128]) leaves open: a batch.
        return "batch"
    if len(shape) >= 4 and axis >= 2:
        return "spatial"
    return "sequence"


def dynamic_dims(specs: list[InputSpec], overrides: dict[str, tuple[int, ...]]) -> list[Dim]:
    """Every dim a size must be guessed for; dims without a dim_param share one by role."""
    dims = []
    for spec in specs:
        if spec.name in overrides or spec.shape is None:
            continue
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                continue
            name = d if isinstance(d, str) and d not in ("?", "") else None
            role = _role(spec, axis, name)
            dims.append(Dim(spec.name, axis, role, f"param:{name}" if name else f"role:{role}"))
    return dims


def total_strides(model: onnx.ModelProto) -> tuple[int, ...]:
    """Per spatial axis, the largest downsampling any tensor has had: the sides must be its multiples.

    Strides differ by axis in text recognizers (height by 16, width by 4), so each axis
    keeps its own; upsampling by constant scales divides the level again (a YOLO's neck).
    """
    from onnx import numpy_helper

    level: dict[str, tuple[float, ...]] = {}
    constants = {t.name: t for t in model.graph.initializer}
    deepest: tuple[float, ...] = ()

    def merged(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
        width = max(len(a), len(b))
        a, b = a + (1.0,) * (width - len(a)), b + (1.0,) * (width - len(b))
        return tuple(max(x, y) for x, y in zip(a, b, strict=True))

    for node in model.graph.node:
        below: tuple[float, ...] = ()
        for name in node.input:
            below = merged(below, level.get(name, ()))
        factors: tuple[float, ...] = ()
        if node.op_type in ("Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"):
            factors = tuple(float(v) for v in next((a.ints for a in node.attribute if a.name == "strides"), []))
        elif node.op_type in ("Resize", "Upsample"):
            index = 2 if node.op_type == "Resize" else 1
            scales = constants.get(node.input[index]) if len(node.input) > index else None
            if scales is not None and scales.ByteSize() < 1024:
                values = numpy_helper.to_array(scales).reshape(-1)[2:]
                if values.size and np.all(values > 0):
                    factors = tuple(1.0 / float(v) for v in values)
        if factors:
            below = merged(below, (1.0,) * len(factors))
            below = tuple(b * f for b, f in zip(below, factors + (1.0,) * (len(below) - len(factors)), strict=True))
        for out in node.output:
            level[out] = below
        deepest = merged(deepest, below)
    return tuple(int(min(max(1, round(v)), MAX_STRIDE)) for v in deepest)


def _side_ladder(stride: int) -> list[int]:
    """Sides to try for an axis of this stride: a few small multiples, then common image sides rounded up."""
    small = {max(32, k * stride) for k in (1, 2, 3, 4)}
    common = {-(-max(v, 2 * stride) // stride) * stride for v in SPATIAL_SIDES}
    return sorted(small | common)


def compared_constants(model: onnx.ModelProto, specs: list[InputSpec]) -> dict[str, int]:
    """Integer scalar inputs an Equal compares with a constant (a sample rate that picks an If branch)."""
    from onnx import numpy_helper

    scalars = {s.name for s in specs if s.dtype.kind in "iu" and s.shape == ()}
    if not scalars:
        return {}
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = a.t
    found: dict[str, int] = {}
    from normonnx.graph.modelio import iter_nodes

    for node in iter_nodes(model.graph):
        if node.op_type != "Equal" or len(node.input) != 2:
            continue
        for this, other in (node.input, node.input[::-1]):
            if this in scalars and this not in found and other in constants:
                value = numpy_helper.to_array(constants[other]).reshape(-1)
                if value.size == 1:
                    found[this] = int(value[0])
    return found


def candidates(
    specs: list[InputSpec],
    overrides: dict[str, tuple[int, ...]],
    strides: tuple[int, ...] = (),
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> list[dict[str, tuple[int, ...]]]:
    """The ordered shapes to try: per size level, each of ``batch_sizes``; each side a multiple of its axis'
    stride."""
    dims = dynamic_dims(specs, overrides)

    def ladder(d: Dim) -> list[int] | None:
        if d.role == "batch":
            return None
        if d.role == "sequence":
            return list(SEQUENCE_LENGTHS)
        rank = len(next(s.shape for s in specs if s.name == d.input) or ())
        spatial = d.axis - 2  # strides count the axes after [N, C]
        stride = strides[spatial] if 0 <= spatial < len(strides) and rank - 2 == len(strides) else max(strides or (1,))
        return _side_ladder(stride)

    ladders = {d: ladder(d) for d in dims}
    levels = max((len(v) for v in ladders.values() if v), default=1)
    batches = batch_sizes if any(d.role == "batch" for d in dims) else batch_sizes[:1]
    result, seen = [], set()
    for level in range(levels):
        for batch in batches:
            size: dict[str, int] = {}
            for d in dims:
                steps = ladders[d]
                size.setdefault(d.key, batch if steps is None else steps[min(level, len(steps) - 1)])
            shapes = {}
            for spec in specs:
                if spec.name in overrides:
                    shapes[spec.name] = tuple(overrides[spec.name])
                elif spec.shape is not None:
                    by_axis = {d.axis: size[d.key] for d in dims if d.input == spec.name}
                    shapes[spec.name] = tuple(by_axis.get(a, d) for a, d in enumerate(spec.shape))
            key = tuple(sorted(shapes.items()))
            if key not in seen:
                seen.add(key)
                result.append(shapes)
    return result


def probe_feeds(specs, shapes, values, seed: int, zero_integers: bool = False) -> dict[str, np.ndarray]:
    """One seeded input set at ``shapes``, with the tested values and, if asked, integer inputs 0."""
    feeds = random_inputs(specs, seed, shapes)
    for spec in specs:
        if zero_integers and spec.dtype.kind in "iu" and spec.name not in values:
            feeds[spec.name] = np.zeros_like(feeds[spec.name])
    for name, value in values.items():
        feeds[name] = np.asarray(value, dtype=feeds[name].dtype)
    return feeds


def _dims_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return " ".join(f"{n}:{','.join(map(str, s))}" for n, s in shapes.items())


def probe_shapes(
    model: onnx.ModelProto,
    runner: OnnxruntimeRunner | None,
    overrides: dict[str, tuple[int, ...]] | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> ProbedShapes:
    """The shapes (and test values) to verify ``model`` at; tried with ``runner`` (the original, run the way
    the command runs it; its label names it in messages) only when something is guessed. With no runner
    nothing can be tried and the first candidate is taken. ``batch_sizes``: the order a dynamic batch is
    tried in (bench: ``DEPLOYMENT_BATCH_SIZES``, batch 1 first)."""
    from normonnx.validate.inputs import check_shape_names

    overrides = dict(overrides or {})
    specs = input_specs(model)
    check_shape_names(overrides, specs)
    for spec in specs:
        if spec.shape is None and spec.name not in overrides:
            raise UnusableInputError(f"input '{spec.name}' has no declared shape; pass --shape {spec.name}:D0,D1,...")
    values = compared_constants(model, specs)
    guessed = sorted({d.input for d in dynamic_dims(specs, overrides)})
    tries = candidates(specs, overrides, total_strides(model) if guessed else (), batch_sizes)
    if (not guessed and not values) or runner is None:
        return ProbedShapes(tries[0], values, guessed, 0)
    # Every shape with seeded integers first, then with integers 0 (token ids a small embedding table cannot take).
    integers = any(s.dtype.kind in "iu" and s.name not in values for s in specs)
    zeros = (False, True) if integers else (False,)
    feeds = [partial(probe_feeds, specs, shapes, values, 0, zero) for zero in zeros for shapes in tries]
    index, errors = runner.first_that_runs(feeds)
    if index < 0:
        what = "guessed shapes" if guessed else "inputs"
        tried = "; ".join(_dims_text(t) for t in tries)
        hint = " ".join(f"--shape {n}:D0,D1,..." for n in guessed) or "--inputs data.npz"
        raise UnusableInputError(
            f"{runner.label}: the original model runs at none of the {len(tries)} {what} tried ({tried});"
            f" onnxruntime said: {errors[0] if errors else 'nothing'}; pass {hint}"
        )
    return ProbedShapes(tries[index % len(tries)], values, guessed, index % len(tries) + 1, index >= len(tries))


def probed_feeds(
    specs: list[InputSpec], probed: ProbedShapes, count: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``count`` seeded input sets at the probed shapes (the same values every caller makes)."""
    return [probe_feeds(specs, probed.shapes, probed.values, seed + k, probed.zero_integers) for k in range(count)]
