"""One handler per subcommand: arguments in, a pipeline run, a report out, an exit code back.

Handlers do no work of their own beyond reading arguments; every step lives
in ``pipelines``/``validate`` and every rendering in ``reports``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from normonnx.cli import many
from normonnx.cli.options import factory_options, run_options, tolerances
from normonnx.cli.output import check_report_path, finish, out, show, verdict, write_json
from normonnx.errors import EXIT_OK, EXIT_VERIFY_FAILED, UnusableInputError
from normonnx.pipelines import batch
from normonnx.reports.progress import Progress


def _one_file(args: argparse.Namespace, verb: str) -> tuple[str, str] | None:
    """(input, output) of a one-file run; None for a many-file run (``FILES_OR_DIRS... -o OUTDIR``)."""
    inputs = args.inputs
    if args.output is None:
        if len(inputs) == 2 and not Path(inputs[0]).is_dir():
            if Path(inputs[1]).exists():  # two existing files: a forgotten -o OUTDIR must not cost the second
                raise UnusableInputError(
                    f"{inputs[1]}: exists; to replace it pass -o {inputs[1]}, to {verb} both files pass -o OUTDIR"
                )
            return inputs[0], inputs[1]  # `normonnx fold IN OUT`, as onnxsim users type it
        raise UnusableInputError(
            f"no output given: normonnx {verb} IN.onnx -o OUT.onnx (or IN.onnx OUT.onnx), or FILES_OR_DIRS... -o OUTDIR"
        )
    names_folder = Path(args.output).is_dir() or args.output.endswith(("/", os.sep))
    if len(inputs) == 1 and not Path(inputs[0]).is_dir() and not names_folder:
        return inputs[0], args.output
    if Path(args.output).suffix == ".onnx" and not Path(args.output).is_dir():
        if len(inputs) == 1:
            raise UnusableInputError(
                f"{inputs[0]}: is a directory; to {verb} every model in it, pass -o an output folder, not a .onnx file"
            )
        raise UnusableInputError(f"-o {args.output}: {len(inputs)} inputs need an output folder, not a .onnx file")
    return None


def _refuse_jobs(args: argparse.Namespace) -> None:
    if getattr(args, "jobs", 1) != 1:
        raise UnusableInputError(f"--jobs {args.jobs}: applies to many-file runs (FILES_OR_DIRS... -o OUTDIR)")


def cmd_fold(args: argparse.Namespace) -> int:
    from normonnx.passes._base import FoldOptions
    from normonnx.validate.inputs import parse_shape_overrides

    options = FoldOptions(
        fold_norm_affine=args.norm_affine, constant_initializer_inputs=args.constant_initializer_inputs
    )
    shapes = parse_shape_overrides(args.shape)
    pair = _one_file(args, "fold")
    if pair is None:
        return many.rewrite_many(args, "fold", batch.fold_one, options, not args.no_verify, shapes)
    _refuse_jobs(args)
    from normonnx.pipelines.fold import fold_file
    from normonnx.reports.text import render_fold

    src, dst = pair
    check_report_path(args.report, src, dst)
    with Progress(label=f"fold {Path(src).name}"):
        report = fold_file(src, dst, options, verify=not args.no_verify, shapes=shapes)
    write_json(args.report, report.to_dict())
    show(args, report, render_fold, f"normonnx fold {src} -> {dst}")
    return finish(args, dst, report, report.output is not None, src)


def cmd_half(args: argparse.Namespace) -> int:
    from normonnx.validate.inputs import parse_shape_overrides

    shapes = parse_shape_overrides(args.shape)
    pair = _one_file(args, "half")
    if pair is None:
        return many.rewrite_many(args, "half", batch.half_one, args.dtype, args.keep_io_types, args.calibration, shapes)
    _refuse_jobs(args)
    from normonnx.pipelines.half import half_file
    from normonnx.reports.text import render_half

    src, dst = pair
    check_report_path(args.report, src, dst)
    with Progress(label=f"half {Path(src).name}"):
        report = half_file(
            src, dst, args.dtype, keep_io_types=args.keep_io_types, inputs_npz=args.calibration, shapes=shapes
        )
    write_json(args.report, report.to_dict())
    show(args, report, render_half, f"normonnx half {src} -> {dst} ({args.dtype})")
    return finish(args, dst, report, report.output is not None, f"{src} in half-faithful arithmetic")


def cmd_emit(args: argparse.Namespace) -> int:
    from normonnx.validate.inputs import parse_shape_overrides

    shapes = parse_shape_overrides(args.shape)
    pair = _one_file(args, "emit")
    if pair is None:
        return many.rewrite_many(args, "emit", batch.emit_one, args.opset, args.norm_style, not args.no_verify, shapes)
    _refuse_jobs(args)
    from normonnx.pipelines.emit import emit_file
    from normonnx.reports.text import render_emit

    src, dst = pair
    check_report_path(args.report, src, dst)
    with Progress(label=f"emit {Path(src).name}"):
        report = emit_file(src, dst, args.opset, args.norm_style, verify=not args.no_verify, shapes=shapes)
    write_json(args.report, report.to_dict())
    show(args, report, render_emit, f"normonnx emit {src} -> {dst}")
    return finish(args, dst, report, report.output is not None, src)


def cmd_inspect(args: argparse.Namespace) -> int:
    from normonnx.pipelines.inspect import inspect_model
    from normonnx.reports.text import render_inspection

    show(args, inspect_model(args.input), render_inspection)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from normonnx.pipelines.export import export_file
    from normonnx.reports.text import render_export

    check_report_path(args.report, args.output, args.checkpoint)
    with Progress(label=f"export {args.factory}"):
        report = export_file(
            args.factory, args.output, **factory_options(args), verify=not args.no_verify, precision=args.precision
        )
    write_json(args.report, report.to_dict())
    show(args, report, render_export, f"normonnx export {args.factory} -> {args.output} with {report.exporter}")
    return finish(args, args.output, report, report.output is not None, "torch eager")


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
    from normonnx.validate.check import read_renames

    if args.checkpoint and not args.torch:
        raise UnusableInputError(f"--checkpoint {args.checkpoint}: applies only with --torch MODULE:FACTORY")
    return {
        "checkpoint": args.checkpoint,
        "inputs_npz": args.inputs,
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


def cmd_check(args: argparse.Namespace) -> int:
    from normonnx.validate.check import check

    options = check_options(args)
    if len(args.models) > 1 or Path(args.models[0]).is_dir() or args.output:
        return many.check_many(args, options)
    _refuse_jobs(args)
    with Progress(label=f"check {Path(args.models[0]).name}"):
        report = check(
            args.models[0],
            against=args.against,
            torch_spec=args.torch,
            save_inputs=args.save_inputs,
            save_outputs=args.save_outputs,
            **options,
        )
    _write_report_folder(args.report, check=report)
    from normonnx.reports.text import render_check

    show(args, report, render_check)
    verdict(args, "PASSED" if report.passed else "FAILED")
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def _write_report_folder(folder: str | None, **reports) -> None:
    """--report DIR of check and bench: report.md, report.json and plots."""
    if folder:
        from normonnx.reports.folder import write_report

        write_report(folder, **reports)


def cmd_bench(args: argparse.Namespace) -> int:
    from normonnx.reports.text import render_bench
    from normonnx.validate.benchmark import bench

    with Progress(label=f"bench {Path(args.model).name}"):
        report = bench(
            args.model, args.vs, threads=args.threads, runs=args.runs, warmup=args.warmup, **run_options(args)
        )
    _write_report_folder(args.report, bench=report)
    show(args, report, render_bench)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from normonnx.pipelines.convert import convert, load_data
    from normonnx.reports.text import render_convert

    data = load_data(args.data) if args.data else None
    with Progress(label=f"convert {args.factory}") as bar:
        report = convert(
            args.factory,
            args.output,
            **factory_options(args),
            data=data,
            floor=not args.no_floor,
            bench_runs=args.runs,
            progress=lambda step: bar.update(note=step),
            precision=args.precision,
        )
    show(args, report, render_convert)
    verdict(args, f"report: {args.output}/report.md")
    verdict(args, "PASSED" if report.passed else "FAILED")
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from normonnx.pipelines.demo import run_demo
    from normonnx.reports.text import render_demo

    reports, failures = run_demo(
        args.output,
        opset=args.opset,
        style=args.norm_style,
        only=args.only.split(",") if args.only is not None else None,
        bench_runs=args.runs,
    )
    from normonnx.zoo import ZOO

    out(render_demo(reports, {n: e.families for n, e in ZOO.items()}))
    for f in failures:
        out(f"FAILED {f}")
    out(f"report: {args.output}/report.md")
    out("PASSED" if not failures else "FAILED")
    return EXIT_OK if not failures else EXIT_VERIFY_FAILED
