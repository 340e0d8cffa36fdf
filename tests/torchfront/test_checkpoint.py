"""Checkpoints load without executing anything; every unsafe or broken file is a one-line refusal."""

from __future__ import annotations

import pickle
import struct

import pytest

from normonnx.errors import CheckpointError

torch = pytest.importorskip("torch")
from normonnx.torchfront.checkpoint import apply_checkpoint, load_state_dict  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch exploited",))


def test_safetensors_and_plain_state_dicts_load(tmp_path):
    from safetensors.torch import save_file

    m = _model()
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "nested.pt")
    for name in ("w.safetensors", "w.pt", "nested.pt"):
        fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        apply_checkpoint(fresh, tmp_path / name)
        assert torch.equal(fresh[0].weight, m[0].weight)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="weights_only") as e:
        load_state_dict(path)
    assert not (tmp_path / "exploited").exists()
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_raw_pickle_of_an_exploit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not (tmp_path / "exploited").exists()


def test_pickled_module_and_torchscript_archive_are_refused(tmp_path):
    torch.save(_model(), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(tmp_path / "module.pt")
    torch.jit.save(torch.jit.script(_model()), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        load_state_dict(tmp_path / "scripted.pt")


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "is empty"),
        (b"not a checkpoint at all", "not a readable torch checkpoint"),
        (b"PK\x03\x04truncated", "not a readable torch checkpoint"),
        (b"abc", "not a readable torch checkpoint"),
        (b"hello world", "not a readable torch checkpoint"),
    ],
)
def test_broken_files(tmp_path, content, expected):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(path)


def test_truncated_zip_checkpoint(tmp_path):
    torch.save(_model().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_state_dict(tmp_path / "cut.pt")


def test_oversized_safetensors_header(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        load_state_dict(path)


def test_mismatched_keys_are_named(tmp_path):
    torch.save({"0.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing 0\.bias"):
        apply_checkpoint(_model(), tmp_path / "partial.pt")
    torch.save({**_model().state_dict(), "0.weight": torch.zeros(5, 3, 3, 3)}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="size mismatch"):
        apply_checkpoint(_model(), tmp_path / "shape.pt")
