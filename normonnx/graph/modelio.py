"""Loading and saving ONNX files safely.

Loading: the file is checked before protobuf sees it (a regular file, not
empty, under the protobuf limit), the model after (a graph, an ir_version and
default opset this onnx knows), and every external-data reference before any
byte of it is read (relative, inside the model's folder, no ``..`` or NUL, not
a symlink, one hard link, offset and length inside the file). Weights are read
by normonnx itself, never by a library that would follow the reference blindly.

Saving: never over an input, always through a temporary file in the destination
folder that is checked and then renamed into place, weights first, model
last, so an interrupted run leaves the previous output intact.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from normonnx.errors import ModelLoadError, OutputError, first_line
from normonnx.fileio import temporary_sibling

PROTOBUF_LIMIT = 2**31 - 1
# Models whose tensors add up to more than this are saved with external data.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000
_EXTERNAL_MIN_TENSOR_BYTES = 1024


def _fail(path: Path, problem: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: {problem}")


def _precheck_file(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not an ONNX file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "is not a regular file")
    if st.st_size == 0:
        raise _fail(path, "is empty")
    if st.st_size > PROTOBUF_LIMIT:
        raise _fail(path, f"is {st.st_size} bytes, over protobuf's 2 GiB limit; store weights as external data")
    return st.st_size


def _parse(path: Path) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise _fail(path, f"not an ONNX model (protobuf parse failed: {first_line(e)})") from None
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror})") from None
    return model


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise _fail(path, "not an ONNX model (no graph)")
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise _fail(
            path, f"ir_version {model.ir_version} is not supported by onnx {onnx.__version__} (3..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        raise _fail(path, "imports no version of the default ONNX opset")
    if not 1 <= default[0] <= newest:
        raise _fail(path, f"opset {default[0]} is not supported by onnx {onnx.__version__} (1..{newest})")


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse parts, attributes, subgraphs, functions."""

    def from_attributes(attrs) -> Iterator[onnx.TensorProto]:
        for a in attrs:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values
                yield a.sparse_tensor.indices
            for sp in a.sparse_tensors:
                yield sp.values
                yield sp.indices
            if a.HasField("g"):
                yield from from_graph(a.g)
            for g in a.graphs:
                yield from from_graph(g)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in graph.node:
            yield from from_attributes(node.attribute)

    yield from from_graph(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from from_attributes(node.attribute)


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _resolve_external(path: Path, tensor: onnx.TensorProto) -> tuple[Path, int, int | None]:
    """Validate one external-data reference; return (file, offset, length)."""
    fields = _external_fields(tensor)
    location = fields.get("location", "")
    what = f"tensor '{tensor.name}' external data"
    if not location:
        raise _fail(path, f"{what} has no location")
    if "\x00" in location:
        raise _fail(path, f"{what} location contains a NUL byte")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or ":" in location:
        raise _fail(path, f"{what} location '{location}' is not relative to the model")
    if ".." in rel.parts or "\\" in location:
        raise _fail(path, f"{what} location '{location}' leaves the model's folder")
    base = path.resolve().parent
    target = base / rel
    try:
        lst = os.lstat(target)
    except FileNotFoundError:
        raise _fail(path, f"{what} file '{location}' does not exist") from None
    if stat.S_ISLNK(lst.st_mode):
        raise _fail(path, f"{what} file '{location}' is a symbolic link")
    if not stat.S_ISREG(lst.st_mode):
        raise _fail(path, f"{what} file '{location}' is not a regular file")
    if lst.st_nlink != 1:
        raise _fail(path, f"{what} file '{location}' has {lst.st_nlink} hard links")
    if target.resolve().parent != base and base not in target.resolve().parents:
        raise _fail(path, f"{what} file '{location}' resolves outside the model's folder")
    try:
        offset = int(fields.get("offset", "0"))
        length = int(fields["length"]) if "length" in fields else None
    except ValueError:
        raise _fail(path, f"{what} has a non-numeric offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise _fail(path, f"{what} has a negative offset or length")
    end = offset + (length if length is not None else 0)
    if offset > lst.st_size or end > lst.st_size:
        raise _fail(path, f"{what} ends at byte {end}, past the end of '{location}' ({lst.st_size} bytes)")
    return target, offset, length


def _read_external(path: Path, tensor: onnx.TensorProto) -> None:
    target, offset, length = _resolve_external(path, tensor)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags)
    try:
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
            data = f.read() if length is None else f.read(length)
    except OSError as e:
        raise _fail(path, f"tensor '{tensor.name}' external data cannot be read ({e.strerror})") from None
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def load_model(path: str | os.PathLike, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX file; raises ModelLoadError with a one-line reason."""
    path = Path(path)
    _precheck_file(path)
    model = _parse(path)
    _check_versions(path, model)
    external = [t for t in iter_tensors(model) if uses_external_data(t)]
    for tensor in external:
        _resolve_external(path, tensor)
    if load_weights:
        for tensor in external:
            _read_external(path, tensor)
    return model


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(uses_external_data(t) for t in iter_tensors(model))


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Approximate bytes of tensor data, without serializing the model."""
    total = 0
    for t in iter_tensors(model):
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data) + len(t.uint64_data)
            )
    return total


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _protected_files(inputs: Sequence[Path]) -> list[Path]:
    """The inputs and the external-data files they reference."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        files.append(p)
        with contextlib.suppress(Exception):
            m = onnx.load(str(p), load_external_data=False)
            for t in iter_tensors(m):
                loc = _external_fields(t).get("location")
                if uses_external_data(t) and loc:
                    files.append(p.parent / loc)
    return files


def check_output_path(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that is an input, or one of an input's weight files."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    data = out.parent / (out.name + ".data")
    if not out.exists() and not data.exists():
        return  # nothing there to overwrite
    for p in _protected_files(inputs):
        if _same_file(out, p) or out.resolve() == Path(p).resolve():
            raise OutputError(f"{out}: refusing to write over the input {p}")
        if _same_file(data, p):
            raise OutputError(f"{out}: its weight file {data.name} would overwrite the input's weights {p}")


def _write_with_external_data(model: onnx.ModelProto, model_tmp: Path, data_tmp: Path, data_name: str) -> None:
    """Move large tensors to one data file; the proto is restored afterwards."""
    moved: list[tuple[onnx.TensorProto, bytes]] = []
    offset = 0
    try:
        with open(data_tmp, "wb") as data:
            for t in iter_tensors(model):
                if uses_external_data(t) or not t.raw_data or len(t.raw_data) < _EXTERNAL_MIN_TENSOR_BYTES:
                    continue
                pad = (-offset) % 4096
                data.write(b"\0" * pad)
                offset += pad
                raw = t.raw_data
                data.write(raw)
                moved.append((t, raw))
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
                offset += len(raw)
            data.flush()
            os.fsync(data.fileno())
        with open(model_tmp, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
    finally:
        for t, raw in moved:
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = raw


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    full_check: bool = True,
) -> Path:
    """Write ``model`` to ``path`` atomically, never over one of ``inputs``.

    The file is checked with ``onnx.checker`` before it replaces anything;
    a model too large for one protobuf goes to ``<name>.data`` beside it.
    """
    out = Path(path)
    check_output_path(out, [Path(p) for p in inputs])
    external = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_final = out.parent / (out.name + ".data")
    with temporary_sibling(out) as model_tmp, temporary_sibling(data_final) as data_tmp:
        if external:
            if data_final.exists() and not _is_our_weight_file(out, data_final):
                raise OutputError(
                    f"{out}: {data_final.name} exists and was not written for {out.name}; remove it first"
                )
            _write_with_external_data(model, model_tmp, data_tmp, data_final.name)
            # The weight file is not in place yet: check the structure only.
            _check_saved(model_tmp, full_check=False, follow_weights=False)
            os.replace(data_tmp, data_final)
        else:
            with open(model_tmp, "wb") as f:
                f.write(model.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            _check_saved(model_tmp, full_check)
        os.replace(model_tmp, out)
    return out


def _is_our_weight_file(model_path: Path, data_path: Path) -> bool:
    """True when the existing model at ``model_path`` references ``data_path``."""
    if not model_path.exists():
        return False
    with contextlib.suppress(Exception):
        m = onnx.load(str(model_path), load_external_data=False)
        return any(_external_fields(t).get("location") == data_path.name for t in iter_tensors(m))
    return False


def _check_saved(model_tmp: Path, full_check: bool, follow_weights: bool = True) -> None:
    try:
        if follow_weights:
            onnx.checker.check_model(str(model_tmp), full_check=full_check)
        else:
            onnx.checker.check_model(onnx.load(str(model_tmp), load_external_data=False), full_check=False)
    except onnx.checker.ValidationError as e:
        raise OutputError(f"{model_tmp.name}: the model to be written fails onnx.checker: {first_line(e)}") from None
