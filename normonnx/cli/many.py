"""The many-file forms: ``fold|emit|check FILES_OR_DIRS... -o OUTDIR [--jobs N]``.

Models found below a folder keep their relative paths under OUTDIR; the
summary table goes to the terminal (or JSON with --json) and to
OUTDIR/summary.json; the exit code is the worst file's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from normonnx.cli.output import out, show
from normonnx.errors import OutputError, UnusableInputError
from normonnx.pipelines import batch
from normonnx.reports.progress import Progress


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


def _run(args: argparse.Namespace, command: str, jobs: list, folder: Path) -> int:
    from normonnx.fileio import write_json_atomic
    from normonnx.reports.text import render_batch

    with Progress(len(jobs), command) as bar:
        report = batch.run_many(command, jobs, folder, args.jobs, on_done=lambda r: bar.advance(Path(r.source).name))
    write_json_atomic(folder / "summary.json", report.to_dict())
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


def rewrite_many(args: argparse.Namespace, command: str, job, *options) -> int:
    """fold or emit over many files: ``job(src, dst, *options)`` writes each input to its relative path under OUTDIR."""
    if args.report:
        raise UnusableInputError(f"--report {args.report}: is for one file; many-file runs write OUTDIR/summary.json")
    folder = _output_dir(args)
    pairs = _targets(_sources(args.inputs, folder), folder)
    for _, dst in pairs:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    return _run(args, command, [(job, (src, dst, *options), {}) for src, dst in pairs], folder)


def check_many(args: argparse.Namespace, options: dict) -> int:
    """Each candidate against the file of the same relative path under --against DIR (or one --against file)."""
    if args.torch:
        raise UnusableInputError("--torch: many-file checks take --against REF.onnx or --against REF_DIR")
    if args.report or args.save_inputs or args.save_outputs:
        raise UnusableInputError("--report, --save-inputs and --save-outputs are for one file; use -o OUTDIR")
    against = Path(args.against)
    if not against.exists():
        raise UnusableInputError(f"--against {against}: no such file or folder")
    folder = _output_dir(args)
    jobs = []
    for src, rel in _sources(args.models, folder):
        ref = against / rel if against.is_dir() else against
        report = folder / rel.with_suffix(".check.json")
        report.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((batch.check_one, (str(src), str(ref), str(report)), options))
    return _run(args, "check", jobs, folder)
