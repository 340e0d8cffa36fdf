"""The README's commands and the demo, run as a user runs them, so the docs cannot rot."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli_process

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.slow


def test_readme_names_the_two_commands_and_they_exist():
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert (ROOT / "scripts/demo.sh").read_text().rstrip().endswith('exec .venv/bin/normonnx demo "$@"')
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()


def _console_commands() -> list[str]:
    """Every ``$ normonnx ...`` and ``$ python -c ...`` line of the README's console blocks, in order."""
    blocks = re.findall(r"```console\n(.*?)```", README, re.S)
    prefixes = ("$ normonnx ", "$ python -c ")
    return [line[2:].strip() for b in blocks for line in b.splitlines() if line.startswith(prefixes)]


def test_every_console_example_in_the_readme_runs(tmp_path):
    (tmp_path / "models").symlink_to(ROOT / "models")  # the commands name the zoo's checkpoints by repo path
    (tmp_path / "out").mkdir()
    commands = _console_commands()
    assert len(commands) >= 8
    for line in commands:
        args = shlex.split(line)[1:]
        if args[0] == "convert" and "mypkg" in line:
            continue  # the placeholder for the user's own model; the zoo stands in below
        if line.startswith("python "):
            done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            continue
        result = run_cli_process(*args, cwd=tmp_path)
        assert result.code == 0, (line, result.err, result.out[-2000:])
        assert "Traceback" not in result.err
    result = run_cli_process(
        "convert",
        "normonnx.zoo:vit_ln",
        "--checkpoint",
        "models/checkpoints/vit_ln.safetensors",
        "-o",
        "out/vit",
        "--runs",
        "20",
        cwd=tmp_path,
    )
    assert result.code == 0 and result.out.strip().endswith("PASSED"), result.err


def test_the_demo_converts_the_whole_zoo(tmp_path):
    """`normonnx demo`, what `bash scripts/demo.sh` runs after its set-up, from a folder that is not the repository."""
    result = run_cli_process("demo", "-o", "out/demo", "--runs", "30", cwd=tmp_path)
    assert result.code == 0, result.err[-3000:]
    assert result.out.strip().splitlines()[-1] == "PASSED"
    report = json.loads((tmp_path / "out/demo/report.json").read_text())
    assert len(report["models"]) == 10 and not report["failures"]
    for m in report["models"]:
        assert m["passed"] and m["top1_agreement"] == 1.0, m["name"]
        assert m["parity"]["passed"] and all(o["judged_by"] == "gate" for o in m["parity"]["outputs"]), m["name"]
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["frozen_backbone"]["folded_by_normonnx"] == 9 and by_name["frozen_backbone"]["left_in_model"] == 0
    assert by_name["preact_cnn"]["folded_by_normonnx"] == 2
    for name in ("resnet_bn", "frozen_backbone", "weightnorm_cnn"):
        assert by_name[name]["left_in_model"] == 0
    assert (tmp_path / "out/demo/summary.png").exists() and (tmp_path / "out/demo/report.md").exists()
