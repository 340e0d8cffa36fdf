"""The built wheel, installed by pip into a fresh environment, runs `normonnx demo` to PASSED outside the
repository: the zoo (the repository's models/ folder) and its checkpoints ship as normonnx.zoo, and a user's
own package named `models` cannot shadow them.

The wheel is built and installed by the README's own install lines, verbatim. The one cost worth keeping low
is the install: pip's cache stays on, constraints.txt pins the CPU build of torch (which pip finds on local
disk where the machine provides it), and nothing is byte-compiled ahead (PIP_NO_COMPILE: the demo compiles
only the modules it imports, not the whole of torch).
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


def _readme_install_lines() -> list[str]:
    """The bash block under the README's "Installing elsewhere" heading, line by line."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Installing elsewhere") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    return [line for line in block.strip().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the fresh environment it went into): the README's install lines, verbatim, run with that
    environment's pip first on PATH, in a copy of the sources (the build's own folders stay out of the
    checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, env=env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["PIP_NO_COMPILE"] = "1"  # the demo compiles only what it imports, not the whole of torch
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("normonnx", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for line in _readme_install_lines():
        run = subprocess.run(["bash", "-c", line], cwd=src, env=env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, f"{line}: {run.stderr[-3000:]}"
    (built,) = (src / "dist").glob("normonnx-*.whl")
    return built, venv


@pytest.fixture(scope="module")
def wheel(installed) -> Path:
    return installed[0]


def test_the_wheel_holds_the_zoo_as_normonnx_zoo_and_nothing_of_the_repository(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "normonnx/zoo/checkpoints/resnet_bn.safetensors" in names and "normonnx/zoo/checkpoints/vit_ln.json" in names
    assert "normonnx/zoo/__init__.py" in names and "normonnx/zoo/data.py" in names
    assert not any(n.startswith(("tests/", "scripts/", "models/")) for n in names)


def test_an_installed_wheel_runs_the_demo_outside_the_repository(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv = installed[1]
    python, normonnx = venv / "bin" / "python", venv / "bin" / "normonnx"
    torch = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], env=env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert torch.stdout.strip().endswith("+cpu"), torch.stdout  # the constraints file's CPU build, not CUDA's

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


def test_the_readme_python_examples_run_from_any_folder(installed, tmp_path):
    """Each README ```python example of normonnx, run by the installed package in a folder of its own that
    holds a model.onnx and, to be hostile, a folder named normonnx (an editable install's finder loses to
    such a folder; an installed package does not)."""
    import re

    import onnx

    from tests.conftest import conv_bn_model

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    python = installed[1] / "bin" / "python"
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("import normonnx")]
    assert blocks
    onnx.save(conv_bn_model(), tmp_path / "model.onnx")
    (tmp_path / "normonnx").mkdir()
    for block in blocks:
        run = subprocess.run([python, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
