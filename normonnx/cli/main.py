"""The parser and the entry point: the subcommands built from their descriptors, and the error boundary."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from normonnx import __version__
from normonnx.cli import options
from normonnx.cli.commands import COMMANDS
from normonnx.cli.verb import Command
from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, NormonnxError, first_line

EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, and where the help is), exit 2."""

    command: str | None = None  # the subcommand on the command line, for the help pointer
    commands: tuple[str, ...] = ()

    def error(self, message: str):
        prog = f"{self.prog} {self.command}" if self.command and self.prog == "normonnx" else self.prog
        self.exit(EXIT_UNUSABLE_INPUT, f"{prog}: error: {message} (see {prog} --help)\n")


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The parser of ``commands`` (every verb by default), each subcommand handled by its own ``handle``."""
    parser = _Parser(prog="normonnx", description="Export, fold and validate normalization layers through ONNX.")
    parser.add_argument("--version", action="version", version=f"normonnx {__version__}")
    options.add_global(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        options.add_global(p, in_subcommand=True)
        command.arguments(p)
        p.set_defaults(handler=command.handle)
    parser.commands = tuple(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run one command line (``sys.argv`` by default) over ``commands``; the exit code."""
    parser = build_parser(commands)
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
