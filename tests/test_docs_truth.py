"""What the README and --help say about gates and exit codes, checked against the code that decides them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from normonnx.validate import parity

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _row(first_cell: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| {first_cell}"))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?e-\d+", text)]


def test_the_gate_table_states_the_gates_the_code_applies():
    assert _numbers(_row("fp32 |")) == [parity.FP32_GATE.atol]
    assert parity.FP32_GATE.atol == parity.FP32_GATE.rtol
    assert _numbers(_row("fp16/bf16 against an fp32 reference, judged half-faithfully")) == [parity.FAITHFUL_GATE.atol]
    assert _numbers(_row("fp16 against an fp32 reference on onnxruntime")) == [parity.FP16_GATE.atol]
    assert f">= {parity.INT8_MIN_SQNR:g} dB" in _row("int8")


def test_check_help_states_the_same_gates(cli):
    r = cli("check", "--help")
    text = " ".join(r.out.split())
    stated = _numbers(text)
    for gate in (parity.FP32_GATE.atol, parity.FAITHFUL_GATE.atol, parity.FP16_GATE.atol):
        assert gate in stated, (gate, stated)
    assert f"SQNR >= {parity.INT8_MIN_SQNR:g} dB" in text
    assert "onnxruntime execution provider" in text  # --provider has help


def test_both_prepared_gpu_scripts_skip_with_exit_0_without_a_gpu():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return  # a GPU is here: the scripts run for real (tests/validate/test_gpu.py)
    r = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", "/tmp/normonnx-gpu-check-test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "skipped" in r.stdout, r.stdout + r.stderr
