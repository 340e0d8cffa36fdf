"""The ``normonnx`` command line (contract: DESIGN.md section 6).

Every subcommand returns an exit code: 0 success, 1 verification failure,
2 unusable input. A user error is one line on stderr, never a traceback;
``--debug`` shows the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from normonnx.errors import (
    EXIT_OK,
    EXIT_UNUSABLE_INPUT,
    EXIT_VERIFY_FAILED,
    NormonnxError,
    UnusableInputError,
    first_line,
)

EXIT_INTERNAL = 3
Handler = Callable[[argparse.Namespace], int]


def _out(text: str = "") -> None:
    print(text, flush=True)


def _verdict(args: argparse.Namespace, text: str) -> None:
    """Closing lines: on stdout, or on stderr with --json so that stdout is exactly one JSON document."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def _show(args: argparse.Namespace, report, render: Callable[[object], str], title: str | None = None) -> None:
    """The report on stdout: exactly one JSON document with --json, else ``title`` and the rendered text."""
    if getattr(args, "json", False):
        _out(json.dumps(report.to_dict(), indent=2))
        return
    if title:
        _out(title)
    _out(render(report))


def _write_json(path: str | None, data: dict) -> None:
    """--report REPORT.json, when given."""
    if not path:
        return
    from normonnx.fileio import write_json_atomic

    write_json_atomic(path, data)


def _check_report_path(report: str | None, *protected: str | None) -> None:
    """Refuse, before any work, a --report that would land on an input or on the output."""
    from pathlib import Path

    from normonnx.errors import OutputError

    if not report:
        return
    target = Path(report).resolve()
    for other in protected:
        if other and Path(other).resolve() == target:
            raise OutputError(f"{report}: --report would overwrite {other}")
    if not target.parent.is_dir():
        raise OutputError(f"{report}: folder {target.parent} does not exist")


def cmd_fold(args: argparse.Namespace) -> int:
    from normonnx.passes._base import FoldOptions
    from normonnx.pipelines.fold import fold_file
    from normonnx.reports.text import render_fold
    from normonnx.validate.inputs import parse_shape_overrides

    _check_report_path(args.report, args.input, args.output)
    options = FoldOptions(
        fold_norm_affine=args.norm_affine, constant_initializer_inputs=args.constant_initializer_inputs
    )
    report = fold_file(
        args.input, args.output, options, verify=not args.no_verify, shapes=parse_shape_overrides(args.shape)
    )
    _write_json(args.report, report.to_dict())
    _show(args, report, render_fold, f"normonnx fold {args.input} -> {args.output}")
    return _finish(args, args.output, report, report.output is not None, args.input)


def cmd_inspect(args: argparse.Namespace) -> int:
    from normonnx.pipelines.inspect import inspect_model
    from normonnx.reports.text import render_inspection

    report = inspect_model(args.input)
    _show(args, report, render_inspection)
    return EXIT_OK


def _finish(args: argparse.Namespace, output: str, report, written: bool, what: str) -> int:
    """The verdict lines shared by the commands that write a model."""
    if not written:
        print(f"normonnx: {output}: not written, the model does not match {what}", file=sys.stderr)
        _verdict(args, "FAILED")
        return EXIT_VERIFY_FAILED
    _verdict(args, f"wrote {output} in {report.seconds:.2f} s")
    _verdict(args, "PASSED" if report.parity is not None else "DONE (parity not verified: --no-verify)")
    return EXIT_OK


def _factory_options(args: argparse.Namespace) -> dict:
    """What export and convert take from MODULE:FACTORY's options: weights, example shapes, target form."""
    from normonnx.torchfront.exporter import parse_input_shape

    return {
        "checkpoint": args.checkpoint,
        "input_shapes": [parse_input_shape(s) for s in args.input_shape or []],
        "opset": args.opset,
        "style": args.norm_style,
    }


def cmd_export(args: argparse.Namespace) -> int:
    from normonnx.pipelines.export import export_file
    from normonnx.reports.text import render_export

    _check_report_path(args.report, args.output, args.checkpoint)
    report = export_file(args.factory, args.output, **_factory_options(args), verify=not args.no_verify)
    _write_json(args.report, report.to_dict())
    _show(args, report, render_export, f"normonnx export {args.factory} -> {args.output} with {report.exporter}")
    return _finish(args, args.output, report, report.output is not None, "torch eager")


