"""A run killed at any moment leaves the input and any previous output intact; its leftovers are
cleaned by the next run, and only its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from tests.builders import GraphBuilder
from tests.helpers import digest

pytestmark = pytest.mark.slow


def _model(blocks: int = 60, channels: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", [1, channels, 8, 8])
    for i in range(blocks):
        x = b.node(
            "Relu", [b.batchnorm(b.conv(x, channels, channels, rng, pads=[1, 1, 1, 1], name=f"c{i}"), channels, rng)]
        )
    b.output(x, shape=[1, channels, 8, 8])
    return b.model()


def test_killed_runs_leave_input_and_previous_output_intact(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_model(), src)
    out.write_bytes(b"previous output")
    (tmp_path / ".someone-elses.tmp").write_bytes(b"not ours")
    before = digest(src)
    cmd = [sys.executable, "-m", "normonnx", "fold", str(src), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    full = time.perf_counter() - start
    out.write_bytes(b"previous output")
    landed = 0
    for fraction in (0.2, 0.45, 0.7, 0.85, 0.95):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += proc.returncode == -signal.SIGKILL  # killed mid-run, not already finished
        assert digest(src) == before
        content = out.read_bytes()
        assert content == b"previous output" or onnx.load_from_string(content).graph.node  # old, or complete
        out.write_bytes(b"previous output")
    assert landed >= 3, f"only {landed} of 5 kills hit a running fold; the test proved nothing"
    subprocess.run(cmd, check=True, capture_output=True)
    assert onnx.load(out).graph.node[0].op_type == "Conv"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [".someone-elses.tmp"]


def test_ctrl_c_at_any_moment_is_one_line(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C sends it, while the verbs are being imported,
    while the fold runs and while the isolated verification runs: one line on stderr, exit 130."""
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(_model(), src)
    cmd = [sys.executable, "-m", "normonnx", "fold", str(src), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    full = time.perf_counter() - start
    out.unlink()
    landed = 0
    for delay in (0.15, 0.4, full * 0.5, full * 0.8):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue  # it had finished: nothing to say
        landed += 1
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 130 and lines == ["normonnx: interrupted"], (delay, proc.returncode, lines)
        assert not out.exists()
    assert landed >= 3, f"only {landed} of 4 interrupts hit a running fold"
