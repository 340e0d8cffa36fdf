"""Safe loading and atomic saving."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from normonnx.errors import ModelLoadError, OutputError
from normonnx.graph import modelio
from tests.conftest import conv_bn_model


def _save_external(model: onnx.ModelProto, path, location="weights.bin"):
    onnx.save(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )


def _set_location(path, location: str, **fields) -> None:
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            if e.key in fields:
                e.value = str(fields[e.key])
    onnx.save(m, path)


def test_roundtrip_with_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    model = modelio.load_model(path)
    assert not modelio.has_external_data(model)
    ref = onnx.load(path)
    assert [onnx.numpy_helper.to_array(t).sum() for t in model.graph.initializer] == [
        onnx.numpy_helper.to_array(t).sum() for t in ref.graph.initializer
    ]


@pytest.mark.parametrize(
    "location,expected",
    [
        ("../weights.bin", "leaves the model's folder"),
        ("/etc/passwd", "not relative"),
        ("nothere.bin", "does not exist"),
    ],
)
def test_external_locations_are_validated_before_reading(tmp_path, location, expected):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    _set_location(path, location)
    with pytest.raises(ModelLoadError, match=expected) as e:
        modelio.load_model(path)
    assert str(path) in str(e.value)


def test_symlinked_and_hardlinked_weights_are_refused(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    (tmp_path / "link.bin").symlink_to(tmp_path / "weights.bin")
    _set_location(path, "link.bin")
    with pytest.raises(ModelLoadError, match="symbolic link"):
        modelio.load_model(path)
    os.link(tmp_path / "weights.bin", tmp_path / "hard.bin")
    _set_location(path, "hard.bin")
    with pytest.raises(ModelLoadError, match="2 hard links"):
        modelio.load_model(path)


def test_length_past_the_end_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    _set_location(path, "weights.bin", length=10**9)
    with pytest.raises(ModelLoadError, match="past the end"):
        modelio.load_model(path)


def test_unsupported_versions_are_refused(tmp_path):
    m = conv_bn_model()
    m.ir_version = 99
    onnx.save(m, tmp_path / "ir.onnx")
    with pytest.raises(ModelLoadError, match="ir_version 99"):
        modelio.load_model(tmp_path / "ir.onnx")
    m = conv_bn_model()
    m.opset_import[0].version = 99
    onnx.save(m, tmp_path / "op.onnx")
    with pytest.raises(ModelLoadError, match="opset 99"):
        modelio.load_model(tmp_path / "op.onnx")


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    modelio.save_model(conv_bn_model(), out)
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_save_refuses_a_model_the_checker_rejects_and_keeps_the_previous_file(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    bad = conv_bn_model()
    bad.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(OutputError, match=r"fails onnx\.checker"):
        modelio.save_model(bad, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
    monkeypatch.setattr(modelio, "_EXTERNAL_MIN_TENSOR_BYTES", 0)
    model = conv_bn_model()
    out = tmp_path / "big.onnx"
    modelio.save_model(model, out)
    assert (tmp_path / "big.onnx.data").exists()
    loaded = modelio.load_model(out)
    assert np.array_equal(
        onnx.numpy_helper.to_array(loaded.graph.initializer[0]), onnx.numpy_helper.to_array(model.graph.initializer[0])
    )
    assert not modelio.has_external_data(model)  # the caller's proto is restored


def test_an_existing_weight_file_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
    monkeypatch.setattr(modelio, "_EXTERNAL_MIN_TENSOR_BYTES", 0)
    decoy = tmp_path / "big.onnx.data"
    decoy.write_bytes(b"somebody else's data")
    modelio.save_model(conv_bn_model(), tmp_path / "big.onnx")
    assert decoy.read_bytes() == b"somebody else's data"
    assert (tmp_path / "big.onnx.1.data").exists()
    assert modelio.load_model(tmp_path / "big.onnx").graph.node


def test_replacing_an_external_output_keeps_the_previous_one_whole_until_the_end(tmp_path, monkeypatch):
    """The new weights get a new name; the replaced output's are reported, never deleted."""
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
    monkeypatch.setattr(modelio, "_EXTERNAL_MIN_TENSOR_BYTES", 0)
    first = modelio.save_model(conv_bn_model(0), tmp_path / "out.onnx")
    assert first.stale == []
    second = modelio.save_model(conv_bn_model(1), tmp_path / "out.onnx")
    assert second.stale == ["out.onnx.data"] and (tmp_path / "out.onnx.data").exists()
    loaded = modelio.load_model(tmp_path / "out.onnx")
    expected = conv_bn_model(1).graph.initializer[0]
    assert np.array_equal(onnx.numpy_helper.to_array(loaded.graph.initializer[0]), onnx.numpy_helper.to_array(expected))