def cmd_emit(args: argparse.Namespace) -> int:
    from normonnx.graph.modelio import check_output_path, save_model
    from normonnx.pipelines.emit import emit
    from normonnx.reports.text import render_emit
    from normonnx.validate.inputs import parse_shape_overrides

    check_output_path(args.output, [args.input])
    _check_report_path(args.report, args.input, args.output)
    model, report = emit(
        args.input, args.opset, args.norm_style, verify=not args.no_verify, shapes=parse_shape_overrides(args.shape)
    )
    written = report.parity is None or report.parity.passed
    if written:
        save_model(model, args.output, inputs=[args.input], no_stricter_than=args.input)
        report.output = args.output
    _write_json(args.report, report.to_dict())
    _show(args, report, render_emit, f"normonnx emit {args.input} -> {args.output}")
    return _finish(args, args.output, report, written, args.input)


def _parse_tolerances(items: list[str] | None):
    from normonnx.validate.parity import Gate

    gates = {}
    for item in items or []:
        name, sep, values = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            parts = [float(v) for v in values.split(",")]
            if any(not (v >= 0) for v in parts):  # also refuses nan
                raise ValueError
            gates[name] = Gate(parts[0], parts[1] if len(parts) > 1 else parts[0])
        except (ValueError, IndexError):
            raise UnusableInputError(f"--tol '{item}': expected OUTPUT=ATOL[,RTOL], tolerances >= 0") from None
    return gates


def _run_options(args: argparse.Namespace) -> dict:
    """Where and on what shapes check and bench run the models."""
    from normonnx.validate.inputs import parse_shape_overrides

    return {"provider": args.provider, "shapes": parse_shape_overrides(args.shape)}


def _write_report_folder(folder: str | None, **reports) -> None:
    """--report DIR of check and bench: report.md, report.json and plots."""
    if folder:
        from normonnx.reports.folder import write_report

        write_report(folder, **reports)


def cmd_check(args: argparse.Namespace) -> int:
    from normonnx.validate.check import check, read_renames
    from normonnx.validate.parity import Gate

    for flag, value in (("--atol", args.atol), ("--rtol", args.rtol)):
        if value is not None and not value >= 0:
            raise UnusableInputError(f"{flag} {value}: a tolerance must be >= 0")
    default = Gate(args.atol, args.rtol) if args.atol is not None or args.rtol is not None else None
    if default is not None:
        default = Gate(args.atol if args.atol is not None else 1e-5, args.rtol if args.rtol is not None else 1e-5)
    report = check(
        args.model,
        against=args.against,
        torch_spec=args.torch,
        checkpoint=args.checkpoint,
        inputs_npz=args.inputs,
        samples=args.samples,
        gates=_parse_tolerances(args.tol),
        default_gate=default,
        optimize=args.optimize,
        localize=True if args.localize else None,
        fp16_baseline=args.fp16_baseline,
        renames=read_renames(args.map),
        **_run_options(args),
    )
    _write_report_folder(args.report, check=report)
    from normonnx.reports.text import render_check

    _show(args, report, render_check)
    _verdict(args, "PASSED" if report.passed else "FAILED")
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from normonnx.validate.benchmark import bench

    report = bench(args.model, args.vs, threads=args.threads, runs=args.runs, warmup=args.warmup, **_run_options(args))
    _write_report_folder(args.report, bench=report)
    from normonnx.reports.text import render_bench

    _show(args, report, render_bench)
    return EXIT_OK


def _add_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", action="append", metavar="NAME:D0,D1,...", help="shape of a dynamic input")


def _add_provider_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")


