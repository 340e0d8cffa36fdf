"""graph/wire.py: a model written in pieces is the model protobuf's own writer writes, field for field."""

from __future__ import annotations

import io

import numpy as np
import onnx
from onnx import helper, numpy_helper

from normonnx.graph.wire import write_model
from tests.conftest import conv_bn_model


def _pieces(model: onnx.ModelProto) -> bytes:
    stream = io.BytesIO()
    write_model(model, stream)
    return stream.getvalue()


def _every_field(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a field of each kind set at the model and graph levels, and a large weight (its
    length needs a multi-byte varint)."""
    model.doc_string, model.producer_name, model.model_version = "doc", "tests", 7
    model.metadata_props.add(key="k", value="v")
    model.graph.doc_string = "graph doc"
    model.graph.metadata_props.add(key="gk", value="gv")
    big = numpy_helper.from_array(np.arange(300_000, dtype=np.float32), "unused_big")
    model.graph.initializer.append(big)
    model.graph.value_info.append(helper.make_tensor_value_info("vi", onnx.TensorProto.FLOAT, [1]))
    return model


def test_the_pieces_parse_to_the_model_protobuf_writes():
    model = _every_field(conv_bn_model())
    written = _pieces(model)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(written)
    assert parsed == model
    assert parsed.SerializeToString() == model.SerializeToString()  # the same fields, in protobuf's order
    assert len(written) == len(model.SerializeToString())  # nothing written twice


def test_a_file_written_in_pieces_passes_onnx_checker_and_runs(tmp_path):
    from tests.builders import feeds_for, run_model

    model = conv_bn_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(_pieces(model))
    onnx.checker.check_model(str(path), full_check=True)
    feeds = feeds_for(model)[0]
    for name, value in run_model(model, feeds).items():
        np.testing.assert_array_equal(run_model(onnx.load(str(path)), feeds)[name], value)


def test_fields_this_onnx_does_not_know_are_kept():
    model = conv_bn_model()
    unknown = model.SerializeToString() + b"\xa8\x06\x01"  # field 101 (varint 1): no ModelProto field has it
    with_unknown = onnx.ModelProto()
    with_unknown.ParseFromString(unknown)
    assert _pieces(with_unknown) == with_unknown.SerializeToString()


def test_a_model_without_a_graph_is_written_whole():
    model = onnx.ModelProto(ir_version=8, producer_name="empty")
    assert _pieces(model) == model.SerializeToString()


def test_a_model_over_protobufs_limit_is_refused_as_serializing_it_would_be(monkeypatch):
    import pytest

    import normonnx.graph.wire as wire

    model = conv_bn_model()
    monkeypatch.setattr(wire, "PROTOBUF_LIMIT", len(model.SerializeToString()) - 1)
    with pytest.raises(ValueError, match="2 GiB"):
        _pieces(model)
    monkeypatch.setattr(wire, "PROTOBUF_LIMIT", len(model.SerializeToString()))
    assert onnx.ModelProto.FromString(_pieces(model)) == model  # exactly at the limit: written
