"""The parser and the entry point: every subcommand, its options, and the error boundary."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from normonnx import __version__
from normonnx.cli import commands, options
from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, NormonnxError, first_line
from normonnx.pipelines.export import DEFAULT_OPSET

EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, and where the help is), exit 2."""

    command: str | None = None  # the subcommand on the command line, for the help pointer
    commands: tuple[str, ...] = ()

    def error(self, message: str):
        prog = f"{self.prog} {self.command}" if self.command and self.prog == "normonnx" else self.prog
        self.exit(EXIT_UNUSABLE_INPUT, f"{prog}: error: {message} (see {prog} --help)\n")


def _parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """The subcommand ``name``, handled by ``commands.cmd_<name>``, with the global options."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    options.add_global(p, in_subcommand=True)
    p.set_defaults(handler=getattr(commands, f"cmd_{name}"))
    return p


def _add_fold(sub) -> None:
    p = _parser(sub, "fold", "fold every constant normalization of ONNX files")
    options.add_files(p, "fold")
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
    options.add_json(p, "print the report as JSON")


def _add_emit(sub) -> None:
    p = _parser(sub, "emit", "re-emit every normalization of ONNX files at an opset and style")
    options.add_files(p, "emit")
    options.add_target(p, None)


def _add_export(sub) -> None:
    p = _parser(sub, "export", "export a torch model with every normalization in the chosen form")
    options.add_factory(p, "ONNX file to write")
    options.add_target(p, DEFAULT_OPSET)
    options.add_precision(p)


def _add_half(sub) -> None:
    p = _parser(sub, "half", "convert to fp16/bf16 with every normalization's statistics kept in float32")
    options.add_files(p, "convert")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="the half type (default fp16)")
    p.add_argument("--keep-io-types", action="store_true", help="inputs and outputs stay float32")
    p.add_argument(
        "--inputs", dest="calibration", metavar="DATA.npz", help="calibration and verification inputs (default: seeded)"
    )
    p.add_argument("--report", metavar="REPORT.json", help="also write the report as JSON")
    options.add_json(p, "print the report as JSON")


def _add_inspect(sub) -> None:
    p = _parser(sub, "inspect", "list every normalization, its form, and whether it folds (or why not)")
    p.add_argument("input", help="ONNX file")
    options.add_json(p, "print as JSON")


def _add_check(sub) -> None:
    p = _parser(sub, "check", "numerical parity of models against an ONNX or torch reference")
    p.add_argument("models", nargs="+", metavar="MODEL", help="candidate ONNX file; or several files and folders")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--against", metavar="REF", help="reference ONNX (a folder of them for many candidates)")
    ref.add_argument("--torch", metavar="MODULE:FACTORY", help="torch eager reference")
    p.add_argument("--checkpoint", help="weights for --torch")
    p.add_argument("--inputs", metavar="DATA.npz", help="real inputs: arrays named like the inputs")
    options.add_shape(p)
    p.add_argument("--samples", type=options.positive_int("--samples"), default=3, help="seeded input sets (default 3)")
    p.add_argument("--rtol", type=float, help="gate: max|diff| <= max(atol, rtol * max|ref|) (default 1e-5)")
    p.add_argument("--atol", type=float, help="see --rtol (default 1e-5; fp16 outputs: 5e-3 both)")
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


def _add_bench(sub) -> None:
    p = _parser(sub, "bench", "latency of a model, and its speed-up over another")
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


def _add_convert(sub) -> None:
    p = _parser(sub, "convert", "checkpoint -> export -> fold -> check -> bench -> one report folder")
    options.add_factory(p, "report folder (model.onnx, report.md, ...)")
    options.add_form(p, DEFAULT_OPSET)
    p.add_argument("--data", metavar="HELDOUT.npz", help="held-out inputs for top-1 agreement with torch")
    p.add_argument("--no-floor", action="store_true", help="skip the no-normalization latency floor")
    options.add_precision(p)
    p.add_argument(
        "--runs", type=options.positive_int("--runs"), default=100, help="timed runs per model (default 100)"
    )
    options.add_json(p, "print the report as JSON")


def _add_demo(sub) -> None:
    p = _parser(sub, "demo", "convert every bundled reference model")
    p.add_argument("-o", "--output", default="out/demo", metavar="DIR", help="report folder (default out/demo)")
    options.add_form(p, DEFAULT_OPSET)
    p.add_argument("--only", metavar="NAME,NAME", help="a subset of the zoo")
    p.add_argument(
        "--runs", type=options.positive_int("--runs"), default=200, help="timed runs per model (default 200)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normonnx", description="Export, fold and validate normalization layers through ONNX.")
    parser.add_argument("--version", action="version", version=f"normonnx {__version__}")
    options.add_global(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for add in (
        _add_export,
        _add_emit,
        _add_fold,
        _add_half,
        _add_inspect,
        _add_check,
        _add_bench,
        _add_convert,
        _add_demo,
    ):
        add(sub)
    parser.commands = tuple(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    parser.command = next((w for w in words if w in parser.commands), None)
    try:
        args = parser.parse_args(words)
    except SystemExit as e:  # argparse already printed its one-line usage error (or --help, --version)
        return EXIT_OK if e.code in (0, None) else EXIT_UNUSABLE_INPUT
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="normonnx: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        return args.handler(args)
    except NormonnxError as e:
        print(f"normonnx: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("normonnx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `normonnx inspect m.onnx | head`: the reader has all it wanted
        _silence_stdout()
        return EXIT_OK
    except Exception as e:  # a bug or an unforeseen input: one line, not a traceback
        if args.debug:
            raise
        print(f"normonnx: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug)", file=sys.stderr)
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.stderr.flush()
    os._exit(code)
