"""graph/checked_load.py: onnx's checker judges a source in the warm worker while fold and emit work, and its
verdict is heard before anything is written, in place of whatever an invalid source led to."""

from __future__ import annotations

import numpy as np
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
    source = load_checked_meanwhile(path, load_weights=False, isolated=True, verify=True)
    assert source.model == onnx.load(str(path))
    assert source.disk_bytes == path.stat().st_size
    source.verdict()


def test_an_invalid_source_is_loaded_and_its_verdict_raises_the_load_error(tmp_path):
    path = _cyclic(tmp_path / "cyclic.onnx")
    with pytest.raises(ModelLoadError) as here:
        modelio.load_model(path)
    source = load_checked_meanwhile(path, load_weights=False, isolated=True, verify=True)
    assert len(source.model.graph.node) == len(conv_bn_model().graph.node)
    with pytest.raises(ModelLoadError) as there:
        source.verdict()
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


def test_a_relative_path_is_checked_where_the_caller_is_not_where_the_worker_started(tmp_path, monkeypatch):
    from normonnx.isolation import prestart_shared_worker

    prestart_shared_worker()  # started in the test's folder
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    source = load_checked_meanwhile("m.onnx", load_weights=False, isolated=True, verify=True)
    source.verdict()


def _external_invalid(folder):
    """An invalid model (an op onnx does not know) whose weights are in weights.bin."""
    model = conv_bn_model()
    model.graph.node[-1].op_type = "FooBar"
    path = folder / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    return path


def test_the_size_on_disk_counts_the_weight_files_even_when_the_weights_are_read_in(tmp_path):
    """emit reads the weights in: what the source holds on disk is judged before, with its weight file."""
    path = tmp_path / "ext.onnx"
    onnx.save(conv_bn_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    source = load_checked_meanwhile(path, load_weights=True, isolated=True, verify=True)
    source.verdict()
    assert source.disk_bytes == path.stat().st_size + (tmp_path / "weights.bin").stat().st_size
    from onnx import numpy_helper

    for read, saved in zip(source.model.graph.initializer, conv_bn_model().graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(read), numpy_helper.to_array(saved))


def test_the_verdict_wins_over_a_weight_file_that_cannot_be_read(tmp_path, monkeypatch):
    import normonnx.graph.checked_load as checked_load
    from normonnx.errors import UnusableInputError

    def unreadable(path, model):
        raise UnusableInputError(f"{path}: tensor 'W' external data cannot be read (Permission denied)")

    monkeypatch.setattr(checked_load, "read_weights", unreadable)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_checked_meanwhile(_external_invalid(tmp_path), load_weights=True, isolated=True, verify=True)


def test_the_verdict_wins_over_a_spill_file_that_cannot_be_made(tmp_path, monkeypatch):
    """fold keeps the weights of an external-data model on disk and spills new ones beside the output:
    a folder it cannot write in is not what went wrong when the source itself is invalid."""
    import normonnx.graph.external as external
    from normonnx.errors import OutputError

    def read_only(output):
        raise OutputError(f"{output}.spill: cannot write in {tmp_path} (Read-only file system)")

    monkeypatch.setattr(external, "SpillStore", read_only)
    with pytest.raises(ModelLoadError, match=r"ext\.onnx: not a valid ONNX model"):
        fold_file(_external_invalid(tmp_path), tmp_path / "out.onnx", verify=True)
