"""Check that every file in a corpus manifest loads with onnx and runs in onnxruntime on the CPU.

Usage: python scripts/corpus/check_corpus.py [--corpus corpus] [--json out.json]

Inputs are random, shaped from the graph. A dynamic batch (and a recurrent state's dynamic dims) is 1; the other
dynamic dims are tried at 64, 512, 16 and 1 until one runs, since detectors want multiples of 32 and audio models
whole frames. A silero-style int64 `sr` input gets 16000. The exit code is 1 when any file fails to load or run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

SIZES = (64, 512, 16, 1)
DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _batch_dims(session: ort.InferenceSession) -> set[str]:
    """Names of dynamic dimensions that are a batch: leading ones, and any named like one."""
    names = {a.shape[0] for a in session.get_inputs() if a.shape and isinstance(a.shape[0], str)}
    return names | {d for a in session.get_inputs() for d in a.shape if isinstance(d, str) and "batch" in d.lower()}


def _feeds(session: ort.InferenceSession, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs; a dynamic batch (or a recurrent state's dynamic dims) is 1, other dynamic dims are `size`."""
    batch = _batch_dims(session)
    feeds = {}
    for arg in session.get_inputs():
        state = arg.name in {"state", "h", "c"}
        shape = [
            d if isinstance(d, int) and d >= 0 else 1 if i == 0 or state or d in batch else size
            for i, d in enumerate(arg.shape)
        ]
        dtype = DTYPES.get(arg.type)
        if dtype is None:
            raise TypeError(f"input {arg.name} has type {arg.type}")
        if arg.name == "sr" and dtype == np.int64:
            feeds[arg.name] = np.array(16000, dtype=np.int64).reshape(shape)
        elif np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[arg.name] = np.ones(shape, dtype=np.bool_)
        else:  # ids, masks, lengths: 1 is valid for all of them
            feeds[arg.name] = np.ones(shape, dtype=dtype)
    return feeds


def check(path: Path) -> dict[str, Any]:
    """Load, build a CPU session, and run once; report the step that failed and why."""
    row: dict[str, Any] = {"load": False, "run": False, "error": ""}
    try:
        model = onnx.load(path)
        row.update(load=True, nodes=len(model.graph.node))
    except Exception as err:
        row["error"] = f"onnx.load: {err}"[:300]
        return row
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        row["error"] = f"session: {err}"[:300]
        return row
    rng = np.random.default_rng(0)
    dynamic = any(not isinstance(d, int) for a in session.get_inputs() for d in a.shape)
    errors = []
    for size in SIZES if dynamic else SIZES[:1]:
        try:
            t0 = time.perf_counter()
            session.run(None, _feeds(session, size, rng))
            row.update(run=True, size=size if dynamic else None, ms=round((time.perf_counter() - t0) * 1e3, 1))
            return row
        except Exception as err:
            errors.append(f"size {size}: {err}"[:300] if dynamic else str(err)[:300])
    row["error"] = "run: " + " | ".join(errors)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "corpus")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    entries = json.loads((args.corpus / "manifest.json").read_text())
    ort.set_default_logger_severity(4)  # failures are reported in the rows
    rows = []
    for entry in entries:
        row = {**entry, **check(args.corpus / entry["file"])}
        rows.append(row)
        status = "ok" if row["run"] else "FAIL"
        print(
            f"{status:4} {entry['exporter']:25} {Path(entry['file']).name:58} {entry['bytes'] / 1e6:7.2f} MB "
            f"opset {entry['opset']!s:>2} ir {entry['ir_version']:>2}  {row['error']}",
            flush=True,
        )
    bad = [r for r in rows if not r["run"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} load and run on CPUExecutionProvider")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
