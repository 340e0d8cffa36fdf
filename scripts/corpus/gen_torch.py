"""Exports made with torch's own exporters and onnxruntime's transformers optimizer (run in the main venv).

The models are small stand-ins defined here; what the corpus wants is what the exporters make of them:
TorchScript below opset 17 spells LayerNorm out (ReduceMean/Sub/Pow/Sqrt/Div) and GroupNorm as a Reshape around
InstanceNormalization, torch.export writes opset 18, and the optimizer fuses into com.microsoft contrib ops
(EmbedLayerNormalization, SkipLayerNormalization, Attention, BiasGelu, FastGelu, SimplifiedLayerNormalization).
All normalization parameters and running statistics are redrawn from a seeded generator, so no fold is trivial.
"""

from __future__ import annotations

import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from _common import Builder, run, seed_for

HIDDEN, HEADS, VOCAB, SEQ = 64, 4, 100, 16


def _models() -> Any:
    """Define the torch models only when a builder runs, so a venv without torch still gets exit code 3."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        """BERT's attention written out, in the shape the optimizer's attention fusion looks for."""

        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
            self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)

        def heads(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            return x.view(b, t, HEADS, HIDDEN // HEADS).permute(0, 2, 1, 3)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
            return self.norm(self.o(ctx.view(ctx.size(0), ctx.size(1), HIDDEN)) + x)

    class BertLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = SelfAttention()
            self.up, self.down = nn.Linear(HIDDEN, 4 * HIDDEN), nn.Linear(4 * HIDDEN, HIDDEN)
            self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            a = self.attn(x, mask)
            return self.norm(self.down(nn.functional.gelu(self.up(a))) + a)

    class TinyBert(nn.Module):
        """Word + position + token-type embeddings, LayerNorm, two post-norm encoder layers."""

        def __init__(self) -> None:
            super().__init__()
            self.words = nn.Embedding(VOCAB, HIDDEN)
            self.positions = nn.Embedding(64, HIDDEN)
            self.types = nn.Embedding(2, HIDDEN)
            self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.layers = nn.ModuleList(BertLayer() for _ in range(2))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(ids.size(1), dtype=torch.long).unsqueeze(0)
            x = self.norm(self.words(ids) + self.positions(pos) + self.types(types))
            bias = (1.0 - mask[:, None, None, :].to(torch.float32)) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x

    class RMSNorm(nn.Module):
        """T5/LLaMA RMSNorm spelled with rsqrt, which TorchScript exports as Div(1, Sqrt) (the fusable form)."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(HIDDEN))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    class RMSBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.proj = nn.Linear(HIDDEN, HIDDEN)
            self.up, self.down = nn.Linear(HIDDEN, 4 * HIDDEN), nn.Linear(4 * HIDDEN, HIDDEN)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.proj(self.n1(x))
            return x + self.down(nn.functional.gelu(self.up(self.n2(x)), approximate="tanh"))

    class RMSEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(RMSBlock() for _ in range(2))
            self.norm = RMSNorm()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.norm(x)

    class ViTBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            self.attn = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(HIDDEN, 2 * HIDDEN), nn.GELU(), nn.Linear(2 * HIDDEN, HIDDEN))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.n1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.n2(x))

    class TinyViT(nn.Module):
        """Patch-embedding conv, class token, learned positions, two pre-norm blocks, final LayerNorm, head."""

        def __init__(self, image: int = 32, patch: int = 4, classes: int = 10) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, HIDDEN, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, HIDDEN) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, HIDDEN) * 0.02)
            self.blocks = nn.Sequential(ViTBlock(), ViTBlock())
            self.norm, self.head = nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x)[:, 0]))

    class ConvNetNorms(nn.Module):
        """One of each: BatchNorm2d after a bias-free conv, GroupNorm, affine InstanceNorm2d, BatchNorm1d."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1, bias=False),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.GroupNorm(8, 32),
                nn.SiLU(),
                nn.Conv2d(32, 32, 3, padding=1, groups=32),
                nn.InstanceNorm2d(32, affine=True),
                nn.ReLU(),
                nn.Conv2d(32, 32, 1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Sequential(nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    return {"bert": TinyBert, "rms": RMSEncoder, "vit": TinyViT, "convnet": ConvNetNorms}


def _randomized(kind: str, seed: int) -> Any:
    """Build a model in eval mode with seeded weights and redrawn norm affine parameters and statistics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = _models()[kind]().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
            norm_types = nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm
            if not (isinstance(m, norm_types) or type(m).__name__ == "RMSNorm"):
                continue
            if weight is not None:
                weight.copy_(torch.rand(weight.shape, generator=gen) + 0.5)
            if bias is not None:
                bias.copy_((torch.rand(bias.shape, generator=gen) - 0.5) * 0.4)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
    return model


