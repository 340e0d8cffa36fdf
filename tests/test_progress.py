"""The phase a command is in, on a terminal; a line per phase with its time under -v, and in a log for long ones."""

from __future__ import annotations

import io
import logging

import onnx

from normonnx.reports import progress
from normonnx.reports.progress import Progress, phase
from tests.conftest import conv_bn_model


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_line_shows_the_current_phase():
    stream = _Terminal()
    with Progress(label="fold m.onnx", stream=stream) as bar:
        phase("load")
        phase("original run, 3 input sets")
        assert "fold m.onnx original run, 3 input sets" in bar.line()
    phase("outside any command")  # no progress: nothing, and no error


def test_a_log_gets_a_line_for_each_long_phase_only(monkeypatch):
    stream = io.StringIO()  # not a terminal: a log or a pipe
    monkeypatch.setattr(progress, "LONG_PHASE", 0.0)
    with Progress(label="demo", stream=stream):
        phase("export")
        phase("fold")
    assert stream.getvalue().splitlines() == ["normonnx: demo: export took 0 s", "normonnx: demo: fold took 0 s"]
    monkeypatch.setattr(progress, "LONG_PHASE", 3600.0)
    quiet = io.StringIO()
    with Progress(label="demo", stream=quiet):
        phase("export")
    assert quiet.getvalue() == ""


def test_verbose_fold_names_every_phase_with_its_time(cli, tmp_path, caplog):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), src)
    with caplog.at_level(logging.INFO, logger="normonnx"):
        r = cli("-v", "fold", src, "-o", tmp_path / "o.onnx")
    assert r.code == 0
    said = r.err + caplog.text
    for name in ("load took", "fold took", "stage the output took", "input sets took", "write took"):
        assert name in said, (name, said)
