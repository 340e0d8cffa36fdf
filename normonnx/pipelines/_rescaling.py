"""The rescaling step of ``normonnx half``: streams beyond the half range carried at 2^-k, proven in float32.

``passes.rescale`` plans the regions and scales their boundaries; this step runs the rescaled float32
model beside the unscaled one on the calibration inputs and keeps it only when the two agree at float32
noise (``FP32_GATE``): a power-of-two scale is exact, so a difference means a region the plan got wrong,
and the model is then converted unscaled (its hot tensors float32 islands), which the report says.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from normonnx.passes.manager import Pipeline, Stage
from normonnx.passes.rescale import RescaleStreams, plan_rescale
from normonnx.reports.progress import phase
from normonnx.results import HalfReport
from normonnx.validate.parity import FP32_GATE, compare
from normonnx.validate.runners import OnnxruntimeRunner, RunOptions


def rescaled(
    folded: onnx.ModelProto,
    graph: gs.Graph,
    folded_runner: OnnxruntimeRunner,
    ranges: dict[str, float],
    limit: float,
    feeds: list[dict],
    options: RunOptions,
    report: HalfReport,
) -> tuple[onnx.ModelProto, dict[str, float], OnnxruntimeRunner]:
    """``folded`` (``graph`` is it bridged, read only) with every stream that can carry a power-of-two scale
    below ``limit`` rescaled, the calibration's ranges as that model sees them, and its runner; ``folded``,
    ``ranges`` and ``folded_runner`` as they were when nothing is."""
    plan = plan_rescale(graph, ranges, limit)
    report.rescale_refused = plan.refused
    if not plan.regions:
        return folded, ranges, folded_runner
    phase("rescale proof")
    model = Pipeline((Stage((RescaleStreams(plan),)),)).apply(folded, always_infer=True).model
    unscaled = folded_runner.infer(feeds)
    runner = options.runner(model.SerializeToString(), label="rescaled float32 model")
    proof = compare(unscaled, runner.infer(feeds), default=FP32_GATE)
    if not proof.passed:
        worst = proof.worst()
        report.notes.append(
            f"rescaling failed its float32 proof (max|diff| {worst.max_abs:.3g} on {worst.name}): not applied;"
            " its tensors stay in float32"
        )
        return folded, ranges, folded_runner
    report.rescaled = plan.regions
    worst = proof.worst()
    report.notes.append(
        f"rescaled model proven in float32 against the unscaled one: max|diff| {worst.max_abs:.3g} on {worst.name}"
    )
    return model, plan.scaled_ranges(ranges), runner
