"""Benchmark: normonnx half against a plain cast, onnxconverter-common and ModelOpt's AutoCast, judged in
half-faithful and in true half arithmetic.

Models: the reference zoo (trained by scripts, exported at opset 18); models whose normalizations see
large activations (a transformer block without pre-scaling, a ConvNeXt block with a channels-first
LayerNorm, a GroupNorm block, RMSNorm at activations near 300); residual networks whose stream leaves the
fp16 range (``scripts/half_models.py``: a diffusers AutoencoderKL decoder, a UNet mid block, a T5 encoder,
a LLaMA decoder with massive-activation channels, random init, weights scaled so the stream peaks near
1e5); and every file of the real-world corpus (``scripts/fetch_corpus.py``; fp16 with float32 inputs and
outputs for every tool, no latency). Every conversion is run in the half-faithful evaluator (every op in
float32 inside, every half tensor rounded as a GPU stores it) and, for the fp16 files of the first three
groups, in true half arithmetic (onnx's ReferenceEvaluator, ``normonnx.validate.true_half``), against the
float32 model on the same seeded inputs; latency is onnxruntime CPU at ORT_ENABLE_ALL, interleaved with
the float32 model and an identity copy of it as the noise floor.

Peers: ``pip install 'normonnx[bench]'`` (onnxconverter-common), and ModelOpt's AutoCast, which installs on
a CPU machine as ``pip install --no-deps nvidia-modelopt && pip install nvidia-ml-py lief pulp scipy``;
diffusers and transformers build the stress models. Takes about 20 minutes on 2 cores.

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


def export_all(folder: Path) -> list[tuple[str, str, Path, dict | None]]:
    """(kind, name, float32 ONNX path, its inputs or None for seeded ones) for every model but the corpus."""
    import torch
    from half_models import half_stress_models

    from normonnx.pipelines.export import export_file
    from normonnx.zoo import CHECKPOINTS

    models = []
    for name in ZOO:
        path = folder / f"{name}.onnx"
        export_file(f"normonnx.zoo:{name}", path, checkpoint=str(CHECKPOINTS / f"{name}.safetensors"), opset=18)
        models.append(("zoo", name, path, None))
    for name, module, example, opset in large_activation_models():
        path = folder / f"{name}.onnx"
        torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=False, input_names=["x"])
        models.append(("large activations", name, path, None))
    for m in half_stress_models(folder):
        models.append((m.kind, m.name, m.path, m.feeds))
    return models


def corpus_models() -> list[tuple[str, str, Path, None]]:
    """Every file of the real-world corpus, when it has been fetched."""
    from bench_real_world import corpus_files

    folder = ROOT / "corpus"
    return [(f"corpus: {exporter}", path.stem, path, None) for exporter, path in corpus_files(folder)]


def converters(dtype: str, folder: Path, corpus: bool) -> dict:
    """name -> function(float32 model, its path, its feeds) -> half model (or raises). The corpus is converted
    with float32 inputs and outputs by every tool (onnxconverter-common's and AutoCast's default here)."""
    from normonnx.graph.precision import with_float_type
    from normonnx.pipelines.half import half_model

    half = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16

    def ours(rescale: bool):
        def convert(m, p, f):
            model, report = half_model(m, dtype, keep_io_types=corpus, inputs=_npz(f, folder), rescale=rescale)
            if not report.passed:  # normonnx writes nothing then: the row says why
                raise RuntimeError(f"refused: {report.parity.summary()}")
            return model

        return convert

    tools = {"normonnx": ours(True), "plain cast": lambda m, p, f: with_float_type(m, half)}
    if not corpus:
        tools["normonnx, no rescaling"] = ours(False)
    if dtype != "fp16":
        return tools
    if importlib.util.find_spec("onnxconverter_common"):
        from onnxconverter_common import auto_mixed_precision, float16

        tools["onnxconverter-common"] = lambda m, p, f: float16.convert_float_to_float16(m, keep_io_types=True)
        if not corpus:  # it runs the model once per bisection step: minutes on a corpus file
            tools["onnxconverter-common auto mixed"] = lambda m, p, f: _quietly(
                auto_mixed_precision.auto_convert_mixed_precision, m, f[0], rtol=1e-2, atol=1e-2, keep_io_types=True
            )
    if importlib.util.find_spec("modelopt"):  # its calibration data: one input set, at the model's shapes
        tools["ModelOpt AutoCast"] = lambda m, p, f: _autocast(p, _npz(f[:1], folder))
    return tools


def _npz(feeds: list[dict], folder: Path) -> str:
    """The feeds as an .npz (one array per input, the sets stacked) that normonnx and AutoCast take."""
    path = folder / f"feeds_{abs(hash(tuple(sorted(feeds[0])))) % 10**8}_{len(feeds)}.npz"
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) if len(feeds) > 1 else feeds[0][k] for k in feeds[0]})
    return str(path)


def _quietly(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with what it prints to stdout dropped (the results are the script's output)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _autocast(path: Path, npz: str) -> onnx.ModelProto:
    import logging

    from modelopt.onnx.autocast import convert_to_mixed_precision

    logging.disable(logging.WARNING)
    try:
        return convert_to_mixed_precision(str(path), "fp16", keep_io_types=True, calibration_data=npz)
    finally:
        logging.disable(logging.NOTSET)


def judge(model: onnx.ModelProto, feeds: list[dict], refs: list[dict], half: int, true_half: bool) -> dict:
    """Inf/NaN and max error half-faithfully (and in true half arithmetic where asked), top-1, the shares."""
    from normonnx.validate.runners import FaithfulRunner
    from normonnx.validate.true_half import true_half_outputs

    out = errors_of(FaithfulRunner(model, label="faithful").infer(feeds), refs)
    if true_half:
        exact = errors_of(true_half_outputs(model, feeds), refs)
        out["true_half_nonfinite"], out["true_half_error"] = exact["nonfinite"], exact["max_error"]
    out.update(shares(model, half, feeds[0]))
    out["bytes"] = model.ByteSize()
    return out


def errors_of(got: list[dict], refs: list[dict]) -> dict:
    nonfinite, errors, agree, total = 0, [], 0, 0
    for r, g in zip(refs, got, strict=True):
        for name, ref in r.items():
            if np.asarray(ref).dtype.kind != "f":
                continue
            cand = np.asarray(g[name], np.float64)
            nonfinite += int(np.count_nonzero(~np.isfinite(cand) & np.isfinite(ref)))
            finite = np.where(np.isfinite(cand), cand, np.inf)
            with np.errstate(invalid="ignore"):
                diff = np.abs(finite - ref)[np.isfinite(ref)]
            errors.append(float(np.nanmax(diff, initial=0.0) / max(1.0, float(np.abs(ref[np.isfinite(ref)]).max(
                initial=0.0)))))  # fmt: skip
            if ref.ndim >= 2 and ref.shape[-1] > 1:
                agree += int(np.sum(np.argmax(ref.reshape(-1, ref.shape[-1]), -1)
                                    == np.argmax(np.nan_to_num(cand).reshape(-1, ref.shape[-1]), -1)))  # fmt: skip
                total += int(np.prod(ref.shape[:-1]))
    return {"nonfinite": nonfinite, "max_error": max(errors, default=0.0), "top1": agree / total if total else None}


def shares(model: onnx.ModelProto, half: int, feed: dict) -> dict:
    """What computes in half (``precision_shares``), how many nodes compute in float32 and how many Casts."""
    from normonnx.graph.shapes import inferred
    from normonnx.pipelines.half import precision_shares

    input_shapes = {k: v.shape for k, v in feed.items()}
    got = precision_shares(model, half, input_shapes)
    graph = inferred(model, input_shapes)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    float32_nodes = sum(1 for n in model.graph.node if n.op_type not in ("Cast", "Constant") and n.output
                        and types.get(n.output[0]) == TensorProto.FLOAT)  # fmt: skip
    casts = sum(1 for n in model.graph.node if n.op_type == "Cast")
    return {"weights_half": got.weight_bytes, "macs_half": got.macs, "activations_half": got.activations,
            "linear_half": list(got.linear_ops), "casts": casts, "float32_nodes": float32_nodes}  # fmt: skip


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

    start("bench_half", 20)
    require(["onnxconverter_common", "modelopt", "diffusers", "transformers"], "--allow-missing" in sys.argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind, name, path, given in [*export_all(folder), *corpus_models()]:
            corpus = kind.startswith("corpus")
            ref_model = onnx.load(path)
            original = RunOptions().runner(str(path), label=name)
            try:
                feeds = [given] if given else probed_feeds(input_specs(ref_model), probe_shapes(ref_model, original),
                                                           SAMPLES)  # fmt: skip
                refs = original.infer(feeds)
            except Exception as e:  # a corpus file onnxruntime cannot run here: nothing to judge against
                print(f"{name}: skipped ({str(e).splitlines()[0][:100]})", flush=True)
                continue
            copy = folder / f"{name}.copy.onnx"
            onnx.save(ref_model, copy)
            for dtype in ("fp16",) if corpus else ("fp16", "bf16"):
                half = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
                written, these = {"float32": path, "copy": copy}, []
                for tool, convert in converters(dtype, folder, corpus).items():
                    row = {"kind": kind, "model": name, "dtype": dtype, "tool": tool}
                    began = time.perf_counter()
                    try:
                        model = convert(ref_model, path, feeds)
                        row["seconds"] = time.perf_counter() - began
                        row.update(judge(model, feeds, refs, half, true_half=dtype == "fp16" and not corpus))
                        written[tool] = folder / f"{name}.{dtype}.{tool.replace(' ', '_').replace(',', '')}.onnx"
                        onnx.save(model, written[tool])
                    except Exception as e:
                        row["error"] = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                    these.append(row)
                ratios = {} if corpus else latency(written, feeds[0])
                for row in these:
                    row["latency_ratio"] = ratios.get(row["tool"])
                    row["noise_floor"] = ratios.get("copy")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_results(rows)
    return 0


def _failure(row: dict) -> str:
    if "error" in row:
        return row["error"][:90]
    return f"{row['nonfinite']} inf/NaN" if row["nonfinite"] else f"max error {row['max_error']:.2e}"


def _passes(row: dict) -> bool:
    return "error" not in row and row["nonfinite"] == 0 and row["max_error"] <= 1e-2


def write_results(rows: list[dict]) -> None:
    from normonnx.reports.table import table

    def cell(v, fmt):
        return "-" if v is None else fmt.format(v)

    head = ("model", "kind", "dtype", "tool", "inf/NaN", "max error", "true half", "top-1", "activations in half",
            "MACs in half", "float32 nodes", "Casts", "KB", "latency vs fp32", "noise floor")  # fmt: skip
    body = [
        (r["model"], r["kind"], r["dtype"], r["tool"], r.get("error", "")[:60] or r["nonfinite"],
         cell(r.get("max_error"), "{:.2e}"),
         cell(r.get("true_half_error"), "{:.2e}") + (" (inf/NaN)" if r.get("true_half_nonfinite") else ""),
         cell(r.get("top1"), "{:.1%}"), cell(r.get("activations_half"), "{:.0%}"), cell(r.get("macs_half"), "{:.0%}"),
         cell(r.get("float32_nodes"), "{}"), cell(r.get("casts"), "{}"), cell(r.get("bytes") and r["bytes"] / 1024,
         "{:.0f}"), cell(r.get("latency_ratio"), "{:.3f}"), cell(r.get("noise_floor"), "{:.3f}"))
        for r in rows
    ]  # fmt: skip
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    summary = ["| tool | group | conversions | finite and within 1e-2 (half-faithful) | in true half arithmetic |"
               " median activations in half |", "|---|---|---|---|---|---|"]  # fmt: skip
    for group in ("stream beyond fp16", "large activations", "zoo", "corpus"):
        for tool in tools:
            these = [r for r in rows if r["tool"] == tool and r["kind"].startswith(group) and r["dtype"] == "fp16"]
            if not these:
                continue
            exact = [r for r in these if "true_half_error" in r]
            true_ok = sum(1 for r in exact if not r["true_half_nonfinite"] and r["true_half_error"] <= 1e-2)
            shares_ = sorted(r["activations_half"] for r in these if "activations_half" in r)
            median = f"{shares_[len(shares_) // 2]:.0%}" if shares_ else "-"
            summary.append(f"| {tool} | {group} | {len(these)} | {sum(map(_passes, these))} |"
                           f" {f'{true_ok}/{len(exact)}' if exact else '-'} | {median} |")  # fmt: skip
    ours = [r for r in rows if r["tool"] == "normonnx"]
    refused = [r for r in ours if not _passes(r)]
    why = "; ".join(f"{r['model']} {r['dtype']} ({_failure(r)})" for r in refused) or "none"
    lines = [
        "# normonnx half against a plain cast, onnxconverter-common and ModelOpt AutoCast"
        + missing_note(sorted({"onnxconverter-common", "ModelOpt AutoCast"} - set(tools))),
        "",
        "Every conversion runs in the half-faithful evaluator (float32 inside every op, every fp16/bf16 tensor"
        " rounded as a GPU stores it) against the float32 model, on the same seeded inputs (the stress models:"
        " their own input). Max error is max|diff| / max(1, max|ref|) over the outputs, at finite reference"
        " values; *true half* is the same in true half arithmetic (onnx's ReferenceEvaluator, every op in the"
        " type of its tensors; fp16 files outside the corpus). Top-1 compares the argmax of the last axis."
        " Activations in half: the share of activation elements (every node output at the inputs' shapes)"
        " stored in the half type; MACs in half: the share of Conv/MatMul/Gemm work (by weight size) on half"
        " data. Latency: median per-round ratio over the float32 model on onnxruntime CPU, ORT_ENABLE_ALL,"
        " interleaved (CPU runs fp16 mostly in fp32 behind casts, so this is the cost of deploying the file"
        " there, not a GPU's speed); bf16 files onnxruntime's CPU has no kernels for show '-'. The corpus"
        " rows convert with float32 inputs and outputs for every tool (normonnx --keep-io-types).",
        "",
        "## Summary (fp16)",
        "",
        *summary,
        "",
        f"normonnx (rescaling on) refused or missed the gate on {len(refused)} of {len(ours)} conversions: {why}.",
        "",
        "## Every conversion",
        "",
        table(head, body, markdown=True),
        "",
        f"Machine: {platform.machine()}, {platform.system()}; onnx {onnx.__version__}; {time.strftime('%Y-%m-%d')}."
        " Run: `python scripts/bench_half.py`.",
    ]
    OUT.mkdir(exist_ok=True)
    write(OUT / "half.md", "\n".join(lines) + "\n\n![max error per model](half.png)\n")
    write(OUT / "half.json", json.dumps(rows, indent=1) + "\n")
    plot(rows, OUT / "half.png")


def plot(rows: list[dict], path: Path) -> None:
    """fp16: max error (half-faithful) and the share of activations in half, per model outside the corpus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["dtype"] == "fp16" and not r["kind"].startswith("corpus")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    markers = dict(zip(tools, "oDx^vs*", strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * len(models) + 2.5), sharey=True)
    for tool in tools:
        mine = [r for r in rows if r["tool"] == tool and "max_error" in r]
        errors = [(max(r["max_error"] if not r["nonfinite"] else 1e3, 1e-7), models.index(r["model"])) for r in mine]
        share = [(r["activations_half"], models.index(r["model"])) for r in mine]
        if errors:
            axes[0].scatter(*zip(*errors, strict=True), marker=markers[tool], label=tool, alpha=0.8)
            axes[1].scatter(*zip(*share, strict=True), marker=markers[tool], label=tool, alpha=0.8)
    axes[0].axvline(1e-2, color="black", linewidth=0.8, label="gate 1e-2")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("max|diff| / max(1, max|ref|), half-faithful, log scale (inf/NaN drawn at 1e3)")
    axes[0].set_title("fp16: error (left of the gate passes)", fontsize=9)
    axes[1].axvline(0.95, color="black", linewidth=0.8, label="95%")
    axes[1].set_xlabel("share of activation elements stored in fp16")
    axes[1].set_title("fp16: activations in half (right is better)", fontsize=9)
    axes[0].set_yticks(range(len(models)), models, fontsize=7)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:  # the plot again from benchmarks/half.json (the table keeps its date)
        plot(json.loads((OUT / "half.json").read_text()), OUT / "half.png")
        raise SystemExit(0)
    raise SystemExit(main())