def _example(kind: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Example inputs and the names / dynamic axes to export them with."""
    import torch

    if kind == "bert":
        ids = torch.randint(0, VOCAB, (1, SEQ))
        args = (ids, torch.ones(1, SEQ, dtype=torch.long), torch.zeros(1, SEQ, dtype=torch.long))
        names = ["input_ids", "attention_mask", "token_type_ids"]
        return args, {
            "input_names": names,
            "output_names": ["last_hidden_state"],
            "dynamic_axes": {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
        }
    if kind == "rms":
        return (torch.randn(1, SEQ, HIDDEN),), {
            "input_names": ["hidden"],
            "output_names": ["output"],
            "dynamic_axes": {"hidden": {0: "batch", 1: "sequence"}},
        }
    shape = (1, 3, 32, 32)
    return (torch.randn(*shape),), {
        "input_names": ["pixels"],
        "output_names": ["logits"],
        "dynamic_axes": {"pixels": {0: "batch"}, "logits": {0: "batch"}},
    }


def torchscript(rel: str, kind: str, opset: int) -> Builder:
    def build(path: Path) -> None:
        import torch

        args, kwargs = _example(kind)
        with warnings.catch_warnings():  # the legacy exporter's deprecation notice, once per export
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.backends.mha.set_fastpath_enabled(False)  # keep MultiheadAttention on its traceable path
            torch.onnx.export(
                _randomized(kind, seed_for(rel)), args, str(path), opset_version=opset, dynamo=False, **kwargs
            )

    return build


def dynamo(rel: str, kind: str, opset: int = 18) -> Builder:
    def build(path: Path) -> None:
        import onnxscript  # noqa: F401  (torch.export's ONNX path needs it; missing means "tools missing")
        import torch

        args, kwargs = _example(kind)
        kwargs.pop("dynamic_axes")
        batch = torch.export.Dim("batch", min=2)  # min 2: torch.export treats a size-1 dim as a constant
        shapes = ({0: batch},) if kind in {"vit", "convnet"} else None
        args = tuple(torch.cat([a, a]) for a in args)
        torch.onnx.export(
            _randomized(kind, seed_for(rel)),
            args,
            str(path),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            **kwargs,
        )

    return build


def optimized(rel: str, kind: str, plain_rel: str) -> Builder:
    """Export `kind` as `plain_rel` does, then fuse with onnxruntime's transformers optimizer (python fusions only)."""

    def build(path: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        with tempfile.TemporaryDirectory(prefix="plain-") as tmp:
            plain = Path(tmp) / "plain.onnx"
            torchscript(plain_rel, kind, 14)(plain)
            model = optimize_model(str(plain), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0)
            model.save_model_to_file(str(path))

    return build


BUILDERS: dict[str, Builder] = {
    "torchscript/tiny_bert.onnx": torchscript("torchscript/tiny_bert.onnx", "bert", 14),
    "torchscript/tiny_rms_encoder.onnx": torchscript("torchscript/tiny_rms_encoder.onnx", "rms", 14),
    "onnxruntime-transformers/tiny_bert_opt.onnx": optimized(
        "onnxruntime-transformers/tiny_bert_opt.onnx", "bert", "torchscript/tiny_bert.onnx"
    ),
    "onnxruntime-transformers/tiny_rms_encoder_opt.onnx": optimized(
        "onnxruntime-transformers/tiny_rms_encoder_opt.onnx", "rms", "torchscript/tiny_rms_encoder.onnx"
    ),
    "torchscript/tiny_vit.onnx": torchscript("torchscript/tiny_vit.onnx", "vit", 14),
    "torchscript/tiny_convnet_norms.onnx": torchscript("torchscript/tiny_convnet_norms.onnx", "convnet", 13),
    "torch-dynamo/tiny_vit.onnx": dynamo("torchscript/tiny_vit.onnx", "vit"),
    "torch-dynamo/tiny_convnet_norms.onnx": dynamo("torchscript/tiny_convnet_norms.onnx", "convnet"),
}

if __name__ == "__main__":
    sys.exit(run(BUILDERS))
