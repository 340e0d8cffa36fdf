"""Many files at once: ``fold|emit|check DIR_OR_FILES... -o OUTDIR [--jobs N]``.

Each file is one job, run in one of N long-lived isolated worker processes
(``validate.isolation.Worker``). A worker is itself the isolation, so it
verifies in-process: no two extra processes per file, which is what makes a
folder of small models fast. One file's failure -- a parity failure, a
broken file, a bug, even onnxruntime crashing the worker -- becomes that
file's row and never stops the others (a dead worker is replaced). Every
job function is a plain top-level function of picklable arguments returning
a picklable :class:`FileResult`, so the same functions run under a
distributed scheduler (Ray, Dask) unchanged: ``client.map(fold_one, sources,
outputs)``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from normonnx.errors import EXIT_OK, EXIT_UNUSABLE_INPUT, EXIT_VERIFY_FAILED, NormonnxError, first_line
from normonnx.results import BatchReport, FileResult

log = logging.getLogger(__name__)
MODEL_SUFFIX = ".onnx"


def collect(inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """(file, its path relative to the output folder) for every model named or found below a folder.

    Nothing below ``exclude`` (the output folder, which may sit inside an input folder) is taken,
    so a second run never reads the first one's outputs. A path that does not exist is kept, so
    that it gets its own ERROR row.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    below = lambda f: skip is not None and (f.resolve() == skip or skip in f.resolve().parents)
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            # Anything named *.onnx but a folder is a row: a FIFO or a dangling link says why it is unusable.
            files = sorted(f for f in item.rglob(f"*{MODEL_SUFFIX}") if not below(f) and not f.is_dir())
            found.extend((f, f.relative_to(item)) for f in files)
        else:
            found.append((item, Path(item.name)))
    return found


def _timed(source: str, work: Callable[[], FileResult]) -> FileResult:
    """Run one job; any failure becomes this file's result, never an exception."""
    start = time.perf_counter()
    try:
        result = work()
    except NormonnxError as e:
        result = FileResult(source, None, "ERROR", e.exit_code, message=first_line(e).removeprefix(f"{source}: "))
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


def fold_one(
    source: str, output: str, options=None, verify: bool = True, shapes=None, isolated: bool = True
) -> FileResult:
    """``normonnx fold SOURCE -o OUTPUT`` as one row (``isolated=False`` inside a worker process)."""

    def work() -> FileResult:
        from normonnx.pipelines.fold import fold_file

        report = fold_file(source, output, options, verify=verify, shapes=shapes, isolated=isolated)
        verdict, code = _verdict(report.parity, report.output is not None)
        return FileResult(
            source, report.output, verdict, code, report.before.nodes, report.after.nodes, len(report.folded),
            len(report.kept), _worst_error(report.parity),
            message="" if report.output else (report.parity.summary() if report.parity else ""),
        )  # fmt: skip

    return _timed(source, work)


def emit_one(
    source: str,
    output: str,
    opset=None,
    norm_style: str = "auto",
    verify: bool = True,
    shapes=None,
    isolated: bool = True,
    target: str | None = None,
) -> FileResult:
    """``normonnx emit SOURCE -o OUTPUT`` as one row (``isolated=False`` inside a worker process)."""

    def work() -> FileResult:
        from normonnx.pipelines.emit import emit_file

        report = emit_file(
            source, output, opset, norm_style, verify=verify, shapes=shapes, isolated=isolated, target=target
        )
        verdict, code = _verdict(report.parity, report.output is not None)
        return FileResult(
            source, report.output, verdict, code, report.nodes_before, report.nodes_after,
            max_error=_worst_error(report.parity), message=f"{len(report.refused)} kept as they were",
        )  # fmt: skip

    return _timed(source, work)


def half_one(
    source: str,
    output: str,
    dtype: str = "fp16",
    keep_io_types: bool = False,
    inputs=None,
    shapes=None,
    isolated: bool = True,
    target: str | None = None,
    rescale: bool = True,
) -> FileResult:
    """``normonnx half SOURCE -o OUTPUT`` as one row (its onnxruntime runs are isolated either way)."""

    def work() -> FileResult:
        from normonnx.pipelines.half import half_file

        report = half_file(
            source, output, dtype, keep_io_types=keep_io_types, inputs=inputs, shapes=shapes, target=target,
            rescale=rescale,
        )  # fmt: skip
        verdict, code = _verdict(report.parity, report.output is not None)
        return FileResult(
            source, report.output, verdict, code, kept=len(report.kept), max_error=_worst_error(report.parity),
            message=f"{report.activations_half:.0%} of activations, {report.weight_bytes_half:.0%} of weight bytes"
            f" in {dtype}"
            if report.output else (report.parity.summary() if report.parity else ""),
        )  # fmt: skip

    return _timed(source, work)


