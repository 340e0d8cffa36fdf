"""Benchmark scripts replace committed results only with complete ones, refuse to run without the peers
their results name, and say how long they take (scripts/benchmark_files.py, used by every bench_*.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import benchmark_files  # noqa: E402


def test_an_interrupted_write_leaves_the_committed_result_as_it_was(tmp_path):
    committed = tmp_path / "result.md"
    committed.write_text("66 files")

    def interrupted(tmp: Path) -> None:
        tmp.write_text("21 fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        benchmark_files.write_with(committed, interrupted)
    assert committed.read_text() == "66 files" and [p.name for p in tmp_path.iterdir()] == ["result.md"]
    benchmark_files.write(committed, "67 files")
    assert committed.read_text() == "67 files"


def test_a_missing_peer_stops_the_run_unless_allowed(capsys):
    assert benchmark_files.require(["json"], allow_missing=False) == []
    with pytest.raises(SystemExit) as e:
        benchmark_files.require(["no_such_peer_xyz"], allow_missing=False)
    assert e.value.code == 2 and "no_such_peer_xyz" in capsys.readouterr().err
    assert benchmark_files.require(["no_such_peer_xyz"], allow_missing=True) == ["no_such_peer_xyz"]
    assert "no_such_peer_xyz" in benchmark_files.missing_note(["no_such_peer_xyz"])


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("bench_*.py")), ids=lambda p: p.name)
def test_every_benchmark_script_writes_through_the_helper_and_says_its_duration(script):
    tree = ast.parse(script.read_text())
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}  # fmt: skip
    assert ("write_text" not in calls and "savefig" not in calls) or "write_with" in calls, script.name
    assert "start" in calls, f"{script.name} does not print its expected duration"
    direct = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr == "write_text"]  # fmt: skip
    assert not direct, f"{script.name} writes a result directly (line {direct[0].lineno})"
