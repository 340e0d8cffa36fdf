"""Shared fixtures: small saved models and a CLI runner that captures everything.

The fast tier (``-m "not slow"``) runs without torch: tests that need it are
marked ``requires_torch`` (or skip their module with ``pytest.importorskip``).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from tests.builders import GraphBuilder

requires_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed (pip install 'normonnx[export]')"
)
# Why a test skips when an optional package is missing: the package and the extra that installs it.
NO_MATPLOTLIB = "matplotlib is not installed: plots need the report extra (pip install 'normonnx[report]')"
NO_SYMPY_FOR_TORCH = "sympy is not installed: torch's exporter needs it (pip install 'normonnx[export]')"
NO_SYMPY_FOR_ORT = "sympy is not installed: onnxruntime.transformers needs it (pip install 'normonnx[export]' has it)"


def skip_without(module: str, reason: str) -> ModuleType:
    """``module``, imported, or a skip with ``reason``.

    Any ImportError counts as absent, as normonnx's own optional imports treat it: a package that is there
    but cannot be imported is no more usable than a missing one.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(reason)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``normonnx ARGS`` in-process; return exit code, stdout and stderr."""
    from normonnx.cli import main

    def invoke(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def run_cli_process(*args: str, cwd: Path | None = None, timeout: float = 600) -> CliResult:
    """Run ``python -m normonnx ARGS`` in a fresh process (what a user's shell does)."""
    proc = subprocess.run(
        [sys.executable, "-m", "normonnx", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def conv_bn_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> BN -> Conv(no pad) -> Gemm-free tail: three folds."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("input", ["batch", 3, 16, 16])
    y = b.conv(x, 3, 8, rng, pads=[1, 1, 1, 1], name="conv1")
    y = b.batchnorm(y, 8, rng, name="bn1")
    y = b.node("Relu", [y], name="relu")
    y = b.batchnorm(y, 8, rng, name="bn2")
    y = b.conv(y, 8, 4, rng, k=1, name="conv2")
    b.output(y, shape=["batch", 4, 16, 16])
    m = b.model()
    m.producer_name = "normonnx-tests"
    meta = m.metadata_props.add()
    meta.key, meta.value = "author", "tests"
    return m


@pytest.fixture
def conv_bn_path(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(), path)
    return path
