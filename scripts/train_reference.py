#!/usr/bin/env python
"""Train the reference zoo on procedurally drawn shapes, deterministically, on CPU.

Every network of models/__init__.py (installed as ``normonnx.zoo``) is trained
from a fixed seed on models/data.py's training split and evaluated on its
held-out split, so its BatchNorm statistics and affine parameters are real.
Writes models/checkpoints/<name>.safetensors and <name>.json (how it was
trained, the accuracy reached), which the wheel ships as package data.

    python scripts/train_reference.py [--only resnet_bn,vit_ln] [--out models/checkpoints]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from normonnx.torchfront.modules import FrozenBatchNorm2d  # noqa: E402
from normonnx.zoo import ZOO, FrozenBackbone, ResNetBN, ZooEntry  # noqa: E402
from normonnx.zoo.data import HELDOUT_SEED, TRAIN_SEED, heldout_set, train_set  # noqa: E402

SEED = 0
TARGET_ACCURACY = 0.9


def _targets(entry: ZooEntry, data, idx):
    return torch.from_numpy(data.masks[idx] if entry.task == "segment" else data.labels[idx])


def accuracy(model: nn.Module, entry: ZooEntry, data, batch: int = 250) -> float:
    """Top-1 accuracy (per pixel for segmentation) on a data set."""
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for start in range(0, len(data.labels), batch):
            idx = np.arange(start, min(start + batch, len(data.labels)))
            pred = model(torch.from_numpy(data.images[idx])).argmax(dim=1)
            target = _targets(entry, data, idx)
            hits += int((pred == target).sum())
            total += target.numel()
    return hits / total


def _freeze(trained: ResNetBN) -> FrozenBackbone:
    """FrozenBackbone with the trained network's weights and its BatchNorms frozen."""
    frozen = FrozenBackbone()
    for name, module in trained.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            parent = frozen.net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else frozen.net
            setattr(parent, name.rsplit(".", 1)[-1], FrozenBatchNorm2d.from_batchnorm(module))
    state = {k: v for k, v in trained.state_dict().items() if "num_batches_tracked" not in k}
    frozen.net.load_state_dict(state)
    return frozen.eval()


def train(entry: ZooEntry, train_data, heldout) -> tuple[nn.Module, dict]:
    torch.manual_seed(SEED)
    model = ResNetBN() if entry.name == "frozen_backbone" else entry.builder()
    lr = 1e-3 if entry.name in ("vit_ln", "rms_transformer") else 3e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = entry.epochs * (len(train_data.labels) // entry.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.2)
    order = np.random.default_rng(SEED)
    start = time.perf_counter()
    losses = []
    for _ in range(entry.epochs):
        model.train()
        perm = order.permutation(len(train_data.labels))
        for b in range(len(perm) // entry.batch):
            idx = perm[b * entry.batch : (b + 1) * entry.batch]
            logits = model(torch.from_numpy(train_data.images[idx]))
            loss = F.cross_entropy(logits, _targets(entry, train_data, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    if entry.name == "frozen_backbone":
        model = _freeze(model)
    model.eval()
    record = {
        "name": entry.name,
        "families": list(entry.families),
        "task": entry.task,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": entry.epochs,
        "batch": entry.batch,
        "optimizer": f"AdamW lr {lr} one-cycle, weight decay 1e-4",
        "seed": SEED,
        "data": {"train": [len(train_data.labels), TRAIN_SEED], "heldout": [len(heldout.labels), HELDOUT_SEED]},
        "final_loss": float(np.mean(losses[-20:])),
        "heldout_accuracy": accuracy(model, entry, heldout),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": entry.note,
    }
    return model, record


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated zoo names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    names = args.only.split(",") if args.only else list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        parser.error(f"unknown zoo names: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    train_data, heldout = train_set(), heldout_set()
    worst = 1.0
    for name in names:
        model, record = train(ZOO[name], train_data, heldout)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(args.out / f"{name}.safetensors"))
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        worst = min(worst, record["heldout_accuracy"])
        print(
            f"{name:<16} held-out accuracy {record['heldout_accuracy']:.4f}  {record['parameters']:>7} params"
            f"  {record['train_seconds']:6.1f} s",
            flush=True,
        )
    if worst < TARGET_ACCURACY:
        print(f"FAILED: an accuracy below {TARGET_ACCURACY}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
