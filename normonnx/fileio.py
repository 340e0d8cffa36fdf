"""Atomic file writing: a temporary sibling, flushed, then renamed into place.

An interrupted run leaves either the previous file or the new one, never a
half-written one, and never a stray temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def temporary_sibling(dst: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden file next to ``dst``; removed on exit unless it was renamed away."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    dst = Path(dst)
    with temporary_sibling(dst) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    return dst


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(dst, text.encode("utf-8"))


def write_json_atomic(dst: str | os.PathLike, data: object) -> Path:
    return write_text_atomic(dst, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    """numpy scalars and the like, as plain JSON values."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