def test_external_data_without_a_length_is_read_by_its_dims(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        kept = [(e.key, e.value) for e in t.external_data if e.key != "length"]
        del t.external_data[:]
        for k, v in kept:
            e = t.external_data.add()
            e.key, e.value = k, v
    onnx.save(m, path)
    loaded = modelio.load_model(path)
    ref = conv_bn_model()
    for a, b in zip(loaded.graph.initializer, ref.graph.initializer, strict=True):
        assert np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_a_length_that_disagrees_with_the_dims_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    _save_external(conv_bn_model(), path)
    _set_location(path, "weights.bin", length=4)
    with pytest.raises(ModelLoadError, match="dims and type call for"):
        modelio.load_model(path)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_new_outputs_get_the_umask_permissions_not_mkstemps_0600(tmp_path, monkeypatch):
    """A deployed model must be readable by the service that loads it."""
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
    monkeypatch.setattr(modelio, "_EXTERNAL_MIN_TENSOR_BYTES", 0)
    old = os.umask(0o022)
    try:
        modelio.save_model(conv_bn_model(), tmp_path / "big.onnx")
        expected = _umask_mode()
    finally:
        os.umask(old)
    assert expected == 0o644
    assert (tmp_path / "big.onnx").stat().st_mode & 0o777 == expected
    assert (tmp_path / "big.onnx.data").stat().st_mode & 0o777 == expected


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    out.chmod(0o640)
    modelio.save_model(conv_bn_model(), out)
    assert out.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("external", [False, True])
def test_a_staged_model_knows_its_size_on_disk_without_parsing(tmp_path, monkeypatch, external):
    if external:
        monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)
        monkeypatch.setattr(modelio, "_EXTERNAL_MIN_TENSOR_BYTES", 0)
    with modelio.staged_save(conv_bn_model(), tmp_path / "m.onnx") as staged:
        assert (staged.data_name is not None) == external
        assert staged.disk_bytes() == modelio.disk_bytes(staged.path) > 0


def test_onnxruntime_contrib_ops_load_and_are_listed_never_rewritten(tmp_path, cli):
    """An onnxruntime-optimized transformer: SimplifiedLayerNormalization (registered by onnxruntime in the
    default domain, unknown to onnx's checker) and com.microsoft.SkipLayerNormalization."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = numpy_helper.from_array(np.linspace(0.5, 1.5, 16).astype(np.float32), "g")
    beta = numpy_helper.from_array(np.zeros(16, np.float32), "beta")
    w = numpy_helper.from_array(np.eye(16, dtype=np.float32), "W")
    nodes = [
        helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["s"], axis=-1, epsilon=1e-5),
        helper.make_node("SkipLayerNormalization", ["s", "x", "g", "beta"], ["t"], domain="com.microsoft"),
        helper.make_node("MatMul", ["t", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 16])],
        [g, beta, w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    src, out = tmp_path / "ort_optimized.onnx", tmp_path / "folded.onnx"
    onnx.save(model, src)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(src))  # what refused these files before
    listed = cli("inspect", src)
    assert listed.code == 0 and "onnxruntime op" in listed.out and "SkipLayerNormalization" in listed.out
    folded = cli("fold", src, "-o", out)
    assert folded.code == 0, folded.err
    assert "does not know: SimplifiedLayerNormalization x1, com.microsoft.SkipLayerNormalization x1" in folded.out
    assert [n.op_type for n in onnx.load(out).graph.node] == [n.op_type for n in nodes]
    assert cli("check", out, "--against", src).code == 0
    assert cli("bench", src, "--runs", "2", "--warmup", "0").code == 0


def _torch_zip(path, member="archive/data.pkl"):
    """What torch.save writes (a zip whose pickle is archive/data.pkl), without importing torch."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, b"\x80\x02}q\x00.")


