"""A verb as data, and the one handler that runs any verb.

A :class:`Verb` says what a subcommand takes (its arguments, the options its
pipeline gets), what it runs on one file and on many, how its report is
shown and saved, and how its exit code is derived; :func:`handle` does the
rest the same way for every verb: one-file or many-file form, ``--report``,
``--json``, the title, the progress line and the closing lines. A verb whose
shape fits none of that (``demo``) is a :class:`Thin` command with its own
handler. The parser is built from a sequence of these (``main.build_parser``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from normonnx.cli import many
from normonnx.cli.output import check_report_path, finish, show, verdict, write_json
from normonnx.errors import EXIT_OK, EXIT_VERIFY_FAILED, UnusableInputError
from normonnx.reports.progress import Progress

Report = Any  # a pipeline's report: ``to_dict()`` for --json and --report REPORT.json


@dataclass(frozen=True)
class Call:
    """One one-file run of a verb: the command line, the verb's options built from it, and the files."""

    args: argparse.Namespace
    options: dict[str, Any]
    source: str  # the input file (or MODULE:FACTORY)
    output: str | None  # the file or folder written, if the verb writes one
    bar: Progress | None = None  # the progress line, for a pipeline that reports its steps


def no_options(args: argparse.Namespace) -> dict[str, Any]:
    return {}


def no_verdict(call: Call, report: Report) -> int:
    """Nothing to judge (bench, inspect): the report is the answer."""
    return EXIT_OK


def passed(call: Call, report: Report) -> int:
    """PASSED or FAILED from ``report.passed``; exit 1 when it failed."""
    verdict(call.args, "PASSED" if report.passed else "FAILED")
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED


def wrote(what: Callable[[Call], str]) -> Callable[[Call, Report], int]:
    """The closing lines of a verb that writes a model only when it matches ``what(call)``."""

    def close(call: Call, report: Report) -> int:
        return finish(call.args, call.output, report, report.output is not None, what(call))

    return close


def _source_and_output(call: Call) -> tuple[str | None, ...]:
    return call.source, call.output


@dataclass(frozen=True)
class Verb:
    """Everything the command line knows about one verb; :func:`handle` runs it.

    Every callable is called at most once per run, in this order: ``options``
    (checked before any work), ``files`` (None: the many-file form, ``many``),
    ``protects`` (with ``report='json'``), ``run`` inside the progress line,
    the report written, ``render`` (or the JSON) under ``title``, ``close``.
    """

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]  # the verb's own options (shared ones from cli/options.py)
    files: Callable[[argparse.Namespace], tuple[str, str | None] | None]  # (input, output); None: many files
    run: Callable[[Call], Report]  # the one-file pipeline
    render: Callable[[Report], str]  # the report as text (reports/text.py)
    options: Callable[[argparse.Namespace], dict[str, Any]] = no_options  # the pipeline's options
    many: Callable[[argparse.Namespace, dict[str, Any]], list[many.Job]] | None = None  # the many-file jobs
    report: Literal["json", "folder"] | None = None  # --report REPORT.json, --report DIR (report.md, plots)
    protects: Callable[[Call], tuple[str | None, ...]] = _source_and_output  # what --report REPORT.json may not be
    title: Callable[[Call, Report], str] | None = None  # the line above the rendered report
    close: Callable[[Call, Report], int] = no_verdict  # the closing lines and the exit code
    progress: bool = True  # the progress line on a terminal while ``run`` works

    def handle(self, args: argparse.Namespace) -> int:
        return handle(self, args)


@dataclass(frozen=True)
class Thin:
    """A verb whose shape fits no :class:`Verb`: a name, its arguments and its own handler."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handle: Callable[[argparse.Namespace], int]


class Command(Protocol):
    """What the parser needs of a verb, generic or thin."""

    @property
    def name(self) -> str: ...

    @property
    def help(self) -> str: ...

    @property
    def arguments(self) -> Callable[[argparse.ArgumentParser], None]: ...

    def handle(self, args: argparse.Namespace) -> int: ...


def _refuse_jobs(args: argparse.Namespace) -> None:
    if getattr(args, "jobs", 1) != 1:
        raise UnusableInputError(f"--jobs {args.jobs}: applies to many-file runs (FILES_OR_DIRS... -o OUTDIR)")


def _save(verb: Verb, args: argparse.Namespace, report: Report) -> None:
    if not args.report:
        return
    if verb.report == "json":
        write_json(args.report, report.to_dict())
    else:  # report.md, report.json and plots of check and bench
        from normonnx.reports.folder import write_report

        write_report(args.report, **{verb.name: report})


def handle(verb: Verb, args: argparse.Namespace) -> int:
    """Run ``verb`` as the command line asks: its one-file or many-file form, saved, shown, judged."""
    options = verb.options(args)
    pair = verb.files(args)
    if pair is None:
        if verb.many is None:  # files() decides; a verb without a many-file form always names one file
            raise AssertionError(f"{verb.name}: no many-file form")
        return many.run(args, verb.name, verb.many(args, options))
    _refuse_jobs(args)
    source, output = pair
    bar = Progress(label=f"{verb.name} {Path(source).name}") if verb.progress else None
    call = Call(args, options, source, output, bar)
    if verb.report == "json":
        check_report_path(args.report, *verb.protects(call))
    with bar or contextlib.nullcontext():
        report = verb.run(call)
    if verb.report is not None:
        _save(verb, args, report)
    show(args, report, verb.render, verb.title(call, report) if verb.title else None)
    return verb.close(call, report)
