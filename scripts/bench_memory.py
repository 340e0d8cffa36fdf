#!/usr/bin/env python
"""Benchmark: peak memory of `normonnx fold` on a model with more than 2 GB of weights.

Writes a model of Gemm/MatMul layers (each followed by a BatchNormalization, one
BatchNormalization before a Gemm) whose weights, 2.25 GB by default, live in an
external data file; then runs `python -m normonnx fold` on it in a child process
and reads the peak resident memory of that process and of the onnxruntime
processes it starts for verification (ru_maxrss of its descendants). Target:
peak RSS at most 1.5x the weights. Results: benchmarks/memory.{md,json}.

    python scripts/bench_memory.py [--dim 8192] [--layers 9] [--work out/bench_memory]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import start, write

ROOT = Path(__file__).resolve().parents[1]


def _external(name: str, array_shape: tuple[int, ...], dtype: int, offset: int, length: int) -> onnx.TensorProto:
    t = TensorProto(name=name, data_type=dtype)
    t.dims.extend(array_shape)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def write_model(folder: Path, dim: int, layers: int, seed: int = 0) -> int:
    """big.onnx + big.onnx.data, written tensor by tensor; returns the bytes of weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, offset = [], [], 0
    with open(folder / "big.onnx.data", "wb") as data:

        def add(name: str, values: np.ndarray) -> str:
            nonlocal offset
            values = np.ascontiguousarray(values, dtype=np.float32)
            pad = (-offset) % 4096
            data.write(b"\0" * pad)
            offset += pad
            data.write(values.tobytes())
            inits.append(_external(name, values.shape, TensorProto.FLOAT, offset, values.nbytes))
            offset += values.nbytes
            return name

        def bn(x: str, i: int) -> str:
            params = [
                add(f"bn{i}_{p}", v)
                for p, v in (
                    ("s", rng.uniform(0.5, 1.5, dim)),
                    ("b", rng.normal(0, 0.1, dim)),
                    ("m", rng.normal(0, 0.1, dim)),
                    ("v", rng.uniform(0.5, 1.5, dim)),
                )
            ]
            nodes.append(helper.make_node("BatchNormalization", [x, *params], [f"bn{i}"], name=f"bn{i}"))
            return f"bn{i}"

        x = bn("input", 0)
        for i in range(layers):
            w = add(f"w{i}", rng.standard_normal((dim, dim), dtype=np.float32) * dim**-0.5)
            if i % 2 == 0:
                nodes.append(
                    helper.make_node(
                        "Gemm", [x, w, add(f"c{i}", rng.normal(0, 0.1, dim))], [f"lin{i}"], name=f"gemm{i}", transB=1
                    )
                )
            else:
                nodes.append(helper.make_node("MatMul", [x, w], [f"lin{i}"], name=f"matmul{i}"))
            x = bn(f"lin{i}", i + 1)
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"]))
            x = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, dim])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (folder / "big.onnx").write_bytes(model.SerializeToString())
    return sum(int(next(e.value for e in t.external_data if e.key == "length")) for t in inits)


_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]);"
    " print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,"
    " file=sys.stderr)"
)


def measure_peak(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run ``cmd``; its peak RSS is the largest of its process tree's, read by a wrapper that runs nothing else."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    code, seconds, peak = proc.stderr.strip().splitlines()[-1].split()
    proc.returncode = int(code)
    return proc, float(seconds), int(peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench_memory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args(argv)
    start("bench_memory", 5)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    began = time.perf_counter()
    weights = write_model(args.work, args.dim, args.layers)
    written = time.perf_counter() - began
    print(f"wrote {weights / 2**30:.2f} GiB of weights in {written:.0f} s", flush=True)
    fold = [sys.executable, "-m", "normonnx", "fold", str(args.work / "big.onnx"), "-o"]
    fold_only, _, peak_fold_only = measure_peak([*fold, str(args.work / "nocheck.onnx"), "--no-verify"])
    for leftover in args.work.glob("nocheck.onnx*"):
        leftover.unlink()
    proc, seconds, peak = measure_peak([*fold, str(args.work / "folded.onnx")])
    print(proc.stdout[-3000:], proc.stderr[-2000:], flush=True)
    folded = onnx.load(str(args.work / "folded.onnx"), load_external_data=False) if proc.returncode == 0 else None
    result = {
        "weights_bytes": weights,
        "peak_rss_bytes": peak,
        "peak_rss_fold_only_bytes": peak_fold_only,
        "fold_only_exit_code": fold_only.returncode,
        "ratio": peak / weights,
        "target_ratio": 1.5,
        "fold_seconds": round(seconds, 1),
        "exit_code": proc.returncode,
        "verdict": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "nodes_after": [n.op_type for n in folded.graph.node] if folded is not None else None,
        "output_data_bytes": (args.work / "folded.onnx.data").stat().st_size if folded is not None else None,
        "dim": args.dim,
        "layers": args.layers,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.mkdir(exist_ok=True)
    write(args.out / "memory.json", json.dumps(result, indent=2) + "\n")
    ok = proc.returncode == 0 and result["ratio"] <= 1.5
    md = [
        "# Folding a model with more than 2 GB of weights: peak memory",
        "",
        f"{args.layers} Gemm/MatMul layers of {args.dim}x{args.dim} float32, each followed by a BatchNormalization"
        f" (one more before the first): {weights / 2**30:.2f} GiB of weights in an external data file.",
        "`python -m normonnx fold` with its default parity check (onnxruntime in isolated processes, one at a time).",
        "",
        "| weights | peak RSS, fold + parity check (all processes) | ratio | fold alone (--no-verify) | target | time"
        " | result |",
        "|---|---|---|---|---|---|---|",
        f"| {weights / 2**30:.2f} GiB | {peak / 2**30:.2f} GiB | {result['ratio']:.2f}x |"
        f" {peak_fold_only / 2**30:.2f} GiB ({peak_fold_only / weights:.2f}x) | <= 1.5x | {seconds:.0f} s |"
        f" {'PASSED' if ok else 'FAILED'} ({result['verdict']}) |",
        "",
        "The first peak is onnxruntime's: the verification loads the reference, then the folded model, in"
        " separate processes one after the other. normonnx itself reads one weight at a time and writes"
        " folded weights to disk at once.",
        "",
        f"Folded graph: {' '.join(result['nodes_after'] or [])}",
    ]
    write(args.out / "memory.md", "\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(args.work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