def _safetensors(path):
    import json
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("model.pt", _torch_zip, "a PyTorch checkpoint (torch.save), not an ONNX model: export it"),
        ("looks.onnx", _torch_zip, "a PyTorch checkpoint (torch.save)"),
        ("scripted.pt", lambda p: _torch_zip(p, "m/constants.pkl"), "a TorchScript archive (torch.jit.save)"),
        ("old.pth", lambda p: p.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."), "legacy torch.save"),
        ("w.safetensors", _safetensors, "a safetensors file (weights only)"),
        ("cut.onnx", lambda p: p.write_bytes(conv_bn_model().SerializeToString()[:-40]), "the file is truncated"),
        ("noise.onnx", lambda p: p.write_bytes(bytes(range(256)) * 4), "the file is damaged or of another format"),
    ],
)
def test_a_file_that_is_not_onnx_is_named_for_what_it_is(tmp_path, name, make, expected):
    """protobuf says "Wire format was corrupt" for all of these; normonnx says what the file is."""
    path = tmp_path / name
    make(path)
    with pytest.raises(ModelLoadError) as e:
        modelio.load_model(path)
    assert expected in str(e.value) and str(path) in str(e.value)
    assert "Wire format" not in str(e.value)


def test_the_weight_files_a_model_names_are_found_without_parsing_a_file_that_names_none(tmp_path, monkeypatch):
    """The output a fold replaces is looked at on every run: a file without the bytes b"location" names no
    weight file and is not parsed; one with external data is parsed and its file named."""
    plain, external = tmp_path / "plain.onnx", tmp_path / "ext.onnx"
    onnx.save(conv_bn_model(), plain)
    _save_external(conv_bn_model(), external)
    parsed = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda path, **kw: parsed.append(os.path.basename(path)) or real_load(path, **kw))
    modelio._external_locations.cache_clear()
    assert modelio._referenced_files(plain) == [] and parsed == []
    assert modelio._referenced_files(external) == ["weights.bin"] and parsed == ["ext.onnx"]


def test_a_staged_model_the_checker_rejects_is_refused_even_when_its_verification_failed_first(tmp_path):
    """The checker runs beside the verification now: its verdict still wins over whatever came after it."""
    bad = conv_bn_model()
    bad.graph.node[0].input[0] = "undefined_tensor"
    out = tmp_path / "out.onnx"
    with pytest.raises(OutputError, match=r"fails onnx\.checker"), modelio.staged_save(bad, out):
        raise RuntimeError("onnxruntime could not load it")
    with pytest.raises(OutputError, match=r"fails onnx\.checker"), modelio.staged_save(bad, out) as staged:
        staged.commit()
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_file_the_disk_did_not_take_is_never_committed(tmp_path, monkeypatch):
    """The staged file is fsynced on a thread while it is checked and verified; the commit waits for the
    sync, and a sync that failed (a full or failing disk) leaves the previous output in place."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(modelio.os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match=r"out\.onnx: could not be written to disk \(Input/output error\)"):
        modelio.save_model(conv_bn_model(), out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_the_commit_waits_for_the_sync(tmp_path, monkeypatch):
    import threading
    import time

    synced = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.3)
        real_fsync(fd)
        synced.set()

    monkeypatch.setattr(modelio.os, "fsync", slow_fsync)
    out = tmp_path / "out.onnx"
    modelio.save_model(conv_bn_model(), out)
    assert synced.is_set() and out.exists()


def test_tensor_sizes_come_from_dims_and_type_without_reading_the_data(monkeypatch):
    """protobuf's Python API copies raw_data on every read: sizes are known from dims and type instead."""
    from onnx import numpy_helper

    model = conv_bn_model()
    typed = onnx.helper.make_tensor("typed", onnx.TensorProto.INT64, [5], list(range(5)))  # int64_data, not raw
    model.graph.initializer.append(typed)
    want = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert modelio.tensor_bytes(model) == want
    assert [modelio.expected_bytes(t) for t in model.graph.initializer] == [
        numpy_helper.to_array(t).nbytes for t in model.graph.initializer
    ]


def test_the_protobuf_limit_is_judged_from_tensor_sizes_until_they_come_close(monkeypatch):
    """upb's ByteSize serializes the whole model: it is asked only when the tensors alone near 2 GiB."""
    model = conv_bn_model()
    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", 1)  # any serialized model is over this
    assert not modelio.over_protobuf_limit(model)  # the tensors are far from the threshold: not serialized
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 0)
    assert modelio.over_protobuf_limit(model)  # close to it: measured
    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", len(model.SerializeToString()) + 1)
    assert not modelio.over_protobuf_limit(model)


def test_string_tensors_count_in_the_tensor_data():
    model = conv_bn_model()
    before = modelio.tensor_bytes(model)
    vocab = onnx.helper.make_tensor("vocab", onnx.TensorProto.STRING, [2], [b"abc", b"defgh"])
    model.graph.initializer.append(vocab)
    assert modelio.tensor_bytes(model) == before + 8
