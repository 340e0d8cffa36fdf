"""The reference zoo: committed checkpoints load, reach their recorded accuracy, and stay small."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from normonnx.families import BY_KEY  # noqa: E402
from normonnx.torchfront.checkpoint import apply_checkpoint  # noqa: E402
from normonnx.torchfront.strip import count_norms, strip_norms  # noqa: E402
from normonnx.zoo import CHECKPOINTS, ZOO  # noqa: E402
from normonnx.zoo.data import CLASSES, generate, heldout_set  # noqa: E402


def test_data_is_deterministic_and_balanced():
    a, b = generate(200, 7), generate(200, 7)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) == set(range(len(CLASSES)))
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == np.float32
    assert 0.05 < a.masks.mean() < 0.4


def test_checkpoints_are_small():
    total = sum(p.stat().st_size for p in CHECKPOINTS.glob("*.safetensors"))
    assert len(list(CHECKPOINTS.glob("*.safetensors"))) == len(ZOO)
    assert total < 4 << 20


@pytest.mark.parametrize("name", list(ZOO))
def test_checkpoint_reproduces_its_recorded_accuracy(name):
    entry = ZOO[name]
    record = json.loads((CHECKPOINTS / f"{name}.json").read_text())
    assert record["families"] == list(entry.families)
    assert all(f in BY_KEY for f in entry.families)
    model = entry.builder()
    apply_checkpoint(model, entry.checkpoint)
    model.eval()
    data = heldout_set()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.images)).argmax(dim=1).numpy()
    target = data.masks if entry.task == "segment" else data.labels
    accuracy = float((pred == target).mean())
    assert accuracy == pytest.approx(record["heldout_accuracy"], abs=2e-3)
    assert accuracy >= 0.95


def test_counting_and_stripping_normalizations():
    model = ZOO["bcn_micro"].builder()
    assert count_norms(model) == {"batchchannelnorm": 3, "weightstd": 3}
    stripped = strip_norms(model)
    assert count_norms(stripped) == {}
    x = torch.randn(1, 3, 32, 32)
    assert stripped(x).shape == model.eval()(x).shape
    assert count_norms(ZOO["weightnorm_cnn"].builder()) == {"weightnorm": 4}
    assert count_norms(strip_norms(ZOO["weightnorm_cnn"].builder())) == {}


@pytest.mark.slow
def test_training_script_reproduces_a_checkpoint(tmp_path):
    from safetensors.torch import load_file

    import scripts.train_reference as train

    assert train.main(["--only", "bcn_micro", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bcn_micro.json").read_text())
    committed = json.loads((CHECKPOINTS / "bcn_micro.json").read_text())
    assert record["heldout_accuracy"] == pytest.approx(committed["heldout_accuracy"], abs=0.01)
    new, old = load_file(tmp_path / "bcn_micro.safetensors"), load_file(CHECKPOINTS / "bcn_micro.safetensors")
    assert new.keys() == old.keys()
