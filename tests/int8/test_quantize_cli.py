"""``normonnx quantize`` on the command line: many files into a folder, and ``convert --precision int8``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import conv_bn_model, requires_torch, run_cli_process

CHECKPOINTS = Path(__file__).resolve().parents[2] / "models" / "checkpoints"


def test_many_files_into_a_folder(cli, tmp_path):
    src = tmp_path / "models"
    src.mkdir()
    for k in range(2):
        onnx.save(conv_bn_model(k), src / f"m{k}.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype("f4"))
    r = cli("quantize", src, "-o", tmp_path / "out", "--data", tmp_path / "calib.npz", "--no-bench", "--json")
    assert r.code == 0, r.err
    rows = {row["source"].rsplit("/", 1)[-1]: row for row in json.loads(r.out)["files"]}
    assert {k: v["verdict"] for k, v in rows.items()} == {"m0.onnx": "PASSED", "m1.onnx": "PASSED"}
    for name in rows:
        ops = [n.op_type for n in onnx.load(tmp_path / "out" / name).graph.node]
        assert "QuantizeLinear" in ops and "BatchNormalization" not in ops
        assert "SQNR" in rows[name]["message"]


@pytest.mark.slow
@requires_torch
def test_convert_writes_a_proven_int8_model(tmp_path):
    from normonnx.zoo.data import heldout_set

    np.savez(tmp_path / "held.npz", images=heldout_set(400).images)
    r = run_cli_process(
        "convert", "normonnx.zoo:preact_cnn", "--checkpoint", str(CHECKPOINTS / "preact_cnn.safetensors"),
        "-o", str(tmp_path / "out"), "--data", str(tmp_path / "held.npz"), "--precision", "int8", "--dynamic-batch",
        "--runs", "10",
    )  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "model.int8.onnx").exists()
    assert report["int8"]["passed"] and report["int8"]["int8"]["parity"]["outputs"][0]["sqnr_db"] >= 20
    assert report["top1_agreement_int8"] >= 0.95
    assert "int8" in report["latency_ms"]
    assert "int8 SQNR" in r.out
