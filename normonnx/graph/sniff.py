"""What a file that does not parse as ONNX is, said in words a user can act on.

protobuf says "Wire format was corrupt" for a PyTorch checkpoint, a
safetensors file, a half-downloaded model and random bytes alike. Here the
first bytes tell the formats users confuse with ONNX, and a walk over the
top-level protobuf fields tells a truncated file (a field that runs past the
end) from a damaged one.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

_EXPORT = "export it to ONNX with: normonnx export MODULE:FACTORY --checkpoint {path} -o model.onnx"


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return (
            "a TorchScript archive (torch.jit.save), not an ONNX model: export the nn.Module it was scripted"
            " from with: normonnx export MODULE:FACTORY -o model.onnx"
        )
    if any(n.endswith("data.pkl") for n in names):
        return "a PyTorch checkpoint (torch.save), not an ONNX model: " + _EXPORT
    return "a zip archive, not an ONNX model"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= size - 8 or head[8:9] != b"{":
        return False
    try:
        json.loads(head[8 : 8 + length])
    except (ValueError, UnicodeDecodeError):
        return length > len(head) - 8  # the header runs past what was read: still JSON-looking
    return True


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def _truncation(data: bytes) -> str | None:
    """How a protobuf message's top-level fields run past the end of ``data`` (None: they do not)."""
    pos = 0
    while pos < len(data):
        tag = _varint(data, pos)
        if tag is None:
            return f"it ends inside a field tag at byte {len(data)}"
        key, pos = tag
        wire = key & 7
        if wire == 0:
            value = _varint(data, pos)
            if value is None:
                return f"it ends inside a value at byte {len(data)}"
            pos = value[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length = _varint(data, pos)
            if length is None:
                return f"it ends inside a length at byte {len(data)}"
            size, pos = length
            if pos + size > len(data):
                return f"field {key >> 3} needs {pos + size - len(data)} more bytes than the file has"
            pos += size
        else:
            return None  # not a wire format: damaged, not cut short
        if pos > len(data):
            return f"it ends inside field {key >> 3}"
    return None


def what_it_is(path: Path) -> str:
    """Why ``path`` did not parse as an ONNX model, and what to do."""
    with open(path, "rb") as f:
        data = f.read()
    head = data[:4096]
    name = path.suffix.lower()
    if head.startswith(b"PK\x03\x04"):
        return (_zip_kind(path) or "a zip archive, not an ONNX model").format(path=path)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a PyTorch checkpoint (legacy torch.save)" if name in (".pt", ".pth", ".bin") else "a Python pickle"
        return f"{kind}, not an ONNX model: " + _EXPORT.format(path=path)
    if _is_safetensors(head, len(data)):
        return "a safetensors file (weights only), not an ONNX model: " + _EXPORT.format(path=path)
    if not data:
        return "the file is empty"
    cut = _truncation(data)
    if cut is not None:
        return f"the file is truncated ({len(data)} bytes; {cut}): copy or download it again"
    return "not an ONNX model (protobuf cannot parse it: the file is damaged or of another format)"
