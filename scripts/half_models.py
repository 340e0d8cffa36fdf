#!/usr/bin/env python
"""Float32 ONNX models whose residual stream leaves the fp16 range, for the half-precision benchmark.

Trained networks carry activations past fp16's largest value (65504) in their residual streams:
SDXL's VAE decoder peaks near 1e5 in its mid block, T5's feed-forward outputs grow the stream past
fp16 (why its fp16 runs give inf), and LLMs hold a few "massive activation" channels near 1e5. A
plain cast of such a model to fp16 overflows, however its normalizations are written. Random
initialisation gives none of this, so in each model here the output layer of a residual branch is
scaled (weights and bias multiplied by a gain found by running the model in torch) until the residual
stream peaks near 1e5, while the normalization that follows keeps the model's output moderate:

- ``vae_decoder``: a small diffusers AutoencoderKL, its decode path (post_quant_conv + decoder), the
  mid block's first resnet output conv scaled;
- ``unet_block``: a diffusers UNetMidBlock2DCrossAttn (resnet, cross-attention transformer, resnet), the
  transformer's feed-forward output scaled (the block's output is the stream itself, so it stays large);
- ``t5_encoder``: a small transformers T5EncoderModel, every block's feed-forward output projection (wo)
  scaled by one gain that takes the first block's output to 1e5; the later blocks grow it further;
- ``llama_decoder``: a small transformers LlamaModel, two rows of the first MLP's down_proj scaled so that
  two channels of the stream reach 1e5 while the others stay below 1.

The float32 models are fine; a plain fp16 cast turns the stream into inf and the norms after it into NaN.
Each is built from torch.manual_seed(0) and exported by torch.onnx (TorchScript exporter, opset 18, fixed
shapes). Torch, diffusers and transformers are imported only where a model is built.

    python scripts/half_models.py   # builds them in a temporary folder and prints their ranges
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

if TYPE_CHECKING:
    import torch

OPSET = 18
PEAK = 1e5  # the residual stream's target max|x|: past fp16's 65504, as in the trained models above
SEED = 0
KIND = "stream beyond fp16"
MASSIVE_CHANNELS = (7, 42)  # the Llama's stream channels that reach ~1e5
FILL = 1e30  # |x| past this is an attention mask's fill (float32's minimum) or log(0) in T5's position buckets


@dataclass(frozen=True)
class StressModel:
    """One float32 ONNX model of the benchmark and one seeded input set for it."""

    name: str
    path: Path
    feeds: dict[str, np.ndarray]
    kind: str


@dataclass(frozen=True)
class _Built:
    """A written model, torch's output on its feeds (what the ONNX model must reproduce) and the export's
    time."""

    model: StressModel
    reference: np.ndarray
    export_s: float


def _first(output: Any) -> torch.Tensor:
    """The hidden states of a module's output (transformers layers return tuples)."""
    return output[0] if isinstance(output, tuple) else output


def _peak(watched: Sequence[torch.nn.Module], run: Callable[[], Any], channels: slice | list[int]) -> float:
    """The largest |x| in ``channels`` (of the last axis) of the outputs of ``watched`` while ``run`` runs the
    model once."""
    import torch

    peaks: list[float] = []
    record = lambda _m, _i, out: peaks.append(_first(out)[..., channels].abs().max().item())
    hooks = [m.register_forward_hook(record) for m in watched]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return max(peaks)


def _scale_to_peak(
    watched: Sequence[torch.nn.Module],
    scaled: Sequence[torch.nn.Module],
    run: Callable[[], Any],
    rows: Sequence[int] = (),
) -> None:
    """Multiplies the outputs of every ``scaled`` layer by one gain so that the outputs of ``watched`` peak at
    PEAK; with ``rows``, only those output rows of a linear layer, each by its own gain so that its channel
    of the stream peaks at PEAK. The first gain makes the scaled branch dominate the stream, from where the
    peak is nearly linear in the gain: three rounds land within a few percent."""
    import torch

    for index in [[r] for r in rows] or [slice(None)]:
        for _ in range(3):
            gain = PEAK / _peak(watched, run, index)
            with torch.no_grad():
                for layer in scaled:
                    for param in (layer.weight, layer.bias):
                        if param is not None:
                            param[index] *= gain