def _add_json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="numerical parity of a model against an ONNX or torch reference")
    p.add_argument("model", help="candidate ONNX file")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--against", metavar="REF.onnx", help="reference ONNX (run with graph optimizations off)")
    ref.add_argument("--torch", metavar="MODULE:FACTORY", help="torch eager reference")
    p.add_argument("--checkpoint", help="weights for --torch")
    p.add_argument("--inputs", metavar="DATA.npz", help="real inputs: arrays named like the inputs")
    _add_shape_option(p)
    p.add_argument("--samples", type=int, default=3, help="seeded input sets (default 3)")
    p.add_argument("--rtol", type=float, help="gate: max|diff| <= max(atol, rtol * max|ref|) (default 1e-5)")
    p.add_argument("--atol", type=float, help="see --rtol (default 1e-5; fp16 outputs: 5e-3 both)")
    p.add_argument("--tol", action="append", metavar="OUTPUT=ATOL[,RTOL]", help="gate for one output")
    _add_provider_option(p)
    p.add_argument("--optimize", action="store_true", help="run the candidate with ORT_ENABLE_ALL (as deployed)")
    p.add_argument("--localize", action="store_true", help="name the first diverging node even when parity holds")
    p.add_argument("--fp16-baseline", metavar="BASE.onnx", help="the unmodified fp16 model (default: derived)")
    p.add_argument("--map", metavar="RENAMES.json", help="candidate->reference tensor renames for localization")
    p.add_argument("--report", metavar="DIR", help="write report.md, report.json and plots")
    _add_json_option(p, "print the result as JSON")
    p.set_defaults(handler=cmd_check)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency of a model, and its speed-up over another")
    p.add_argument("model", help="ONNX file")
    p.add_argument("--vs", metavar="OTHER.onnx", help="the model to compare against (speed-up = its time / model's)")
    _add_provider_option(p)
    p.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per model (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default 10)")
    _add_shape_option(p)
    p.add_argument("--report", metavar="DIR", help="write report.md, report.json and a latency plot")
    _add_json_option(p, "print the result as JSON")
    p.set_defaults(handler=cmd_bench)


def cmd_convert(args: argparse.Namespace) -> int:
    from normonnx.pipelines.convert import convert, load_data
    from normonnx.reports.markdown import convert_markdown

    report = convert(
        args.factory,
        args.output,
        **_factory_options(args),
        data=load_data(args.data) if args.data else None,
        floor=not args.no_floor,
        bench_runs=args.runs,
        progress=(lambda step: print(f"normonnx: {step}", file=sys.stderr)) if args.verbose else None,
    )
    _show(args, report, lambda r: convert_markdown(r).rstrip())
    _verdict(args, f"report: {args.output}/report.md")
    _verdict(args, "PASSED" if report.passed else "FAILED")
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from normonnx.pipelines.demo import run_demo
    from normonnx.reports.text import render_demo

    reports, failures = run_demo(
        args.output,
        opset=args.opset,
        style=args.norm_style,
        only=args.only.split(",") if args.only else None,
        bench_runs=args.runs,
    )
    from models.zoo import ZOO

    _out(render_demo(reports, {n: e.families for n, e in ZOO.items()}))
    for f in failures:
        _out(f"FAILED {f}")
    _out(f"report: {args.output}/report.md")
    _out("PASSED" if not failures else "FAILED")
    return EXIT_OK if not failures else EXIT_VERIFY_FAILED


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from normonnx.pipelines.export import DEFAULT_OPSET

    p = sub.add_parser("convert", help="checkpoint -> export -> fold -> check -> bench -> one report folder")
    _add_factory_options(p, "report folder (model.onnx, report.md, ...)")
    _add_form_options(p, DEFAULT_OPSET)
    p.add_argument("--data", metavar="HELDOUT.npz", help="held-out inputs for top-1 agreement with torch")
    p.add_argument("--no-floor", action="store_true", help="skip the no-normalization latency floor")
    p.add_argument("--runs", type=int, default=100, help="timed runs per model (default 100)")
    _add_json_option(p, "print the report as JSON")
    p.set_defaults(handler=cmd_convert)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from normonnx.pipelines.export import DEFAULT_OPSET

    p = sub.add_parser("demo", help="convert every bundled reference model (run from the repository root)")
    p.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="report folder (default out/demo)")
    _add_form_options(p, DEFAULT_OPSET)
    p.add_argument("--only", metavar="NAME,NAME", help="a subset of the zoo")
    p.add_argument("--runs", type=int, default=200, help="timed runs per model (default 200)")
    p.set_defaults(handler=cmd_demo)


