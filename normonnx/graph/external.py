"""Weights that stay on disk: models over 2 GB, folded without holding their weights in memory.

A model with external data is loaded without its weights (every reference
validated by modelio first) and each reference is made absolute, so that
only normonnx's own reader -- never a library resolving paths against the
current directory -- touches the files. A weight is read when a pass asks
for it and dropped after; a weight a pass computes is appended to a spill
file next to the output at once. Saving then streams every weight, from the
input's files or the spill, into the output's single data file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from normonnx.errors import UnusableInputError
from normonnx.fileio import temporary_sibling

ALIGN = 4096


def _fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def read_external(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values from its (absolute, validated) external location."""
    fields = _fields(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    wanted = count * dtype.itemsize
    try:
        fd = os.open(fields["location"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            data = os.pread(fd, wanted, int(fields.get("offset", "0")))
        finally:
            os.close(fd)
    except OSError as e:
        raise UnusableInputError(
            f"{fields['location']}: tensor '{tensor.name}' cannot be read ({e.strerror})"
        ) from None
    if len(data) != wanted:
        raise UnusableInputError(
            f"{fields['location']}: {len(data)} bytes of tensor '{tensor.name}', {wanted} expected"
        )
    return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims)).copy()


class ExternalValues(LazyValues):
    """graphsurgeon's lazy values, read by normonnx from an absolute validated location."""

    def load(self) -> np.ndarray:
        return read_external(self.tensor)


def absolutize(model: onnx.ModelProto, model_path: str | os.PathLike) -> None:
    """Validate every external reference again and rewrite it as an absolute path with an explicit length."""
    from normonnx.graph.modelio import iter_tensors, resolve_external, uses_external_data

    for t in iter_tensors(model):
        if uses_external_data(t):
            target, offset, length = resolve_external(Path(model_path), t)
            set_location(t, str(target), offset, length)


def attach(graph: gs.Graph) -> None:
    """Make graphsurgeon's lazily loaded external constants read through normonnx."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues):
            proto = t._values.tensor
            if isinstance(proto, onnx.TensorProto) and proto.data_location == onnx.TensorProto.EXTERNAL:
                t._values = ExternalValues(proto)


class SpillStore:
    """An append-only file of computed weights next to the output, removed when closed."""

    def __init__(self, beside: str | os.PathLike) -> None:
        self._ctx = temporary_sibling(Path(beside).with_name(Path(beside).name + ".spill"))
        self.path = self._ctx.__enter__()
        self._file = open(self.path, "r+b")  # noqa: SIM115 (held open until close())
        self._offset = 0

    def put(self, name: str, values: np.ndarray) -> ExternalValues:
        values = np.ascontiguousarray(values)
        pad = (-self._offset) % ALIGN
        self._file.seek(self._offset + pad)
        self._file.write(values.tobytes())
        offset, self._offset = self._offset + pad, self._offset + pad + values.nbytes
        self._file.flush()
        proto = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype))
        proto.dims.extend(values.shape)
        set_location(proto, str(self.path), offset, values.nbytes)
        return ExternalValues(proto)

    def close(self) -> None:
        self._file.close()
        self._ctx.__exit__(None, None, None)
