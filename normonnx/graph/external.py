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
from onnx.external_data_helper import ExternalDataInfo, set_external_data

from normonnx.errors import UnusableInputError
from normonnx.fileio import temporary_sibling

ALIGN = 4096


def set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Point ``tensor`` at bytes on disk (the fields written by onnx's own helper)."""
    del tensor.external_data[:]
    tensor.raw_data = b""  # onnx's helper insists on the field; the bytes live on disk
    set_external_data(tensor, location, offset, length)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL


def read_external(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values from its (absolute, validated) external location: normonnx's own guarded reader."""
    info = ExternalDataInfo(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    wanted = count * dtype.itemsize
    try:
        fd = os.open(info.location, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            data = os.pread(fd, wanted, int(info.offset or 0))
        finally:
            os.close(fd)
    except OSError as e:
        raise UnusableInputError(f"{info.location}: tensor '{tensor.name}' cannot be read ({e.strerror})") from None
    if len(data) != wanted:
        raise UnusableInputError(f"{info.location}: {len(data)} bytes of tensor '{tensor.name}', {wanted} expected")
    return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims)).copy()


class SpillStore:
    """An append-only file of computed weights next to the output, removed when closed."""

    def __init__(self, beside: str | os.PathLike) -> None:
        self._ctx = temporary_sibling(Path(beside).with_name(Path(beside).name + ".spill"))
        self.path = self._ctx.__enter__()
        self._file = open(self.path, "r+b")  # noqa: SIM115 (held open until close())
        self._offset = 0

    def put(self, name: str, values: np.ndarray) -> onnx.TensorProto:
        """Append ``values``; the returned tensor points at them (read them with ``read_external``)."""
        values = np.ascontiguousarray(values)
        pad = (-self._offset) % ALIGN
        self._file.seek(self._offset + pad)
        self._file.write(values.tobytes())
        offset, self._offset = self._offset + pad, self._offset + pad + values.nbytes
        self._file.flush()
        proto = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype))
        proto.dims.extend(values.shape)
        set_location(proto, str(self.path), offset, values.nbytes)
        return proto

    def close(self) -> None:
        self._file.close()
        self._ctx.__exit__(None, None, None)