def _export(module: torch.nn.Module, feeds: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, float]:
    """Writes ``module`` (called with ``feeds`` in order) to ``path``; returns torch's output and the seconds
    the export took."""
    import torch

    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad(), warnings.catch_warnings():
        # the shapes are fixed, so the tracer's warnings about Python values taken as constants hold
        warnings.simplefilter("ignore")
        output = module(*args)
        start = time.perf_counter()
        torch.onnx.export(
            module, args, str(path), opset_version=OPSET, dynamo=False, input_names=list(feeds), output_names=["out"]
        )
    return output.numpy(), time.perf_counter() - start


def _exported(owner: torch.nn.Module, forward: Callable[..., torch.Tensor]) -> torch.nn.Module:
    """A module that computes ``forward`` with ``owner``'s parameters: the one tensor to export out of a
    model's method or output structure."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.owner = owner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return forward(*args)

    return Exported().eval()


def _randn(*shape: int) -> np.ndarray:
    """A seeded standard-normal float32 array."""
    return np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)


def _token_ids(vocab: int, length: int = 16) -> np.ndarray:
    """Seeded token ids of shape [1, length]."""
    return np.random.default_rng(SEED).integers(0, vocab, (1, length), dtype=np.int64)


def _vae_decoder() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """A small AutoencoderKL's decode path, its mid block's residual stream near 1e5 as in SDXL's VAE."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=32,
    ).eval()
    decode = _exported(vae, lambda latent: vae.decode(latent, return_dict=False)[0])
    feeds = {"latent": _randn(1, 4, 8, 8)}
    mid = vae.decoder.mid_block
    latent = torch.from_numpy(feeds["latent"])
    _scale_to_peak([*mid.resnets, *mid.attentions], [mid.resnets[0].conv2], lambda: decode(latent))
    return decode, feeds


def _unet_block() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """A UNet mid block (resnet, cross-attention transformer, resnet) whose transformer feed-forward drives
    the residual stream near 1e5."""
    import torch
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn

    torch.manual_seed(SEED)
    block = UNetMidBlock2DCrossAttn(
        in_channels=32, temb_channels=64, resnet_groups=8, num_attention_heads=2, cross_attention_dim=32
    ).eval()
    feeds = {"hidden_states": _randn(1, 32, 8, 8), "temb": _randn(1, 64), "encoder_hidden_states": _randn(1, 8, 32)}
    transformer = block.attentions[0].transformer_blocks[0]
    args = [torch.from_numpy(v) for v in feeds.values()]
    _scale_to_peak([transformer, *block.attentions, *block.resnets], [transformer.ff.net[2]], lambda: block(*args))
    return block, feeds


def _t5_encoder() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """A small T5 encoder whose feed-forward outputs grow the residual stream past fp16, as T5's do."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    config = T5Config(
        vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_heads=4, attn_implementation="eager"
    )
    encoder = T5EncoderModel(config).eval()
    feeds = {"input_ids": _token_ids(config.vocab_size)}
    ids = torch.from_numpy(feeds["input_ids"])
    blocks = encoder.encoder.block
    # the first block's output is watched: in fp16, RMSNorm's x² overflows once the stream passes 256, which
    # zeroes its output (x * rsqrt(inf)), so a stream reaches inf only where one block takes it past 65504
    _scale_to_peak(blocks[:1], [b.layer[-1].DenseReluDense.wo for b in blocks], lambda: encoder(ids))
    return _exported(encoder, lambda ids: encoder(ids).last_hidden_state), feeds


def _llama_decoder() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """A small Llama with two "massive activation" channels: rows of its first down_proj scaled so that
    those channels of the residual stream reach ~1e5 while the rest stay small."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        attn_implementation="eager",
    )
    llama = LlamaModel(config).eval()
    feeds = {"input_ids": _token_ids(config.vocab_size)}
    ids = torch.from_numpy(feeds["input_ids"])
    _scale_to_peak(llama.layers, [llama.layers[0].mlp.down_proj], lambda: llama(ids), rows=MASSIVE_CHANNELS)
    return _exported(llama, lambda ids: llama(ids).last_hidden_state), feeds


