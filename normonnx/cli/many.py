"""One file or many: which form a command line asks for, and the many-file forms'
``FILES_OR_DIRS... -o OUTDIR [--jobs N]`` jobs.

Models found below a folder keep their relative paths under OUTDIR; the
summary table goes to the terminal (or JSON with --json) and to
OUTDIR/summary.json; the exit code is the worst file's.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from normonnx.cli.output import out, show
from normonnx.errors import OutputError, UnusableInputError
from normonnx.pipelines import batch
from normonnx.reports.progress import Progress
from normonnx.results import FileResult

Job = tuple[Callable[..., FileResult], tuple, dict[str, Any]]  # (function, args, kwargs) for batch.run_many


def in_out(verb: str) -> Callable[[argparse.Namespace], tuple[str, str] | None]:
    """The forms of a verb that writes a model: ``IN -o OUT`` or ``IN OUT``, or ``FILES_OR_DIRS... -o OUTDIR``."""

    def files(args: argparse.Namespace) -> tuple[str, str] | None:
        """(input, output) of a one-file run; None for a many-file run."""
        inputs = args.inputs
        if args.output is None:
            if len(inputs) == 2 and not Path(inputs[0]).is_dir():
                if Path(inputs[1]).exists():  # two existing files: a forgotten -o OUTDIR must not cost the second
                    raise UnusableInputError(
                        f"{inputs[1]}: exists; to replace it pass -o {inputs[1]}, to {verb} both files pass -o OUTDIR"
                    )
                return inputs[0], inputs[1]  # `normonnx fold IN OUT`, as onnxsim users type it
            raise UnusableInputError(
                f"no output given: normonnx {verb} IN.onnx -o OUT.onnx (or IN.onnx OUT.onnx),"
                " or FILES_OR_DIRS... -o OUTDIR"
            )
        names_folder = Path(args.output).is_dir() or args.output.endswith(("/", os.sep))
        if len(inputs) == 1 and not Path(inputs[0]).is_dir() and not names_folder:
            return inputs[0], args.output
        if Path(args.output).suffix == ".onnx" and not Path(args.output).is_dir():
            if len(inputs) == 1:
                raise UnusableInputError(
                    f"{inputs[0]}: is a directory; to {verb} every model in it,"
                    " pass -o an output folder, not a .onnx file"
                )
            raise UnusableInputError(f"-o {args.output}: {len(inputs)} inputs need an output folder, not a .onnx file")
        return None

    return files


def _output_dir(args: argparse.Namespace) -> Path:
    if not args.output:
        raise UnusableInputError("many files need an output folder: -o OUTDIR")
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; many files need -o OUTDIR")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot make the output folder ({e.strerror})") from None
    return folder


def _sources(args_inputs: list[str], folder: Path) -> list[tuple[Path, Path]]:
    found = batch.collect(args_inputs, exclude=folder)
    if not found:
        raise UnusableInputError(f"no {batch.MODEL_SUFFIX} file in {', '.join(args_inputs)}")
    return found


def run(args: argparse.Namespace, command: str, jobs: list[Job]) -> int:
    """Every job in ``--jobs`` workers; the summary shown and written to OUTDIR/summary.json."""
    from normonnx.reports.folder import write_summary
    from normonnx.reports.text import render_batch

    folder = Path(args.output)
    with Progress(len(jobs), command) as bar:
        report = batch.run_many(command, jobs, folder, args.jobs, on_done=lambda r: bar.advance(Path(r.source).name))
    write_summary(folder, report)
    show(args, report, render_batch)
    if not args.json:
        out(f"summary: {folder / 'summary.json'}")
        counts = report.counts()
        out(", ".join(f"{counts[k]} {k}" for k in sorted(counts)))
    return report.exit_code


def _targets(sources: list[tuple[Path, Path]], folder: Path) -> list[tuple[str, str]]:
    """(input, output) pairs; two inputs that would land on one output are refused up front."""
    pairs, seen = [], {}
    for src, rel in sources:
        dst = folder / rel
        if dst in seen:
            raise UnusableInputError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
        pairs.append((str(src), str(dst)))
    return pairs


def rewrites(job: Callable[..., FileResult]) -> Callable[[argparse.Namespace, dict[str, Any]], list[Job]]:
    """The many-file form of a verb that writes a model per file: ``job(src, dst, **options)``, each input
    written to its relative path under OUTDIR."""

    def jobs(args: argparse.Namespace, options: dict[str, Any]) -> list[Job]:
        if args.report:
            raise UnusableInputError(
                f"--report {args.report}: is for one file; many-file runs write OUTDIR/summary.json"
            )
        folder = _output_dir(args)
        pairs = _targets(_sources(args.inputs, folder), folder)
        for _, dst in pairs:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
        return [(job, (src, dst), options) for src, dst in pairs]

    return jobs


def checks(args: argparse.Namespace, options: dict[str, Any]) -> list[Job]:
    """Each candidate against the file of the same relative path under --against DIR (or one --against file)."""
    if args.torch:
        raise UnusableInputError("--torch: many-file checks take --against REF.onnx or --against REF_DIR")
    if args.report or args.save_inputs or args.save_outputs:
        raise UnusableInputError("--report, --save-inputs and --save-outputs are for one file; use -o OUTDIR")
    against = Path(args.against)
    if not against.exists():
        raise UnusableInputError(f"--against {against}: no such file or folder")
    folder = _output_dir(args)
    jobs: list[Job] = []
    for src, rel in _sources(args.models, folder):
        ref = against / rel if against.is_dir() else against
        report = folder / rel.with_suffix(".check.json")
        report.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((batch.check_one, (str(src), str(ref), str(report)), options))
    return jobs
