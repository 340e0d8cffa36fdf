"""Many files at once: ``fold|emit|check DIR_OR_FILES... -o OUTDIR [--jobs N]``.

Each file is one job; jobs run in a process pool (spawned, so nothing of
the parent's state leaks into a worker), and one file's failure -- a
parity failure, a broken file, even a bug -- becomes that file's row and
never stops the others. Every job function is a plain top-level function
of picklable arguments returning a picklable :class:`FileResult`, so the
same functions run under a distributed scheduler (Ray, Dask) unchanged:
``client.map(fold_one, sources, outputs)``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_VERIFY_FAILED, NormonnxError, first_line
from normonnx.reports.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)
MODEL_SUFFIX = ".onnx"


@dataclass
class FileResult:
    """One file of a many-file run: what happened to it, in a row of the summary."""

    source: str
    output: str | None
    verdict: str  # PASSED, FAILED (parity), ERROR (unusable input), DONE (not verified)
    exit_code: int
    nodes_before: int | None = None
    nodes_after: int | None = None
    folded: int | None = None
    kept: int | None = None
    max_error: float | None = None
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BatchReport:
    command: str
    output_dir: str
    jobs: int
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file passed; 2 when any was unusable; else 1 when any failed its check."""
        codes = {r.exit_code for r in self.results}
        if EXIT_UNUSABLE_INPUT in codes:
            return EXIT_UNUSABLE_INPUT
        return EXIT_VERIFY_FAILED if EXIT_VERIFY_FAILED in codes else EXIT_OK

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "command": self.command,
            "output_dir": self.output_dir,
            "jobs": self.jobs,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "files": [r.to_dict() for r in self.results],
        }


def collect(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(file, its path relative to the output folder) for every model named or found below a folder.

    A path that does not exist is kept, so that it gets its own ERROR row.
    """
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend((f, f.relative_to(item)) for f in sorted(item.rglob(f"*{MODEL_SUFFIX}")) if f.is_file())
        else:
            found.append((item, Path(item.name)))
    return found


def _timed(source: str, output: str | None, work: Callable[[], FileResult]) -> FileResult:
    """Run one job; any failure becomes this file's result, never an exception."""
    start = time.perf_counter()
    try:
        result = work()
    except NormonnxError as e:
        result = FileResult(source, None, "ERROR", e.exit_code, message=first_line(e))
    except Exception as e:  # a bug or an unforeseen input: this file's row says so, the others go on
        result = FileResult(source, None, "ERROR", EXIT_UNUSABLE_INPUT, message=f"internal error: {first_line(e)}")
    result.seconds = time.perf_counter() - start
    return result


def _worst_error(parity) -> float | None:
    worst = parity.worst() if parity is not None else None
    return None if worst is None else worst.max_abs


def _verdict(parity, written: bool) -> tuple[str, int]:
    if not written:
        return "FAILED", EXIT_VERIFY_FAILED
    return ("PASSED" if parity is not None else "DONE"), EXIT_OK


def fold_one(source: str, output: str, options=None, verify: bool = True, shapes=None) -> FileResult:
    """``normonnx fold SOURCE -o OUTPUT`` as one row."""

    def work() -> FileResult:
        from normonnx.pipelines.fold import fold_file

        report = fold_file(source, output, options, verify=verify, shapes=shapes)
        verdict, code = _verdict(report.parity, report.output is not None)
        return FileResult(
            source, report.output, verdict, code, report.before.nodes, report.after.nodes, len(report.folded),
            len(report.kept), _worst_error(report.parity),
            message="" if report.output else (report.parity.summary() if report.parity else ""),
        )  # fmt: skip

    return _timed(source, output, work)


def emit_one(source: str, output: str, opset=None, style: str = "auto", verify: bool = True, shapes=None) -> FileResult:
    """``normonnx emit SOURCE -o OUTPUT`` as one row."""

    def work() -> FileResult:
        from normonnx.pipelines.emit import emit_file

        report = emit_file(source, output, opset, style, verify=verify, shapes=shapes)
        verdict, code = _verdict(report.parity, report.output is not None)
        return FileResult(
            source, report.output, verdict, code, report.nodes_before, report.nodes_after,
            max_error=_worst_error(report.parity), message=f"{len(report.refused)} kept as they were",
        )  # fmt: skip

    return _timed(source, output, work)


def check_one(candidate: str, reference: str, report_path: str | None = None, **options) -> FileResult:
    """``normonnx check CANDIDATE --against REFERENCE`` as one row; its JSON report goes to ``report_path``."""

    def work() -> FileResult:
        from normonnx.fileio import write_json_atomic
        from normonnx.validate.check import check

        report = check(candidate, against=reference, **options)
        if report_path:
            write_json_atomic(report_path, report.to_dict())
        code = EXIT_OK if report.passed else EXIT_VERIFY_FAILED
        worst = report.parity.worst()
        return FileResult(
            candidate, report_path, "PASSED" if report.passed else "FAILED", code,
            max_error=_worst_error(report.parity), message=worst.reason if worst and not report.passed else "",
        )  # fmt: skip

    return _timed(candidate, report_path, work)


def run_many(
    command: str,
    jobs: Iterable[tuple[Callable[..., FileResult], tuple, dict]],
    output_dir: str | os.PathLike,
    workers: int = 1,
    on_done: Callable[[FileResult], None] | None = None,
) -> BatchReport:
    """Every job (function, args, kwargs); ``workers`` > 1 runs them in a pool of spawned processes."""
    start = time.perf_counter()
    jobs = list(jobs)
    report = BatchReport(command, str(output_dir), workers)
    done: dict[int, FileResult] = {}
    if workers <= 1 or len(jobs) <= 1:
        for k, (fn, args, kwargs) in enumerate(jobs):
            done[k] = fn(*args, **kwargs)
            log.info("%s: %s", done[k].source, done[k].verdict)
            if on_done:
                on_done(done[k])
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(fn, *args, **kwargs): k for k, (fn, args, kwargs) in enumerate(jobs)}
            for future in as_completed(futures):
                k = futures[future]
                try:
                    done[k] = future.result()
                except Exception as e:  # the worker itself died (killed, out of memory)
                    source = str(jobs[k][1][0]) if jobs[k][1] else "?"
                    done[k] = FileResult(source, None, "ERROR", EXIT_UNUSABLE_INPUT, message=f"worker died: {e!r}")
                log.info("%s: %s", done[k].source, done[k].verdict)
                if on_done:
                    on_done(done[k])
    report.results = [done[k] for k in range(len(jobs))]
    report.seconds = time.perf_counter() - start
    return report
