"""``normonnx convert``: a trained checkpoint to a validated, benchmarked deployment.

MODULE:FACTORY + checkpoint -> export at the chosen opset and style (the
unfolded baseline) -> fold -> parity against torch eager -> top-1 agreement
with torch on held-out data -> latency of the folded model against the
unfolded export and against the same network with its normalization layers
removed (the floor folding can reach), interleaved in one run -> a report
folder: model.onnx, model.unfolded.onnx, model.floor.onnx, report.md,
report.json and plots.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from normonnx.errors import OutputError, UnusableInputError
from normonnx.int8.data import calibration_count, split_samples
from normonnx.passes.rules import FoldOptions
from normonnx.pipelines.export import export_module, export_opset, parity_at_two_sizes
from normonnx.results import ConvertReport

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def top1_agreement(module, model_path: str | os.PathLike, data: np.ndarray, batch: int = 250) -> float:
    """Share of predictions (argmax over axis 1: per sample, or per pixel) on which torch and ONNX agree."""
    import torch

    from normonnx.validate.runner import SessionConfig
    from normonnx.validate.runners import RunOptions

    deployed = RunOptions().runner(str(model_path), SessionConfig(optimize=True), label=str(model_path))
    predictions, step, fixed = deployed.class_predictions(data, batch)
    agree = total = 0
    with torch.no_grad():
        for k, start in enumerate(range(0, len(data), step)):
            chunk = data[start : start + step]
            if len(chunk) != step and fixed:
                break  # a static batch that the data does not fill
            ref = module(torch.from_numpy(np.ascontiguousarray(chunk))).argmax(dim=1).numpy()
            agree += int((ref == predictions[k]).sum())
            total += ref.size
    if not total:
        raise UnusableInputError("the held-out data holds no complete batch for this model's input")
    return agree / total


def load_data(path: str | os.PathLike) -> np.ndarray:
    """Held-out inputs from an .npz: the array named 'images' or 'inputs', else the first."""
    from normonnx.validate.inputs import read_npz

    arrays = read_npz(path)
    key = next((k for k in ("images", "inputs") if k in arrays), next(iter(arrays), None))
    if key is None:
        raise UnusableInputError(f"{path}: the .npz holds no array")
    return np.asarray(arrays[key], dtype=np.float32)


def _check_data(data: np.ndarray, example) -> None:
    """Held-out data must be a batch of what the model takes: [N, *the example's per-sample shape]."""
    sample = tuple(example[0].shape[1:])
    if data.ndim != len(sample) + 1 or tuple(data.shape[1:]) != sample:
        raise UnusableInputError(
            f"--data: arrays of shape {list(data.shape)}; the model takes [N, {', '.join(map(str, sample))}]"
        )


def convert(
    spec: str,
    output: str | os.PathLike,
    *,
    checkpoint: str | None = None,
    input_shapes: Sequence[tuple[int, ...]] = (),
    opset: int | None = None,
    norm_style: str = "auto",
    target: str | None = None,
    data: np.ndarray | None = None,
    floor: bool = True,
    runs: int = 100,
    name: str | None = None,
    progress: Progress | None = None,
    dynamic_batch: bool = False,
    dynamic: Sequence[str] = (),
    precision: str | None = None,
    require_int8: bool = True,
) -> ConvertReport:
    """``spec`` (MODULE:FACTORY) with ``checkpoint`` exported, folded, checked against torch and timed, into the
    report folder ``output``; ``precision`` (fp16, bf16, int8) adds model.<precision>.onnx, verified.

    int8 calibrates on the first quarter of ``data`` and is proven on the rest (seeded inputs without
    ``data``, said in the report). ``require_int8=False`` (the demo) reports an int8 model that fails its
    gate instead of failing the conversion."""
    from normonnx.graph.bridge import rename_inputs
    from normonnx.graph.modelio import save_model
    from normonnx.pipelines.fold import fold
    from normonnx.reports.folder import write_convert_report
    from normonnx.torchfront.exporter import build
    from normonnx.torchfront.strip import count_norms, strip_norms

    def say(step: str) -> None:
        log.info("%s: %s", spec, step)
        if progress is not None:
            progress(step)

    start = time.perf_counter()
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; convert writes a report folder")
    opset = export_opset(opset, target)
    report = ConvertReport(name or spec.rpartition(":")[2], spec, checkpoint, opset, norm_style)
    say("export")
    module, example = build(spec, input_shapes, checkpoint)
    report.layers = count_norms(module)
    if data is not None:
        _check_data(data, example)
    unfolded, exported = export_module(
        module, example, opset=opset, norm_style=norm_style, verify=False, name=spec, dynamic_batch=dynamic_batch,
        dynamic=dynamic, target=target,
    )  # fmt: skip
    report.exporter = exported.exporter
    say("fold")
    folded, fold_report = fold(unfolded, FoldOptions(target=target), verify=True)
    if not fold_report.parity.passed:
        raise UnusableInputError(f"{spec}: the folded model does not match its export; nothing written")
    report.norms = fold_report.norms
    report.forms_after = fold_report.after.norms
    say("parity vs torch")
    report.parity, report.parity_resized, _ = parity_at_two_sizes(module, folded, example, exported.dynamic)
    extra = None  # the model of --precision
    if precision == "int8":
        say("int8")
        extra = _int8(report, folded, data, require_int8)
    elif precision is not None:
        from normonnx.pipelines.half import half_model

        say(f"half precision ({precision})")
        extra, half_report = half_model(folded, precision, target=target)
        report.notes.append(
            f"model.{precision}.onnx: {half_report.weight_bytes_half:.0%} of weight bytes in {precision},"
            f" {len(half_report.kept)} nodes kept in float32; half-faithful {half_report.parity.summary()}"
        )
        if not half_report.passed:
            raise UnusableInputError(f"{spec}: the {precision} model fails its half-faithful gate; nothing written")
    # Everything that can refuse the model has run: only now does anything reach the disk.
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    files = {"unfolded": out / "model.unfolded.onnx", "model": out / "model.onnx"}
    try:
        save_model(unfolded, files["unfolded"])
        save_model(folded, files["model"])
        if extra is not None:
            files[precision] = out / f"model.{precision}.onnx"
            save_model(extra, files[precision])
        if data is not None:
            say("top-1 agreement")
            report.top1 = top1_agreement(module, files["model"], data)
            report.top1_samples = len(data)
            if precision == "int8" and extra is not None:  # on the samples int8 was not calibrated on
                report.top1_int8 = top1_agreement(module, files["int8"], data[calibration_count(len(data)) :])
        models = {"folded": files["model"], "unfolded": files["unfolded"]}
        if precision in ("fp16", "int8") and precision in files:  # onnxruntime's CPU has no bf16 kernels for most ops
            models[precision] = files[precision]
        if floor:
            say("floor")
            files["floor"] = out / "model.floor.onnx"
            floor_model, _ = export_module(
                strip_norms(module), example, opset=opset, norm_style=norm_style, verify=False,
                dynamic_batch=dynamic_batch, dynamic=dynamic,
            )  # fmt: skip
            floor_model = rename_inputs(fold(floor_model)[0], [i.name for i in folded.graph.input])
            save_model(floor_model, files["floor"])
            models["floor"] = files["floor"]
        say("bench")
        _bench(report, models, runs)
        report.files = {k: str(v) for k, v in files.items()}
        report.seconds = time.perf_counter() - start
        write_convert_report(out, report)
    except BaseException:
        _remove_partial(out, files.values(), created)
        raise
    return report


def _int8(report: ConvertReport, folded, data: np.ndarray | None, required: bool):
    """The folded model in int8, its report on ``report``; None when it fails its gate (``report.passed`` says
    so, unless ``required`` is off: then it is a note, as is a model the quantizer cannot take)."""
    from normonnx.pipelines.quantize import quantize_model
    from normonnx.validate.inputs import input_specs

    report.int8_required = required
    try:
        inputs = split_samples(input_specs(folded)[0], data) if data is not None else None
        model, report.int8 = quantize_model(folded, data=inputs, bench=False, name=f"{report.spec} (int8)")
    except UnusableInputError as e:
        if required:
            raise
        report.notes.append(f"model.int8.onnx not written: {e}")
        return None
    judged = report.int8.output_model
    if not report.int8.passed:
        report.notes.append(f"model.int8.onnx not written: {report.int8.parity.summary()}")
        return None
    theirs = report.int8.baseline
    versus = ""
    if theirs is not None and theirs.worst_sqnr() is not None:
        versus = f" (onnxruntime's own flow on the folded model: {theirs.worst_sqnr():.1f} dB)"
    report.notes.append(
        f"model.int8.onnx ({report.int8.written}'s): SQNR {judged.worst_sqnr():.1f} dB against the float32 model"
        f"{versus}, {len(judged.float_nodes)} nodes computing in float; calibration: {report.int8.data}"
    )
    return model


def _remove_partial(out: Path, files, created: bool) -> None:
    """A failed convert leaves no half-made report folder: the models it wrote go, and the folder if it made it."""
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def _bench(report: ConvertReport, models: dict[str, Path], runs: int) -> None:
    from normonnx.graph.modelio import load_model
    from normonnx.validate.inputs import input_specs, random_inputs
    from normonnx.validate.latency import speedup
    from normonnx.validate.runner import SessionConfig
    from normonnx.validate.runners import RunOptions, measure_interleaved

    feeds = random_inputs(input_specs(load_model(models["folded"], load_weights=False)), 0)
    per_model = []  # the same values, in each model's input types (an fp16 model takes fp16)
    for path in models.values():
        types = {s.name: s.dtype for s in input_specs(load_model(path, load_weights=False))}
        per_model.append({k: v.astype(types.get(k, v.dtype)) for k, v in feeds.items()})
    deployed = SessionConfig(optimize=True, spin=False)  # spinning threads would steal the other model's cores
    runners = {k: RunOptions().runner(str(v), deployed, label=k) for k, v in models.items()}
    stats = measure_interleaved(runners, per_model, runs=runs, warmup=5, label=f"bench {report.name}")
    report.latency = stats
    sp = speedup(stats, "unfolded", "folded")
    report.speedup, report.speedup_spread = sp.median, (sp.p10, sp.p90)
    if "floor" in stats:
        fl = speedup(stats, "folded", "floor")  # folded time / floor time
        report.floor_ratio, report.floor_spread = fl.median, (fl.p10, fl.p90)