_BUILDERS: dict[str, Callable[[], tuple[torch.nn.Module, dict[str, np.ndarray]]]] = {
    "vae_decoder": _vae_decoder,
    "unet_block": _unet_block,
    "t5_encoder": _t5_encoder,
    "llama_decoder": _llama_decoder,
}


def _build(name: str, workdir: Path) -> _Built:
    """The named model, scaled and written to ``workdir``/name.onnx."""
    module, feeds = _BUILDERS[name]()
    path = workdir / f"{name}.onnx"
    reference, export_s = _export(module, feeds, path)
    return _Built(StressModel(name, path, feeds, KIND), reference, export_s)


def half_stress_models(workdir: Path) -> list[StressModel]:
    """The benchmark's models, written as float32 ONNX files in ``workdir``."""
    return [_build(name, workdir).model for name in _BUILDERS]


def _residual_adds(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of the Adds of two computed tensors of one shape: the residual stream (and attention scores
    plus their bias), not a norm's variance + eps or a bias added to a projection."""
    return [
        values[n.output[0]]
        for n in model.graph.node
        if n.op_type == "Add" and all(x in values and values[x].shape == values[n.output[0]].shape for x in n.input)
    ]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All graph outputs of ``model`` on onnxruntime CPU with every graph optimization off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _largest(values: Sequence[np.ndarray]) -> float:
    """max|x| over ``values``, attention masks' fills left out."""
    kept = [np.abs(v[np.abs(v) < FILL]) for v in values]
    return max(float(v.max()) for v in kept if v.size)


def _intermediate_peaks(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max|x| over every float32 tensor the model computes, over its residual stream), each tensor exposed
    as a graph output (onnxruntime types an output given by name alone)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    named = {o.name for o in exposed.graph.output}
    written = [o for n in model.graph.node for o in n.output if o and o not in named]
    exposed.graph.output.extend(onnx.ValueInfoProto(name=o) for o in written)
    values = {k: v for k, v in _run(exposed, feeds).items() if v.dtype == np.float32}
    return _largest(list(values.values())), _largest(_residual_adds(model, values))


def _plain_cast_nonfinite(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """The fraction of output elements that are inf or NaN when a plain fp16 cast of ``model`` runs as a GPU
    computes it (normonnx's half-faithful copy)."""
    from normonnx.graph.precision import to_float16
    from normonnx.validate.faithful import faithful_copy

    outputs = _run(faithful_copy(to_float16(model)), feeds).values()
    return sum(int((~np.isfinite(v)).sum()) for v in outputs) / sum(v.size for v in outputs)


def _report(name: str, workdir: Path) -> str:
    """One table row: build and export time, the float32 ranges, torch parity and the plain cast's overflow."""
    start = time.perf_counter()
    built = _build(name, workdir)
    build_s = time.perf_counter() - start
    model, feeds = onnx.load(built.model.path), built.model.feeds
    output = _run(model, feeds)["out"]
    error = float(np.abs(output - built.reference).max() / np.abs(built.reference).max())
    peak, stream = _intermediate_peaks(model, feeds)
    nonfinite = _plain_cast_nonfinite(model, feeds)
    return (
        f"{name:<14} {build_s:>6.1f} {built.export_s:>6.1f} {peak:>10.4g} {stream:>10.4g}"
        f" {np.abs(output).max():>10.4g} {error:>9.2e} {nonfinite:>9.1%}"
    )


def main() -> int:
    print(f"{'':<14} {'build':>6} {'export':>6} {'max|x|':>10} {'residual':>10} {'max|out|':>10}", end="")
    print(f" {'vs torch':>9} {'fp16 cast':>9}")
    print(f"{'model':<14} {'s':>6} {'s':>6} {'f32':>10} {'max|x| f32':>10} {'f32':>10} {'rel err':>9} {'inf/NaN':>9}")
    with tempfile.TemporaryDirectory(prefix="half_models_") as folder:
        for name in _BUILDERS:
            print(_report(name, Path(folder)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
