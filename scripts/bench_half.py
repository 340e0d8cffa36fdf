"""Benchmark: normonnx half against onnxconverter-common's float16 and a plain cast, judged half-faithfully.

Models: the reference zoo (trained by scripts, exported at opset 18) and models whose
normalizations see large activations (a transformer block without pre-scaling, a ConvNeXt block
with a channels-first LayerNorm, a GroupNorm block, RMSNorm at activations near 300), each
exported from torch. Every conversion is run in the half-faithful evaluator (every op in float32
inside, every half tensor rounded as a GPU stores it) against the float32 model on the same
seeded inputs; latency is onnxruntime CPU at ORT_ENABLE_ALL, interleaved with the float32 model
and an identity copy of it as the noise floor.

    python scripts/bench_half.py            # writes benchmarks/half.{md,json,png}
    python scripts/bench_half.py --replot   # the plot again from half.json
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_files import missing_note, require, save_figure, start, write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks"
ZOO = [
    "resnet_bn", "preact_cnn", "bit_ws_gn", "bcn_micro", "vit_ln", "convnext_cf", "rms_transformer", "style_in",
    "frozen_backbone", "weightnorm_cnn",
]  # fmt: skip
GAIN = 520.0  # weights scaled so that the normalizations' inputs have a standard deviation near 300
SAMPLES = 4


def large_activation_models():
    """(name, module, example input, opset): normalizations fed activations near 300 (the LayerNorm
    block twice: at opset 16 torch writes it out as ReduceMean/Sub/Pow/..., at 18 as the op)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, norm: nn.Module, gain: float, dim: int = 64) -> None:
            super().__init__()
            self.proj = nn.Linear(dim, dim)
            with torch.no_grad():
                self.proj.weight.mul_(gain)
            self.norm = norm
            self.head = nn.Linear(dim, 8)

        def forward(self, x):
            return self.head(self.norm(self.proj(x)))

    class ConvBlock(nn.Module):
        def __init__(self, norm: nn.Module, gain: float, channels: int = 32) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.mul_(gain)
            self.norm = norm
            self.head = nn.Conv2d(channels, 8, 1)

        def forward(self, x):
            return self.head(self.norm(self.conv(x))).mean((2, 3))

    class ChannelsFirstLN(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

        def forward(self, x):
            mean = x.mean(1, keepdim=True)
            var = (x - mean).pow(2).mean(1, keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]

    class ManualRMS(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    tokens, image = torch.randn(2, 16, 64), torch.randn(1, 32, 16, 16)
    return [
        ("transformer_ln_x300_opset16", Block(nn.LayerNorm(64), GAIN).eval(), tokens, 16),
        ("transformer_ln_x300", Block(nn.LayerNorm(64), GAIN).eval(), tokens, 18),
        ("rmsnorm_x300", Block(ManualRMS(64), GAIN).eval(), tokens, 18),
        ("convnext_ln_x300", ConvBlock(ChannelsFirstLN(32), GAIN).eval(), image, 18),
        ("groupnorm_x300", ConvBlock(nn.GroupNorm(4, 32), GAIN).eval(), image, 18),
    ]


def export_all(folder: Path) -> list[tuple[str, str, Path]]:
    """(kind, name, float32 ONNX path) for every benchmark model."""
    import torch

    from normonnx.pipelines.export import export_file
    from normonnx.zoo import CHECKPOINTS

    models = []
    for name in ZOO:
        path = folder / f"{name}.onnx"
        export_file(f"normonnx.zoo:{name}", path, checkpoint=str(CHECKPOINTS / f"{name}.safetensors"), opset=18)
        models.append(("zoo", name, path))
    for name, module, example, opset in large_activation_models():
        path = folder / f"{name}.onnx"
        torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=False, input_names=["x"])
        models.append(("large activations", name, path))
    return models


def converters(dtype: str) -> dict:
    """name -> function(float32 model) -> half model (or raises)."""
    from normonnx.graph.precision import with_float_type
    from normonnx.pipelines.half import half_model

    half = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
    tools = {
        "normonnx": lambda m: half_model(m, dtype)[0],
        "plain cast": lambda m: with_float_type(m, half),
    }
    if dtype == "fp16" and importlib.util.find_spec("onnxconverter_common"):  # main() required it
        from onnxconverter_common import float16

        tools["onnxconverter-common"] = lambda m: float16.convert_float_to_float16(m, keep_io_types=True)
    return tools


def judge(ref_model: onnx.ModelProto, model: onnx.ModelProto, feeds: list[dict], refs: list[dict], half: int) -> dict:
    from normonnx.validate.runners import FaithfulRunner

    got = FaithfulRunner(model, label="faithful").infer(feeds)
    out = {}
    nonfinite, errors, agree, total = 0, [], 0, 0
    for r, g in zip(refs, got, strict=True):
        for name, ref in r.items():
            cand = np.asarray(g[name], np.float64)
            nonfinite += int(np.count_nonzero(~np.isfinite(cand)))
            errors.append(float(np.nanmax(np.abs(np.where(np.isfinite(cand), cand, np.inf) - ref))
                                / max(1.0, float(np.abs(ref).max()))))  # fmt: skip
            if ref.ndim >= 2:
                agree += int(np.sum(np.argmax(ref.reshape(-1, ref.shape[-1]), -1)
                                    == np.argmax(np.nan_to_num(cand).reshape(-1, ref.shape[-1]), -1)))  # fmt: skip
                total += int(np.prod(ref.shape[:-1]))
    out["nonfinite"] = nonfinite
    out["max_error"] = max(errors)
    out["top1"] = agree / total if total else None
    out.update(shares(model, half))
    out["bytes"] = model.ByteSize()
    return out


def shares(model: onnx.ModelProto, half: int) -> dict:
    from normonnx.pipelines.half import precision_shares

    got = precision_shares(model, half)
    return {"weights_half": got.weight_bytes, "macs_half": got.macs}


def latency(paths: dict[str, Path], feeds: dict[str, np.ndarray], seconds: float = 3.0) -> dict[str, float]:
    """Median per-round ratio of each model's latency over the float32 model's (onnxruntime CPU,
    ORT_ENABLE_ALL, interleaved; "copy" is the float32 file again: the noise floor). Models onnxruntime's
    CPU cannot run (bf16 kernels it lacks) are left out."""
    from normonnx.validate.inputs import input_specs
    from normonnx.validate.runner import SessionConfig, session
    from normonnx.validate.runners import RunOptions, measure_interleaved

    runnable = {}
    for name, path in paths.items():
        try:
            session(str(path), SessionConfig(optimize=True))
            runnable[name] = path
        except Exception:
            continue
    per_model = []
    for path in runnable.values():
        specs = {s.name: s.dtype for s in input_specs(onnx.load(str(path), load_external_data=False))}
        per_model.append({k: v.astype(specs[k]) for k, v in feeds.items() if k in specs})
    deployed = SessionConfig(optimize=True, spin=False)
    runners = {n: RunOptions().runner(str(p), deployed, label=n) for n, p in runnable.items()}
    stats = measure_interleaved(runners, per_model, warmup=3, runs=300, max_seconds=seconds, label="latency")
    base = np.asarray(stats["float32"].times_ms)
    return {n: float(np.median(np.asarray(st.times_ms)[: len(base)] / base[: len(st.times_ms)]))
            for n, st in stats.items() if n != "float32"}  # fmt: skip


def main() -> int:
    from normonnx.validate.inputs import input_specs
    from normonnx.validate.probe import probe_shapes, probed_feeds
    from normonnx.validate.runners import RunOptions

    if "--replot" not in sys.argv:
        start("bench_half", 10)
        require(["onnxconverter_common"], "--allow-missing" in sys.argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, name, path in export_all(folder):
            ref_model = onnx.load(path)
            specs = input_specs(ref_model)
            original = RunOptions().runner(str(path), label=name)
            feeds = probed_feeds(specs, probe_shapes(ref_model, original), SAMPLES)
            refs = original.infer(feeds)
            copy = folder / f"{name}.copy.onnx"
            onnx.save(ref_model, copy)
            for dtype in ("fp16", "bf16"):
                half = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
                written, these = {"float32": path, "copy": copy}, []
                for tool, convert in converters(dtype).items():
                    row = {"kind": kind, "model": name, "dtype": dtype, "tool": tool}
                    try:
                        model = convert(ref_model)
                        row.update(judge(ref_model, model, feeds, refs, half))
                        written[tool] = folder / f"{name}.{dtype}.{tool.replace(' ', '_')}.onnx"
                        onnx.save(model, written[tool])
                    except Exception as e:
                        row["error"] = str(e).splitlines()[0][:160]
                    these.append(row)
                ratios = latency(written, feeds[0])
                for row in these:
                    row["latency_ratio"] = ratios.get(row["tool"])
                    row["noise_floor"] = ratios.get("copy")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_results(rows)
    return 0


def write_results(rows: list[dict]) -> None:
    from normonnx.reports.table import table

    def cell(v, fmt):
        return "-" if v is None else fmt.format(v)

    head = ("model", "kind", "dtype", "tool", "inf/NaN", "max error", "top-1", "weights in half", "MACs in half", "KB",
            "latency vs fp32", "noise floor")  # fmt: skip
    body = [
        (r["model"], r["kind"], r["dtype"], r["tool"], r.get("error", "")[:60] or r["nonfinite"],
         cell(r.get("max_error"), "{:.2e}"), cell(r.get("top1"), "{:.1%}"), cell(r.get("weights_half"), "{:.0%}"),
         cell(r.get("macs_half"), "{:.0%}"), cell(r.get("bytes") and r["bytes"] / 1024, "{:.0f}"),
         cell(r.get("latency_ratio"), "{:.3f}"), cell(r.get("noise_floor"), "{:.3f}"))
        for r in rows
    ]  # fmt: skip
    ours = [r for r in rows if r["tool"] == "normonnx"]
    ok = [r for r in ours if "error" not in r and r["nonfinite"] == 0 and r["max_error"] <= 1e-2]
    lines = [
        "# normonnx half against onnxconverter-common and a plain cast, judged half-faithfully"
        + missing_note([] if any(r["tool"] == "onnxconverter-common" for r in rows) else ["onnxconverter-common"]),
        "",
        "Every conversion runs in the half-faithful evaluator (float32 inside every op, every fp16/bf16 tensor"
        " rounded as a GPU stores it) against the float32 model, on the same seeded inputs. Max error is"
        " max|diff| / max(1, max|ref|) over the outputs; top-1 compares the argmax of the last axis. MACs in"
        " half: the share of Conv/MatMul/Gemm work (by weight size) whose data input is in the half type. Latency:"
        " median per-round ratio over the float32 model on onnxruntime CPU, ORT_ENABLE_ALL, interleaved (CPU"
        " runs fp16 mostly in fp32 behind casts, so this is the cost of deploying the file there, not a GPU's"
        " speed); bf16 files onnxruntime's CPU has no kernels for show '-'.",
        "",
        table(head, body, markdown=True),
        "",
        f"normonnx: {len(ok)}/{len(ours)} conversions finite and within 1e-2.",
        "",
        f"Machine: {platform.machine()}, {platform.system()}; onnx {onnx.__version__}; {time.strftime('%Y-%m-%d')}."
        " Run: `python scripts/bench_half.py`.",
    ]
    OUT.mkdir(exist_ok=True)
    write(OUT / "half.md", "\n".join(lines) + "\n\n![max error per model](half.png)\n")
    write(OUT / "half.json", json.dumps(rows, indent=1) + "\n")
    plot(rows, OUT / "half.png")


def plot(rows: list[dict], path: Path) -> None:
    """Max error of every conversion, per model (log scale), the 1e-2 gate drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(models) + 2), sharey=True)
    markers = {"normonnx": "o", "plain cast": "x", "onnxconverter-common": "^"}
    for ax, dtype in zip(axes, ("fp16", "bf16"), strict=True):
        for tool, marker in markers.items():
            pts = [(max(r["max_error"], 1e-7), models.index(r["model"])) for r in rows
                   if r["dtype"] == dtype and r["tool"] == tool and "max_error" in r]  # fmt: skip
            if pts:
                ax.scatter(*zip(*pts, strict=True), marker=marker, label=tool)
        ax.axvline(1e-2, color="black", linewidth=0.8, label="gate 1e-2")
        ax.set_xscale("log")
        ax.set_xlabel("max|diff| / max(1, max|ref|), log scale (left of the gate: passes)")
        ax.set_title(f"{dtype}: max|diff| / max(1, max|ref|), half-faithful", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_yticks(range(len(models)), models, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # the plot again from benchmarks/half.json (the table keeps its date)
        plot(json.loads((OUT / "half.json").read_text()), OUT / "half.png")
        raise SystemExit(0)
    raise SystemExit(main())
