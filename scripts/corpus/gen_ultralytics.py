"""Ultralytics ONNX exports of YOLO models built from their bundled yaml (random weights, nothing downloaded).

Run in the private venv that has ultralytics. BatchNorm statistics are redrawn before export; ultralytics fuses each
Conv+BatchNorm pair itself while exporting, so they end up inside the Conv weights, as in any real YOLO .onnx.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from _common import Builder, run, seed_for

IMGSZ = 320
OPSET = 12


def _offline() -> None:
    """Keep ultralytics from going online: no pip auto-installs, no analytics, its settings file in our cache."""
    cache = Path(os.environ.get("CORPUS_CACHE", tempfile.gettempdir()))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache / "ultralytics-config"))
    os.environ.setdefault("YOLO_VERBOSE", "false")


def yolo(rel: str, cfg: str) -> Builder:
    def build(path: Path) -> None:
        import torch
        from ultralytics import YOLO
        from ultralytics.utils import SETTINGS

        SETTINGS.update({"sync": False})
        torch.manual_seed(seed_for(rel))
        model = YOLO(cfg)  # a .yaml builds the architecture with random weights; a .pt would be downloaded
        gen = torch.Generator().manual_seed(seed_for(rel))
        with torch.no_grad():
            for m in model.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    n = m.num_features
                    m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                    m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.4)
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="yolo-") as tmp:
            os.chdir(tmp)  # ultralytics writes the export next to the model's file name, i.e. in the cwd
            try:
                made = model.export(
                    format="onnx", opset=OPSET, imgsz=IMGSZ, simplify=False, dynamic=False, device="cpu"
                )
            finally:
                os.chdir(cwd)
            shutil.move(Path(tmp) / made, path)

    return build


if __name__ == "__main__":
    _offline()
    sys.exit(
        run(
            {
                "ultralytics/yolov8n.onnx": yolo("ultralytics/yolov8n.onnx", "yolov8n.yaml"),
                "ultralytics/yolo11n.onnx": yolo("ultralytics/yolo11n.onnx", "yolo11n.yaml"),
            }
        )
    )
