"""The parser and the entry point: the subcommands built from their descriptors, and the error boundary."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from normonnx import __version__
from normonnx.cli import options
from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, NormonnxError, UnusableInputError, first_line

if TYPE_CHECKING:
    from normonnx.cli.verb import Command

EXIT_INTERNAL = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (what is wrong, and where the help is), exit 2."""

    command: str | None = None  # the subcommand on the command line, for the help pointer
    commands: tuple[str, ...] = ()

    def error(self, message: str):
        prog = f"{self.prog} {self.command}" if self.command and self.prog == "normonnx" else self.prog
        self.exit(EXIT_UNUSABLE_INPUT, f"{prog}: error: {message} (see {prog} --help)\n")


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The parser of ``commands`` (every verb by default), each subcommand handled by its own ``handle``."""
    if commands is None:
        from normonnx.cli.commands import COMMANDS  # the verbs import what they run: only when parsing

        commands = COMMANDS
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


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] | None = None) -> int:
    """Run one command line (``sys.argv`` by default) over ``commands`` (every verb); the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:  # answered before the verbs (and onnx, numpy) are imported
        print(f"normonnx {__version__}")
        return EXIT_OK
    _warm_up_for(words)
    parser = build_parser(commands)
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
    from normonnx.isolation import CUSTOM_OPS_ENV

    before = os.environ.get(CUSTOM_OPS_ENV)
    try:
        _load_custom_ops(args.custom_ops)
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
    finally:  # this command line's libraries only: an in-process caller's next call starts as it was
        if before is None:
            os.environ.pop(CUSTOM_OPS_ENV, None)
        else:
            os.environ[CUSTOM_OPS_ENV] = before


# The verbs whose proof runs onnxruntime (in the shared warm worker, normonnx.isolation).
_RUNS_ONNXRUNTIME = {"fold", "emit", "check", "bench", "half", "quantize"}


def _warm_up_for(words: list[str]) -> None:
    """Start the warm onnxruntime worker before the verbs are imported: its start and its onnxruntime import
    then overlap this process's imports and the fold itself. Read from the raw words (the parser is not
    built yet); a guess that is wrong costs an idle child, nothing else."""
    verb = next((w for w in words if not w.startswith("-")), None)
    # --no-verify too: folding a computed constant runs onnxruntime (a cold start there costs about 1 s).
    if verb in _RUNS_ONNXRUNTIME and not {"-h", "--help"} & set(words):
        from normonnx.isolation import prestart_shared_worker

        prestart_shared_worker()


def _load_custom_ops(libraries: list[str] | None) -> None:
    """--custom-ops: checked here, then handed to every onnxruntime session (children too) by the environment,
    for this command line only (``main`` restores it)."""
    from normonnx.isolation import CUSTOM_OPS_ENV

    for library in libraries or ():
        if not os.path.isfile(library):
            raise UnusableInputError(f"--custom-ops {library}: no such file")
    if libraries:
        os.environ[CUSTOM_OPS_ENV] = os.pathsep.join(os.path.abspath(p) for p in libraries)


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
    try:
        code = main()
    except KeyboardInterrupt:  # while the verbs were still being imported or parsed: one line too
        print("normonnx: interrupted", file=sys.stderr)
        code = 130
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.stderr.flush()
    os._exit(code)