def _add_form_options(p: argparse.ArgumentParser, default_opset: int | None) -> None:
    """--opset and --norm-style: the target every command that writes normalizations takes."""
    p.add_argument(
        "--opset",
        type=int,
        default=default_opset,
        help=f"target opset (default: {default_opset or 'the input model' + chr(39) + 's'})",
    )
    p.add_argument(
        "--norm-style",
        choices=("auto", "op", "decomposed"),
        default="auto",
        help="op: standard ops where the opset has them; decomposed: exact subgraphs;"
        " auto: the form measured fastest on onnxruntime CPU (default)",
    )


def _add_style_options(p: argparse.ArgumentParser, default_opset: int | None) -> None:
    _add_form_options(p, default_opset)
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--report", metavar="REPORT.json", help="also write the report as JSON")
    _add_json_option(p, "print the report as JSON")


def _add_file_options(p: argparse.ArgumentParser, input_help: str, output_help: str) -> None:
    """An ONNX file in, one out (never the same), and the shapes to verify it with."""
    p.add_argument("input", help=input_help)
    p.add_argument("-o", "--output", required=True, help=output_help)
    _add_shape_option(p)


def _add_factory_options(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("factory", metavar="MODULE:FACTORY", help="callable returning an nn.Module or (module, inputs)")
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--checkpoint", help="weights: .safetensors, or a torch state dict (loaded with weights_only=True)")
    p.add_argument("--input-shape", action="append", metavar="1,3,224,224", help="example input shape, once per input")


def _add_export(sub: argparse._SubParsersAction) -> None:
    from normonnx.pipelines.export import DEFAULT_OPSET

    p = sub.add_parser("export", help="export a torch model with every normalization in the chosen form")
    _add_factory_options(p, "ONNX file to write")
    _add_style_options(p, DEFAULT_OPSET)
    p.set_defaults(handler=cmd_export)


def _add_emit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emit", help="re-emit every normalization of an ONNX file at an opset and style")
    _add_file_options(p, "ONNX file (never modified)", "ONNX file to write")
    _add_style_options(p, None)
    p.set_defaults(handler=cmd_emit)


def _add_fold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fold", help="fold every constant normalization of an ONNX file")
    _add_file_options(p, "ONNX file to fold (never modified)", "where to write the folded model")
    p.add_argument("--report", metavar="REPORT.json", help="also write the fold report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against the input")
    p.add_argument(
        "--norm-affine",
        action="store_true",
        help="also fold LayerNorm/RMSNorm/GroupNorm/InstanceNorm affines into the linear op after them",
    )
    p.add_argument(
        "--constant-initializer-inputs",
        action="store_true",
        help="treat weights also listed as graph inputs (ir_version >= 4) as constants and drop them from the inputs",
    )
    _add_json_option(p, "print the report as JSON")
    p.set_defaults(handler=cmd_fold)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list every normalization, its form, and whether it folds (or why not)")
    p.add_argument("input", help="ONNX file")
    _add_json_option(p, "print as JSON")
    p.set_defaults(handler=cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normonnx", description="Export, fold and validate normalization layers through ONNX."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_export, _add_emit, _add_fold, _add_inspect, _add_check, _add_bench, _add_convert, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return EXIT_OK if e.code == 0 else EXIT_UNUSABLE_INPUT
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="normonnx: %(message)s", stream=sys.stderr
    )
    try:
        return args.handler(args)
    except NormonnxError as e:
        print(f"normonnx: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("normonnx: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unforeseen input: one line, not a traceback
        if args.debug:
            raise
        print(f"normonnx: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)", file=sys.stderr)
        return EXIT_INTERNAL


def run() -> None:
    """Console entry point: ``main`` in a process that exits without teardown.

    A fold of a large model leaves millions of small objects; the cyclic
    garbage collector rescans them over and over (10% of a 4000-block fold)
    and freeing them one by one at exit takes another half second. Every
    file normonnx writes is flushed, fsynced and renamed before ``main``
    returns, so the process can skip both.
    """
    gc.disable()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
