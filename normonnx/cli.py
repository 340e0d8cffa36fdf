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

from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_VERIFY_FAILED, NormonnxError, first_line

EXIT_INTERNAL = 3
Handler = Callable[[argparse.Namespace], int]


def _out(text: str = "") -> None:
    print(text, flush=True)


def _write_json(path: str, data: dict) -> None:
    from normonnx.fileio import write_json_atomic

    write_json_atomic(path, data)


def cmd_fold(args: argparse.Namespace) -> int:
    from normonnx.fold import fold_file
    from normonnx.foldreport import render
    from normonnx.validate.inputs import parse_shape_overrides

    report = fold_file(args.input, args.output, verify=not args.no_verify, shapes=parse_shape_overrides(args.shape))
    if args.report:
        _write_json(args.report, report.to_dict())
    if args.json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        _out(f"normonnx fold {args.input} -> {args.output}")
        _out(render(report))
    if report.output is None:
        print(f"normonnx: {args.output}: not written, the folded model does not match {args.input}", file=sys.stderr)
        _out("FAILED")
        return EXIT_VERIFY_FAILED
    _out(f"wrote {args.output} in {report.seconds:.2f} s")
    _out("PASSED" if report.parity is not None else "DONE (parity not verified: --no-verify)")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from normonnx.inspection import inspect_model, render_inspection

    report = inspect_model(args.input)
    if args.json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        _out(render_inspection(report))
    return EXIT_OK


def _add_fold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fold", help="fold every constant normalization of an ONNX file")
    p.add_argument("input", help="ONNX file to fold (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the folded model")
    p.add_argument("--report", metavar="REPORT.json", help="also write the fold report as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the parity check against the input")
    p.add_argument("--shape", action="append", metavar="NAME:D0,D1,...", help="shape of a dynamic input")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_fold)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list every normalization, its form, and whether it folds (or why not)")
    p.add_argument("input", help="ONNX file")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=cmd_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normonnx", description="Export, fold and validate normalization layers through ONNX."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_fold, _add_inspect):
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
