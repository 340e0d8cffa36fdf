"""Atomic file writing: a temporary sibling, flushed, then renamed into place.

An interrupted run leaves either the previous file or the new one, never a
half-written one, and never a stray temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TAG = "normonnx"


def regular_file_size(path: Path, limit: int, too_large: str) -> int | str:
    """The size of a readable, non-empty regular file under ``limit`` bytes, or what is wrong with it.

    Checked with stat before anything opens the file: a FIFO or a device would block or never end.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return "is empty"
    if st.st_size > limit:
        return f"is {st.st_size} bytes, {too_large}"
    return st.st_size


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Temporaries a killed normonnx left next to ``dst`` (named by its dead pid); nothing else is touched."""
    dst = Path(dst)
    removed = []
    for tmp in dst.parent.glob(f".{dst.name}.{_TAG}-*.tmp"):
        try:
            pid = int(tmp.name[len(f".{dst.name}.{_TAG}-") :].split(".", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _mode_for(dst: Path) -> int:
    """The permissions ``dst`` should get: those of the file it replaces, else what umask allows.

    mkstemp creates 0600 files; a model nobody else can read is not deployable.
    """
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(dst).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def temporary_sibling(dst: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden file next to ``dst``; removed on exit unless it was renamed away.

    Its name carries normonnx's pid, so a later run can tell the leftovers of
    a killed run (``remove_stale_temporaries``) from anybody else's files.
    """
    from normonnx.errors import OutputError

    dst = Path(dst)
    remove_stale_temporaries(dst)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.{_TAG}-{os.getpid()}.", suffix=".tmp", dir=dst.parent)
    except OSError as e:
        raise OutputError(f"{dst}: cannot write in {dst.parent} ({e.strerror})") from None
    try:
        os.fchmod(fd, _mode_for(dst))
    finally:
        os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    from normonnx.errors import OutputError

    dst = Path(dst)
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: folder {dst.parent} does not exist")
    with temporary_sibling(dst) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except OSError as e:
            raise OutputError(f"{dst}: cannot be written ({e.strerror})") from None
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
