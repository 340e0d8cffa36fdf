"""The built wheel, not the repository, runs `normonnx demo` to PASSED: the zoo and its checkpoints are
package data, and a user's own package named `models` cannot shadow them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
pytest.importorskip("torch")


def test_an_installed_wheel_runs_the_demo_outside_the_repository(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "wheel"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("normonnx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "normonnx/zoo/checkpoints/resnet_bn.safetensors" in names and "normonnx/zoo/checkpoints/vit_ln.json" in names
    assert not any(n.startswith(("tests/", "scripts/", "models/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    (elsewhere / "models" / "__init__.py").write_text("raise ImportError('a user package that must not be imported')\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import normonnx.zoo; print(normonnx.zoo.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout
    demo = subprocess.run(
        [sys.executable, "-m", "normonnx", "demo", "--only", "resnet_bn,vit_ln", "-o", "out", "--runs", "10"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert demo.stdout.strip().splitlines()[-1] == "PASSED"
    assert (elsewhere / "out" / "report.md").exists()
