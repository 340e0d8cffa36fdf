"""The built wheel, installed by pip into a fresh environment, runs `normonnx demo` to PASSED outside the
repository: the zoo (the repository's models/ folder) and its checkpoints ship as normonnx.zoo, and a user's
own package named `models` cannot shadow them.

The one cost worth keeping low is the install: pip's cache stays on, constraints.txt pins the CPU build of
torch (which pip finds on local disk where the machine provides it), and nothing is byte-compiled ahead
(--no-compile: the demo compiles only the modules it imports, not the whole of torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the sources, so that the build's own folders (build/, *.egg-info)
    neither land in the shared checkout nor carry stale files into the wheel."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("normonnx", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("normonnx-*.whl")
    return built


def test_the_wheel_holds_the_zoo_as_normonnx_zoo_and_nothing_of_the_repository(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "normonnx/zoo/checkpoints/resnet_bn.safetensors" in names and "normonnx/zoo/checkpoints/vit_ln.json" in names
    assert "normonnx/zoo/__init__.py" in names and "normonnx/zoo/data.py" in names
    assert not any(n.startswith(("tests/", "scripts/", "models/")) for n in names)


def test_an_installed_wheel_runs_the_demo_outside_the_repository(wheel, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, env=env)
    python, normonnx = venv / "bin" / "python", venv / "bin" / "normonnx"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "-c", ROOT / "constraints.txt", f"{wheel}[export]"],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    (elsewhere / "models" / "__init__.py").write_text("raise ImportError('a user package that must not be imported')\n")
    where = subprocess.run(
        [python, "-c", "import normonnx.zoo; print(normonnx.zoo.CHECKPOINTS)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv.resolve()) and (installed / "resnet_bn.safetensors").is_file(), installed

    demo = subprocess.run(
        [normonnx, "demo", "--only", "resnet_bn", "-o", "out", "--runs", "10"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert demo.stdout.strip().splitlines()[-1] == "PASSED"
    (model,) = json.loads((elsewhere / "out" / "report.json").read_text())["models"]
    assert model["name"] == "resnet_bn" and model["passed"]
    assert Path(model["checkpoint"]) == installed / "resnet_bn.safetensors"
    assert (elsewhere / "out" / "report.md").exists()
