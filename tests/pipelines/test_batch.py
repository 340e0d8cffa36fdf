"""The many-file machinery: picklable rows (so a cluster scheduler can run them), the worker that
survives a crash, and the progress line that fits the terminal."""

from __future__ import annotations

import io
import os
import pickle
import signal

import onnx

from normonnx.pipelines import batch
from normonnx.reports.progress import Progress
from normonnx.results import FileResult
from tests.conftest import conv_bn_model


def test_rows_and_reports_pickle(tmp_path):
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    row = batch.fold_one(str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"))
    assert row.verdict == "PASSED" and row.folded == 2 and row.nodes_after == 3
    assert pickle.loads(pickle.dumps(row)) == row
    from normonnx.pipelines.fold import fold

    _, report = fold(tmp_path / "m.onnx", verify=True)
    again = pickle.loads(pickle.dumps(report))
    assert again.to_dict() == report.to_dict()


def _die() -> None:  # a job that kills its worker, as a segfault in a kernel would
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_or_fold(source: str, output: str, isolated: bool = True) -> FileResult:
    if source.endswith("crash.onnx"):
        _die()
    return batch.fold_one(source, output, isolated=isolated)


def test_a_job_that_kills_its_worker_is_one_error_row_and_the_rest_go_on(tmp_path):
    for name in ("a.onnx", "crash.onnx", "b.onnx"):
        onnx.save(conv_bn_model(), tmp_path / name)
    jobs = [
        (_crash_or_fold, (str(tmp_path / n), str(tmp_path / f"out_{n}")), {})
        for n in ("a.onnx", "crash.onnx", "b.onnx")
    ]
    report = batch.run_many("fold", jobs, tmp_path, workers=1)
    assert [r.verdict for r in report.results] == ["PASSED", "ERROR", "PASSED"]
    assert "SIGKILL" in report.results[1].message and report.exit_code == 2
    assert (tmp_path / "out_b.onnx").exists() and not (tmp_path / "out_crash.onnx").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_never_exceeds_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = _Terminal()
    with Progress(10, "fold", stream=stream) as bar:
        bar.update(3, "a_model_with_a_really_long_name_that_would_wrap.onnx")
    drawn = [chunk for chunk in stream.getvalue().split("\r") if chunk.strip()]
    assert drawn and all(len(chunk) <= 39 for chunk in drawn)
    assert any("3/10" in chunk for chunk in drawn)


def test_progress_is_silent_off_a_terminal():
    stream = io.StringIO()
    with Progress(3, "fold", stream=stream) as bar:
        bar.advance("x")
    assert stream.getvalue() == ""
