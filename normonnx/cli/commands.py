"""Every verb of the command line, as data: one :class:`~normonnx.cli.verb.Verb` each, in ``COMMANDS``.

A verb's entry names its arguments, the options its pipeline takes, its one-file
pipeline (and its many-file job, in ``pipelines/batch.py``), its renderer (in
``reports/text.py``), its title and how its exit code is derived; ``verb.handle``
does the rest. Pipelines and renderers are imported when a verb runs, so that
``normonnx --help`` loads none of them. ``demo`` fits no such shape and keeps a
thin handler.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normonnx.cli import many, options
from normonnx.cli.options import factory_options, run_options, tolerances
from normonnx.cli.output import out, verdict
from normonnx.cli.verb import Call, Command, Report, Thin, Verb, passed, wrote
from normonnx.errors import EXIT_OK, EXIT_VERIFY_FAILED, UnusableInputError
from normonnx.pipelines import batch
from normonnx.pipelines.export import DEFAULT_OPSET


def _text(renderer: str) -> Callable[[Any], str]:
    """``reports.text.<renderer>``, imported when a report is shown."""

    def render(report: Any) -> str:
        return getattr(importlib.import_module("normonnx.reports.text"), renderer)(report)

    return render


def _rewriting(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],
    options: Callable[[argparse.Namespace], dict],
    *,
    title_extra: Callable[[Call], str] = lambda c: "",
    verified: Callable[[Call], str] = lambda c: c.source,
    steps: bool = False,
) -> Verb:
    """A verb that rewrites IN into OUT, verified, one file or many, with a JSON report (fold, emit, half):
    ``pipelines.<name>.<name>_file`` for one file, ``batch.<name>_one`` for each of many."""

    def run(c: Call) -> Report:
        pipeline = importlib.import_module(f"normonnx.pipelines.{name}")
        shown = {"progress": lambda step: c.bar.update(note=step)} if steps else {}  # the step on the progress line
        return getattr(pipeline, f"{name}_file")(c.source, c.output, **c.options, **shown)

    return Verb(
        name,
        help,
        arguments,
        files=many.in_out(name),
        run=run,
        render=_text(f"render_{name}"),
        options=options,
        many=many.rewrites(getattr(batch, f"{name}_one")),
        report="json",
        title=lambda c, r: f"normonnx {name} {c.source} -> {c.output}{title_extra(c)}",
        close=wrote(verified),
    )


def _shapes(args: argparse.Namespace) -> dict:
    from normonnx.validate.inputs import parse_shape_overrides

    return parse_shape_overrides(args.shape)


# fold


def _fold_arguments(p: argparse.ArgumentParser) -> None:
    options.add_files(p, "fold")
    p.add_argument("--report", metavar="REPORT.json", help="also write the fold report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against the input")
    options.add_norm_affine(p)
    options.add_deploy_target(p)
    p.add_argument(
        "--constant-initializer-inputs",
        action="store_true",
        help="treat weights also listed as graph inputs (ir_version >= 4) as constants and drop them from the inputs",
    )
    options.add_json(p, "print the report as JSON")


def _fold_options(args: argparse.Namespace) -> dict:
    from normonnx.passes import FoldOptions

    fold = FoldOptions(
        fold_norm_affine=args.norm_affine,
        constant_initializer_inputs=args.constant_initializer_inputs,
        target=args.target,
    )
    return {"options": fold, "verify": not args.no_verify, "shapes": _shapes(args)}


FOLD = _rewriting("fold", "fold every constant normalization of ONNX files", _fold_arguments, _fold_options)


# emit


def _emit_arguments(p: argparse.ArgumentParser) -> None:
    options.add_files(p, "emit")
    options.add_emission(p, None)


def _emit_options(args: argparse.Namespace) -> dict:
    return {
        "opset": args.opset,
        "norm_style": args.norm_style,
        "verify": not args.no_verify,
        "shapes": _shapes(args),
        "target": args.target,
    }


EMIT = _rewriting(
    "emit", "re-emit every normalization of ONNX files at an opset and style", _emit_arguments, _emit_options
)


# half


def _half_arguments(p: argparse.ArgumentParser) -> None:
    options.add_files(p, "convert")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="the half type (default fp16)")
    p.add_argument("--keep-io-types", action="store_true", help="inputs and outputs stay float32")
    p.add_argument(
        "--no-rescale",
        dest="rescale",
        action="store_false",
        help="keep tensors beyond the half range in float32 instead of carrying them at an exact power-of-two scale",
    )
    options.add_deploy_target(p)
    p.add_argument(
        "--inputs", dest="calibration", metavar="DATA.npz", help="calibration and verification inputs (default: seeded)"
    )
    p.add_argument("--report", metavar="REPORT.json", help="also write the report as JSON")
    options.add_json(p, "print the report as JSON")


def _half_options(args: argparse.Namespace) -> dict:
    return {
        "dtype": args.dtype,
        "keep_io_types": args.keep_io_types,
        "inputs": args.calibration,
        "shapes": _shapes(args),
        "target": args.target,
        "rescale": args.rescale,
    }


HALF = _rewriting(
    "half",
    "convert to fp16/bf16 with every normalization's statistics kept in float32",
    _half_arguments,
    _half_options,
    title_extra=lambda c: f" ({c.args.dtype})",
    verified=lambda c: f"{c.source} in half-faithful arithmetic",
)


# quantize


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    from normonnx.int8 import ACTIVATIONS, CALIBRATIONS

    options.add_files(p, "quantize")
    p.add_argument(
        "--data", metavar="CALIB.npz", help="calibration inputs (default: seeded random inputs, a weaker choice)"
    )
    p.add_argument(
        "--held-out", metavar="HELDOUT.npz", help="inputs for the proof (default: the last quarter of --data)"
    )
    p.add_argument("--calibrate", choices=CALIBRATIONS, default="minmax", help="activation ranges (default minmax)")
    p.add_argument(
        "--activations", choices=ACTIVATIONS, default="uint8", help="activation type (default uint8: x86 CPUs)"
    )
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default: per channel)")
    options.add_norm_affine(p)
    p.add_argument(
        "--min-sqnr", type=float, default=None, metavar="DB", help="gate: SQNR of every output in dB (default 20)"
    )
    p.add_argument("--no-baseline", action="store_true", help="skip onnxruntime's own flow (the comparison)")
    p.add_argument("--no-bench", action="store_true", help="skip the latency measurement")
    p.add_argument("--report", metavar="REPORT.json", help="also write the report as JSON")
    options.add_json(p, "print the report as JSON")


def _quantize_options(args: argparse.Namespace) -> dict:
    from normonnx.int8.engine import Int8Settings
    from normonnx.validate.parity import INT8_MIN_SQNR

    if args.min_sqnr is not None and not -300 <= args.min_sqnr <= 300:
        raise UnusableInputError(f"--min-sqnr {args.min_sqnr:g}: a gate in dB, between -300 and 300")
    return {
        "data": args.data,
        "held_out": args.held_out,
        "settings": Int8Settings(args.calibrate, args.activations, per_channel=not args.per_tensor),
        "shapes": _shapes(args),
        "min_sqnr": INT8_MIN_SQNR if args.min_sqnr is None else args.min_sqnr,
        "norm_affine": args.norm_affine,
        "baseline": not args.no_baseline,
        "bench": not args.no_bench,
    }


QUANTIZE = _rewriting(
    "quantize",
    "static int8 through onnxruntime's quantizer, normalizations folded or kept in float, proven and timed",
    _quantize_arguments,
    _quantize_options,
    verified=lambda c: f"{c.source} on held-out inputs",
    steps=True,
)


# inspect


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="ONNX file")
    options.add_deploy_target(p)
    options.add_json(p, "print as JSON")


def _inspect(c: Call) -> Report:
    from normonnx.pipelines.inspect import inspect_model

    return inspect_model(c.source, target=c.args.target)


INSPECT = Verb(
    "inspect",
    "list every normalization, its form, and whether it folds (or why not)",
    _inspect_arguments,
    files=lambda args: (args.input, None),
    run=_inspect,
    render=_text("render_inspection"),
    progress=False,
)


# export


def _export_arguments(p: argparse.ArgumentParser) -> None:
    options.add_factory(p, "ONNX file to write")
    options.add_emission(p, DEFAULT_OPSET)
    options.add_precision(p)


def _export(c: Call) -> Report:
    from normonnx.pipelines.export import export_file

    args = c.args
    return export_file(c.source, c.output, **factory_options(args), verify=not args.no_verify, precision=args.precision)


EXPORT = Verb(
    "export",
    "export a torch model with every normalization in the chosen form",
    _export_arguments,
    files=lambda args: (args.factory, args.output),
    run=_export,
    render=_text("render_export"),
    report="json",
    protects=lambda c: (c.output, c.args.checkpoint),  # the factory names no file
    title=lambda c, r: f"normonnx export {c.source} -> {c.output} with {r.exporter}",
    close=wrote(lambda c: "torch eager"),
)


# check


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="candidate ONNX file; or several files and folders")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--against",
        metavar="REF",
        help="reference ONNX (a folder of them for many candidates); without --against or --torch, an fp16/bf16"
        " model is checked against its own exact float32 widening",
    )
    ref.add_argument("--torch", metavar="MODULE:FACTORY", help="torch eager reference")
    p.add_argument("--checkpoint", help="weights for --torch")
    p.add_argument("--inputs", metavar="DATA.npz", help="real inputs: arrays named like the inputs")
    options.add_shape(p)
    p.add_argument("--samples", type=options.positive_int("--samples"), default=3, help="seeded input sets (default 3)")
    p.add_argument("--rtol", type=float, help="gate: max|diff| <= max(atol, rtol * max|ref|) (default 1e-5)")
    p.add_argument(
        "--atol",
        type=float,
        help="see --rtol (default 1e-5; fp16/bf16 outputs: 1e-2 both judged half-faithfully, 5e-3 on onnxruntime;"
        " int8 models: SQNR >= 20 dB)",
    )
    p.add_argument("--tol", action="append", metavar="OUTPUT=ATOL[,RTOL]", help="gate for one output")
    options.add_provider(p)
    p.add_argument("--optimize", action="store_true", help="run the candidate with ORT_ENABLE_ALL (as deployed)")
    p.add_argument("--localize", action="store_true", help="name the first diverging node even when parity holds")
    p.add_argument(
        "--evaluator",
        choices=("faithful", "onnxruntime"),
        help="what computes an fp16/bf16 candidate (default on CPU: faithful, every op rounded as a GPU does)",
    )
    p.add_argument("--fp16-baseline", metavar="BASE.onnx", help="the unmodified fp16 model (default: derived)")
    p.add_argument("--map", metavar="RENAMES.json", help="candidate->reference tensor renames for localization")
    p.add_argument("--report", metavar="DIR", help="write report.md, report.json and plots")
    p.add_argument("--save-inputs", metavar="INPUTS.npz", help="the inputs used, stacked per input name")
    p.add_argument("--save-outputs", metavar="OUTPUTS.npz", help="reference/NAME and candidate/NAME outputs")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="many candidates: per-file reports and summary.json")
    options.add_jobs(p)
    options.add_json(p, "print the result as JSON")


def _check_gate(args: argparse.Namespace):
    from normonnx.validate.parity import Gate

    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not 0 <= value < float("inf"):
            raise UnusableInputError(f"{flag} {value:g}: a tolerance must be finite and >= 0")
    if args.atol is None and args.rtol is None:
        return None
    return Gate(args.atol if args.atol is not None else 1e-5, args.rtol if args.rtol is not None else 1e-5)


def check_options(args: argparse.Namespace) -> dict:
    """Everything ``check`` takes from the command line except the candidate and the reference."""
    from normonnx.pipelines.check import read_renames

    if args.checkpoint and not args.torch:
        raise UnusableInputError(f"--checkpoint {args.checkpoint}: applies only with --torch MODULE:FACTORY")
    return {
        "checkpoint": args.checkpoint,
        "inputs": args.inputs,
        "samples": args.samples,
        "gates": tolerances(args.tol),
        "default_gate": _check_gate(args),
        "optimize": args.optimize,
        "localize": True if args.localize else None,
        "evaluator": args.evaluator,
        "fp16_baseline": args.fp16_baseline,
        "renames": read_renames(args.map),
        **run_options(args),
    }


def _one_candidate(args: argparse.Namespace) -> tuple[str, None] | None:
    """One candidate; None for several, a folder, or -o OUTDIR."""
    if len(args.models) > 1 or Path(args.models[0]).is_dir() or args.output:
        return None
    return args.models[0], None


def _check(c: Call) -> Report:
    from normonnx.pipelines.check import check

    args = c.args
    return check(
        c.source,
        against=args.against,
        torch=args.torch,
        save_inputs=args.save_inputs,
        save_outputs=args.save_outputs,
        **c.options,
    )


CHECK = Verb(
    "check",
    "numerical parity of models against an ONNX or torch reference",
    _check_arguments,
    files=_one_candidate,
    run=_check,
    render=_text("render_check"),
    options=check_options,
    many=many.checks,
    report="folder",
    close=passed,
)


# bench


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX file")
    p.add_argument("--vs", metavar="OTHER.onnx", help="the model to compare against (speed-up = its time / model's)")
    options.add_provider(p)
    p.add_argument(
        "--threads", type=options.positive_int("--threads"), help="intra-op threads (default: onnxruntime's)"
    )
    p.add_argument(
        "--runs", type=options.positive_int("--runs"), default=100, help="timed runs per model (default 100)"
    )
    p.add_argument(
        "--warmup", type=options.positive_int("--warmup", 0), default=10, help="warm-up runs per model (default 10)"
    )
    options.add_shape(p)
    p.add_argument("--report", metavar="DIR", help="write report.md, report.json and a latency plot")
    options.add_json(p, "print the result as JSON")


def _bench(c: Call) -> Report:
    from normonnx.pipelines.bench import bench

    return bench(c.source, c.args.vs, **c.options)


BENCH = Verb(
    "bench",
    "latency of a model, and its speed-up over another",
    _bench_arguments,
    files=lambda args: (args.model, None),
    run=_bench,
    render=_text("render_bench"),
    options=lambda args: {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, **run_options(args)},
    report="folder",
)


# convert


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    options.add_factory(p, "report folder (model.onnx, report.md, ...)")
    options.add_form(p, DEFAULT_OPSET)
    p.add_argument("--data", metavar="HELDOUT.npz", help="held-out inputs for top-1 agreement with torch")
    p.add_argument("--no-floor", action="store_true", help="skip the no-normalization latency floor")
    options.add_precision(p, int8=True)
    p.add_argument(
        "--runs", type=options.positive_int("--runs"), default=100, help="timed runs per model (default 100)"
    )
    options.add_json(p, "print the report as JSON")


def _convert_options(args: argparse.Namespace) -> dict:
    from normonnx.pipelines.convert import load_data

    return {"data": load_data(args.data) if args.data else None}


def _convert(c: Call) -> Report:
    from normonnx.pipelines.convert import convert

    args = c.args
    return convert(
        c.source,
        c.output,
        **factory_options(args),
        data=c.options["data"],
        floor=not args.no_floor,
        runs=args.runs,
        progress=lambda step: c.bar.update(note=step),
        precision=args.precision,
    )


def _report_folder_and_verdict(c: Call, report: Report) -> int:
    verdict(c.args, f"report: {c.output}/report.md")
    return passed(c, report)


CONVERT = Verb(
    "convert",
    "checkpoint -> export -> fold -> check -> bench -> one report folder",
    _convert_arguments,
    files=lambda args: (args.factory, args.output),
    run=_convert,
    render=_text("render_convert"),
    options=_convert_options,
    close=_report_folder_and_verdict,
)


# demo: many reports, a table over the zoo, no --json: a thin handler


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="report folder (default out/demo)")
    options.add_form(p, DEFAULT_OPSET)
    p.add_argument("--only", metavar="NAME,NAME", help="a subset of the zoo")
    p.add_argument(
        "--runs", type=options.positive_int("--runs"), default=200, help="timed runs per model (default 200)"
    )


def _demo(args: argparse.Namespace) -> int:
    from normonnx.pipelines.demo import run_demo
    from normonnx.reports.text import render_demo

    reports, failures = run_demo(
        args.output,
        opset=args.opset,
        norm_style=args.norm_style,
        target=args.target,
        only=args.only.split(",") if args.only is not None else None,
        runs=args.runs,
    )
    from normonnx.zoo import ZOO

    out(render_demo(reports, {n: e.families for n, e in ZOO.items()}))
    for f in failures:
        out(f"FAILED {f}")
    out(f"report: {args.output}/report.md")
    out("PASSED" if not failures else "FAILED")
    return EXIT_OK if not failures else EXIT_VERIFY_FAILED


DEMO = Thin("demo", "convert every bundled reference model", _demo_arguments, _demo)

# The order of `normonnx --help`.
COMMANDS: tuple[Command, ...] = (EXPORT, EMIT, FOLD, HALF, QUANTIZE, INSPECT, CHECK, BENCH, CONVERT, DEMO)
