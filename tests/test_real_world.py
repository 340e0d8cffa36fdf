"""The real-world corpus (``python scripts/fetch_corpus.py``), when present: every command, no options.

Files from other exporters (paddle2onnx, tf2onnx, ultralytics, old model-zoo files, silero's
recurrent models with If bodies, onnxruntime-optimized transformers, onnx's backend tests):
``fold`` finishes on every one and never breaks parity; ``emit``, ``check`` and ``inspect``
never end in an internal error (exit 3) or a traceback; ``half --keep-io-types`` writes every one,
verified. Skipped when the corpus is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli_process

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def _files() -> list[Path]:
    manifest = CORPUS / "manifest.json"
    if manifest.is_file():
        return [CORPUS / e["file"] for e in json.loads(manifest.read_text()) if (CORPUS / e["file"]).is_file()]
    return sorted(CORPUS.rglob("*.onnx")) if CORPUS.is_dir() else []


FILES = _files()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FILES, reason="no corpus: python scripts/fetch_corpus.py builds it"),
]


@pytest.mark.parametrize("src", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_every_command_works_on_a_file_nobody_here_wrote(src: Path, tmp_path: Path):
    folded = tmp_path / "folded.onnx"
    fold = run_cli_process("fold", src, "-o", folded)
    assert fold.code == 0 and folded.is_file(), fold.err
    assert "PASSED" in fold.out
    for args in (
        ("emit", src, "-o", tmp_path / "emitted.onnx"),
        ("inspect", src),
    ):
        result = run_cli_process(*args)
        assert result.code in (0, 1, 2) and "Traceback" not in result.err, (args[0], result.err)
        assert result.code == 0 or result.err.count("\n") == 1, (args[0], result.err)
    assert run_cli_process("check", folded, "--against", src).code == 0
    # Half precision with float32 inputs and outputs: written and verified half-faithfully on every file (the
    # search keeps in float32 what must be), and nothing but normonnx's own lines on stderr.
    half = run_cli_process("half", src, "-o", tmp_path / "half.onnx", "--keep-io-types")
    assert half.code == 0 and (tmp_path / "half.onnx").is_file(), half.out[-2000:]
    assert all(line.startswith("normonnx") for line in half.err.splitlines()), half.err