def quantize_one(source: str, output: str, isolated: bool = True, **options) -> FileResult:
    """``normonnx quantize SOURCE -o OUTPUT`` as one row (its onnxruntime runs are isolated either way, so
    ``isolated``, which the many-file runner passes every job, changes nothing)."""

    def work() -> FileResult:
        from normonnx.pipelines.quantize import quantize_file

        report = quantize_file(source, output, **options)
        verdict, code = _verdict(report.parity, report.output is not None)
        judged = report.output_model
        worst = judged.worst_sqnr() if judged is not None else None
        return FileResult(
            source, report.output, verdict, code, kept=len(report.kept_float),
            message=(f"SQNR {worst:.1f} dB ({report.written})" if worst is not None else "") if report.output
            else (report.parity.summary() if report.parity else ""),
        )  # fmt: skip

    return _timed(source, work)


def check_one(
    candidate: str, reference: str, report_path: str | None = None, isolated: bool = True, **options
) -> FileResult:
    """``normonnx check CANDIDATE --against REFERENCE`` as one row; its JSON report goes to ``report_path``."""

    def work() -> FileResult:
        from normonnx.pipelines.check import check
        from normonnx.reports.folder import write_document

        report = check(candidate, against=reference, isolated=isolated, **options)
        if report_path:
            write_document(report_path, report)
        code = EXIT_OK if report.passed else EXIT_VERIFY_FAILED
        worst = report.parity.worst()
        return FileResult(
            candidate, report_path, "PASSED" if report.passed else "FAILED", code,
            max_error=_worst_error(report.parity), message=worst.reason if worst and not report.passed else "",
        )  # fmt: skip

    return _timed(candidate, work)


def run_many(
    command: str,
    jobs: Iterable[tuple[Callable[..., FileResult], tuple, dict]],
    output_dir: str | os.PathLike,
    workers: int = 1,
    on_done: Callable[[FileResult], None] | None = None,
    timeout: float | None = None,
) -> BatchReport:
    """Every job (function, args, kwargs) in one of ``workers`` isolated worker processes.

    The jobs' functions get ``isolated=False`` (the worker is the isolation); a job whose
    worker dies or hangs past ``timeout`` becomes an ERROR row and the worker is replaced.
    """
    from normonnx.isolation import DEFAULT_TIMEOUT, IsolatedRunError, Worker

    start = time.perf_counter()
    jobs = list(jobs)
    report = BatchReport(command, str(output_dir), workers)
    done: dict[int, FileResult] = {}
    pending: queue.Queue[int] = queue.Queue()
    for k in range(len(jobs)):
        pending.put(k)
    lock = threading.Lock()

    count = max(1, min(workers, len(jobs)))
    # Workers side by side share the cores; one worker keeps onnxruntime's default.
    threads = max(1, (os.cpu_count() or 1) // count) if count > 1 else None

    def serve() -> None:
        worker = Worker(session_threads=threads)
        try:
            while True:
                try:
                    k = pending.get_nowait()
                except queue.Empty:
                    return
                fn, args, kwargs = jobs[k]
                source = str(args[0]) if args else "?"
                try:
                    result = worker.call(
                        fn, *args, label=source, timeout=timeout or DEFAULT_TIMEOUT, **kwargs, isolated=False
                    )
                except IsolatedRunError as e:
                    result = FileResult(source, None, "ERROR", EXIT_UNUSABLE_INPUT, message=first_line(e))
                except Exception as e:  # the worker could not even start (permissions, no interpreter)
                    message = f"no worker process: {type(e).__name__}: {first_line(e)}"
                    result = FileResult(source, None, "ERROR", EXIT_UNUSABLE_INPUT, message=message)
                log.info("%s: %s", result.source, result.verdict)
                with lock:
                    done[k] = result
                    if on_done:
                        on_done(result)
        finally:
            worker.close()

    servers = [threading.Thread(target=serve, daemon=True) for _ in range(count)]
    for t in servers:
        t.start()
    for t in servers:
        t.join()
    report.results = [done[k] for k in range(len(jobs))]
    report.seconds = time.perf_counter() - start
    return report
