"""graph/checked_load.py: onnx's checker judges a source in the warm worker while fold and emit work, and its
verdict is heard before anything is written, in place of whatever an invalid source led to."""

from __future__ import annotations

import onnx
import pytest

from normonnx.errors import ModelLoadError
from normonnx.graph import modelio
from normonnx.graph.checked_load import load_checked_meanwhile
from normonnx.pipelines.fold import fold_file
from tests.conftest import conv_bn_model


def _cyclic(path):
    model = conv_bn_model()
    model.graph.node[0].input[0] = model.graph.node[-1].output[0]
    onnx.save(model, path)
    return path


def test_the_check_runs_in_the_worker_and_its_verdict_is_heard_later(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), path)

    def refuse(*args, **kwargs):
        raise onnx.checker.ValidationError("checked in the folding process")

    # The checker in this process would refuse everything: the verdict comes from the worker's.
    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    model, verdict = load_checked_meanwhile(path, load_weights=False, isolated=True, verify=True)
    assert model == onnx.load(str(path))
    verdict()


def test_an_invalid_source_is_loaded_and_its_verdict_raises_the_load_error(tmp_path):
    path = _cyclic(tmp_path / "cyclic.onnx")
    with pytest.raises(ModelLoadError) as here:
        modelio.load_model(path)
    model, verdict = load_checked_meanwhile(path, load_weights=False, isolated=True, verify=True)
    assert len(model.graph.node) == len(conv_bn_model().graph.node)
    with pytest.raises(ModelLoadError) as there:
        verdict()
    assert str(there.value) == str(here.value) and "topologically sorted" in str(here.value)


def test_without_a_worker_the_source_is_checked_at_once(tmp_path, monkeypatch):
    path = _cyclic(tmp_path / "cyclic.onnx")
    with pytest.raises(ModelLoadError, match="topologically sorted"):
        load_checked_meanwhile(path, load_weights=False, isolated=False, verify=True)
    import normonnx.graph.checked_load as checked_load

    monkeypatch.setattr(checked_load, "shared_worker_started", lambda: False)
    with pytest.raises(ModelLoadError, match="topologically sorted"):  # --no-verify from Python: no worker
        load_checked_meanwhile(path, load_weights=False, isolated=True, verify=False)


@pytest.mark.parametrize("verify", [True, False])
def test_fold_of_an_invalid_source_reports_the_checker_and_writes_nothing(tmp_path, verify):
    """The fold of a cyclic graph fails on its own (it cannot be sorted): the checker's verdict is the error."""
    path = _cyclic(tmp_path / "cyclic.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(ModelLoadError, match=r"cyclic\.onnx: not a valid ONNX model"):
        fold_file(path, out, verify=verify)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cyclic.onnx"]
