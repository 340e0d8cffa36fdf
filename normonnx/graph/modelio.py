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
import functools
import mmap
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo

from normonnx.errors import ModelLoadError, OutputError, first_line
from normonnx.families import is_default_domain
from normonnx.fileio import regular_file_size, temporary_sibling
from normonnx.graph.external import set_location
from normonnx.graph.wire import PROTOBUF_LIMIT, write_model

_SUB_BYTE_TYPES = {
    getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)
}
# Models whose tensors add up to more than this are saved with external data.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000
_EXTERNAL_MIN_TENSOR_BYTES = 1024


def load_error(path: str | os.PathLike, problem: str) -> ModelLoadError:
    """The error a file that cannot be loaded gets: its path, then the problem."""
    return ModelLoadError(f"{Path(path)}: {problem}")


def _precheck_file(path: Path) -> int:
    size = regular_file_size(path, PROTOBUF_LIMIT, "over protobuf's 2 GiB limit; store weights as external data")
    if isinstance(size, str):
        raise load_error(path, size + (", not an ONNX file" if size == "is a directory" else ""))
    return size


def _parse(path: Path) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except (DecodeError, RuntimeError, ValueError):
        from normonnx.graph.sniff import what_it_is

        raise load_error(path, what_it_is(path)) from None
    except OSError as e:
        raise load_error(path, f"cannot be read ({e.strerror})") from None
    return model


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise load_error(path, "not an ONNX model (no graph)")
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise load_error(
            path, f"ir_version {model.ir_version} is not supported by onnx {onnx.__version__} (3..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    default = [o.version for o in model.opset_import if is_default_domain(o.domain)]
    if not default:
        raise load_error(path, "imports no version of the default ONNX opset")
    if not 1 <= default[0] <= newest:
        raise load_error(path, f"opset {default[0]} is not supported by onnx {onnx.__version__} (1..{newest})")


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a name of its own: for whatever names nodes (half's plan, the nodes
    onnxruntime's quantizer is told to leave alone)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    seen: set[str] = set()
    for k, n in enumerate(out.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{k}__named"
        seen.add(n.name)
    return out


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the bodies of its If/Loop/Scan nodes, at any depth."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from iter_nodes(a.g)
            for g in a.graphs:
                yield from iter_nodes(g)


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


def external_info(tensor: onnx.TensorProto) -> ExternalDataInfo | str:
    """The tensor's external-data fields, parsed by onnx's own helper, or what is wrong with them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys: onnx warns and ignores them, and so do we
        try:
            return ExternalDataInfo(tensor)
        except ValueError as e:
            return f"has an invalid offset or length ({first_line(e)})"


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and type call for (None for types without a fixed size).

    Known without reading the data: protobuf's Python API returns ``raw_data`` as a new copy, so
    ``len(t.raw_data)`` copies every weight it measures.
    """
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or itemsize == 0:
        return None
    if tensor.data_type in _SUB_BYTE_TYPES:
        return (int(np.prod(tensor.dims)) + 1) // 2
    return int(np.prod(tensor.dims)) * itemsize


def raw_bytes(tensor: onnx.TensorProto) -> int:
    """The length of the tensor's ``raw_data``, from its dims and type where they give one (reading
    ``raw_data`` to measure it would copy it)."""
    return expected_bytes(tensor) or len(tensor.raw_data)


def resolve_external(path: Path, tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    """Validate one external-data reference; return (file, offset, length).

    A missing length is the one the tensor's dims and type call for; the data
    must lie entirely inside the file.
    """
    what = f"tensor '{tensor.name}' external data"
    info = external_info(tensor)
    if isinstance(info, str):
        raise load_error(path, f"{what} {info}")
    location = info.location
    if not location:
        raise load_error(path, f"{what} has no location")
    if "\x00" in location:
        raise load_error(path, f"{what} location contains a NUL byte")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or ":" in location:
        raise load_error(path, f"{what} location '{location}' is not relative to the model")
    if ".." in rel.parts or "\\" in location:
        raise load_error(path, f"{what} location '{location}' leaves the model's folder")
    base = path.resolve().parent
    target = base / rel
    try:
        lst = os.lstat(target)
    except FileNotFoundError:
        raise load_error(path, f"{what} file '{location}' does not exist") from None
    except OSError as e:
        raise load_error(path, f"{what} file '{location}' cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(lst.st_mode):
        raise load_error(path, f"{what} file '{location}' is a symbolic link")
    if not stat.S_ISREG(lst.st_mode):
        raise load_error(path, f"{what} file '{location}' is not a regular file")
    if lst.st_nlink != 1:
        raise load_error(path, f"{what} file '{location}' has {lst.st_nlink} hard links")
    if target.resolve().parent != base and base not in target.resolve().parents:
        raise load_error(path, f"{what} file '{location}' resolves outside the model's folder")
    offset, length = info.offset or 0, info.length
    expected = expected_bytes(tensor)
    if length is None and expected is None:
        raise load_error(path, f"{what} gives no length for a tensor without a fixed size")
    end = offset + (length if length is not None else expected)
    if end > lst.st_size:
        raise load_error(path, f"{what} ends at byte {end}, past the end of '{location}' ({lst.st_size} bytes)")
    if length is not None and expected is not None and length != expected:
        raise load_error(path, f"{what} holds {length} bytes; its dims and type call for {expected}")
    return target, offset, (length if length is not None else expected)


def absolutize(model: onnx.ModelProto, model_path: str | os.PathLike) -> None:
    """Validate every external reference again and rewrite it as an absolute path with an explicit length
    (``graph.external``'s reader then needs nothing but the tensor)."""
    for t in iter_tensors(model):
        if uses_external_data(t):
            target, offset, length = resolve_external(Path(model_path), t)
            set_location(t, str(target), offset, length)


def _read_external(path: Path, tensor: onnx.TensorProto) -> None:
    target, offset, length = resolve_external(path, tensor)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise load_error(path, f"tensor '{tensor.name}' external data cannot be read ({e.strerror})") from None
    if len(data) != length:
        raise load_error(path, f"tensor '{tensor.name}' external data is {len(data)} bytes, {length} expected")
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


_STUB_DOMAIN = "normonnx.unchecked"


def _unchecked_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Default-domain nodes onnx's checker cannot judge: ops it has deprecated (GroupNormalization-18)
    and ops onnxruntime registers there itself (SimplifiedLayerNormalization, LayerNormalization
    before opset 17), in the main graph and every body."""
    opset = next((o.version for o in model.opset_import if is_default_domain(o.domain)), 0)
    found = []
    for n in iter_nodes(model.graph):
        if not is_default_domain(n.domain):
            continue
        try:
            if onnx.defs.get_schema(n.op_type, opset).deprecated:
                found.append(n)
        except onnx.defs.SchemaError:
            if n.op_type in ONNXRUNTIME_DEFAULT_DOMAIN_OPS:
                found.append(n)
    return found


# Ops onnxruntime runs from the default domain although onnx has no schema for them (at that opset).
ONNXRUNTIME_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization", "LayerNormalization"})


def check_path(path: str | os.PathLike, full_check: bool) -> None:
    """onnx.checker on a model file, parsed in C++ without loading its weights.

    onnx refuses ops it has deprecated, such as GroupNormalization-18, which
    onnxruntime runs and ``normonnx emit`` converts, and the ops onnxruntime
    registers in the default domain (an onnxruntime-optimized transformer's
    SimplifiedLayerNormalization). A model with such ops is checked with them
    treated as custom ops; everything else is checked as usual.
    """
    try:
        onnx.checker.check_model(str(path), full_check=full_check)
        return
    except onnx.checker.ValidationError as e:
        if "is deprecated" not in str(e) and "No Op registered for" not in str(e):
            raise
        original = e
    _check_with_stubs(onnx.load(str(path), load_external_data=False), full_check, original)


def check_structure(model: onnx.ModelProto) -> None:
    """``check_path``'s structural check (no shape inference) on a model in memory. One whose weights
    are on disk (at absolute, validated locations while normonnx works on it) or over protobuf's 2 GiB
    cannot be checked in memory: it is checked when it is written."""
    if has_external_data(model) or over_protobuf_limit(model):
        return
    try:
        onnx.checker.check_model(model)
        return
    except onnx.checker.ValidationError as e:
        if "is deprecated" not in str(e) and "No Op registered for" not in str(e):
            raise
        original = e
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _check_with_stubs(copy, False, original)


def _check_with_stubs(model: onnx.ModelProto, full_check: bool, original: Exception) -> None:
    """The check again with the ops onnx cannot judge treated as custom ops (``model`` is changed)."""
    nodes = _unchecked_nodes(model)
    if not nodes:
        raise original
    for n in nodes:
        n.domain = _STUB_DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(_STUB_DOMAIN, 1))
    onnx.checker.check_model(model, full_check=full_check)


def structure_problem(path: str | os.PathLike) -> str | None:
    """What onnx's checker finds wrong with the file, weights not loaded (unknown ops, cycles, SSA), or None."""
    try:
        check_path(path, full_check=False)
    except onnx.checker.ValidationError as e:
        return f"not a valid ONNX model: {first_line(e)[:300]}"
    return None


def load_model(path: str | os.PathLike, *, load_weights: bool = True, check: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX file; raises ModelLoadError with a one-line reason.

    ``check=False`` leaves onnx's checker (``structure_problem``) to the caller, who must judge the file
    with it before anything derived from it is written.
    """
    path = Path(path)
    _precheck_file(path)
    model = _parse(path)
    _check_versions(path, model)
    try:
        external = [t for t in iter_tensors(model) if uses_external_data(t)]
    except RecursionError:
        raise load_error(path, "subgraphs nested too deeply") from None
    for tensor in external:
        resolve_external(path, tensor)
    if check and (problem := structure_problem(path)) is not None:
        raise load_error(path, problem)
    if load_weights:
        read_weights(path, model)
    return model


def read_weights(path: str | os.PathLike, model: onnx.ModelProto) -> None:
    """The weights of ``model`` (loaded from ``path`` without them, its references validated then) read in."""
    for tensor in iter_tensors(model):
        if uses_external_data(tensor):
            _read_external(Path(path), tensor)


def over_protobuf_limit(model: onnx.ModelProto) -> bool:
    """Whether the model is too large for one protobuf message (2 GiB). Known from its tensors' sizes
    unless they come close: upb's ``ByteSize`` serializes the whole model to measure it."""
    return tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD and model.ByteSize() >= PROTOBUF_LIMIT


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(uses_external_data(t) for t in iter_tensors(model))


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Approximate bytes of tensor data, without serializing the model."""
    total = 0
    for t in iter_tensors(model):
        if uses_external_data(t):
            info = external_info(t)
            total += 0 if isinstance(info, str) else int(info.length or 0)
        elif t.HasField("raw_data"):
            total += raw_bytes(t)
        else:  # values in the typed fields
            total += 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
                len(t.int64_data) + len(t.double_data) + len(t.uint64_data)
            )
            total += sum(len(s) for s in t.string_data)
    return total


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@functools.lru_cache(maxsize=32)
def _external_locations(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """External-data locations a model file names (cached per file version: a run asks twice).

    A file that names one holds the key ``location`` as plain bytes (a StringStringEntryProto's key): a
    file without those bytes names none, found without parsing it (the output a run replaces, every run).
    """
    with contextlib.suppress(Exception):
        if not _holds(path, b"location"):
            return ()
        m = onnx.load(path, load_external_data=False)
        infos = [external_info(t) for t in iter_tensors(m) if uses_external_data(t)]
        return tuple(i.location for i in infos if not isinstance(i, str) and i.location)
    return ()


def _holds(path: str, needle: bytes) -> bool:
    """Whether the file's bytes contain ``needle`` (read through the page cache, never parsed)."""
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return view.find(needle) >= 0
        except ValueError:  # an empty file cannot be mapped
            return False


def _protected_files(inputs: Sequence[Path]) -> list[Path]:
    """The inputs and the external-data files they reference."""
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        files.append(p)
        with contextlib.suppress(OSError):
            st = p.stat()
            files.extend(p.parent / loc for loc in _external_locations(str(p.resolve()), st.st_mtime_ns, st.st_size))
    return files


def check_output_path(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that is an input, or one of an input's weight files."""
    if str(out).endswith(("/", os.sep)):
        raise OutputError(f"{out}: ends with a slash, a folder; give the file to write")
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


def _copy_range(src: str, offset: int, length: int, out) -> None:
    """Stream ``length`` bytes of ``src`` from ``offset`` to the open file ``out`` (kernel copy where possible)."""
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        out.flush()
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(fd, out.fileno(), length - done, offset + done)
            except (AttributeError, OSError):
                n = 0
            if n <= 0:  # no kernel copy here: read and write in chunks
                chunk = os.pread(fd, min(64 << 20, length - done), offset + done)
                if not chunk:
                    raise OutputError(f"{src}: ended before its tensor data did")
                out.write(chunk)
                out.flush()
                n = len(chunk)
            done += n
    finally:
        os.close(fd)


def _write_with_external_data(model: onnx.ModelProto, model_tmp: Path, data_tmp: Path, data_name: str) -> int:
    """All tensor data into one data file, the proto beside it; the in-memory proto is restored afterwards.

    Inline tensors of 1 KB or more move into the file; tensors already on disk
    (absolute locations: the input's validated files, normonnx's spill file)
    are streamed into it without passing through Python memory. Returns how
    many tensors went to the data file.
    """
    restore: list[tuple[onnx.TensorProto, bytes | list[tuple[str, str]]]] = []
    offset = 0
    try:
        with open(data_tmp, "wb") as data:
            for t in iter_tensors(model):
                on_disk = uses_external_data(t)
                if not on_disk and (not t.raw_data or len(t.raw_data) < _EXTERNAL_MIN_TENSOR_BYTES):
                    continue
                pad = (-offset) % 4096
                data.write(b"\0" * pad)
                offset += pad
                if on_disk:
                    info = external_info(t)
                    if isinstance(info, str) or not os.path.isabs(info.location):
                        raise OutputError(f"tensor '{t.name}': external data outside normonnx's validated store")
                    length = int(info.length or 0)
                    _copy_range(info.location, int(info.offset or 0), length, data)
                    restore.append((t, [(e.key, e.value) for e in t.external_data]))
                else:
                    raw = t.raw_data
                    length = len(raw)
                    data.write(raw)
                    restore.append((t, raw))
                    t.ClearField("raw_data")
                set_location(t, data_name, offset, length)
                offset += length
            data.flush()
            os.fsync(data.fileno())
        _write_proto(model, model_tmp)
        return len(restore)
    finally:
        for t, saved in restore:
            del t.external_data[:]
            if isinstance(saved, bytes):
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = saved
            else:
                for k, v in saved:
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v


def _write_proto(model: onnx.ModelProto, path: Path) -> None:
    with open(path, "wb") as f:
        write_model(model, f)
        f.flush()
        os.fsync(f.fileno())


def _write_syncing(model: onnx.ModelProto, path: Path, destination: Path) -> Callable[[], None]:
    """``model`` written to ``path``, its fsync on a thread, which holds no lock while the disk catches up
    (0.05 s for a ResNet-50) as the staged model is checked and verified. The thread syncs the descriptor
    that wrote the file, so it hears any error the write met. The returned call waits for it and raises
    OutputError (naming ``destination``, the file the user asked for) if the disk did not take the file."""
    with open(path, "wb") as f:
        write_model(model, f)
        f.flush()
        fd = os.dup(f.fileno())  # the same open file as the writer's
    failed: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            failed.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=sync, name="normonnx-fsync", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise OutputError(f"{destination}: could not be written to disk ({failed[0].strerror or failed[0]})")

    return wait


class Staged:
    """A model written to temporaries beside its destination, to be checked, waiting for ``commit``.

    ``check`` runs onnx's checker on the staged file once; a caller calls it while its verification runs
    in the worker process, so that the two overlap; ``staged_save`` calls it (if the caller did not)
    before anything is committed. After the commit, ``stale`` names the weight files the replaced output
    referenced and the new one does not: normonnx never deletes a file.
    """

    def __init__(self, path: Path, data_name: str | None, check: Callable[[], None]) -> None:
        self.path, self.data_name, self.committed = path, data_name, False
        self.stale: list[str] = []
        self._check: Callable[[], None] | None = check
        self._check_error: OutputError | None = None

    def check(self) -> None:
        """onnx's checker on the staged model (run once): OutputError if it fails."""
        if self._check is not None:
            check, self._check = self._check, None
            try:
                check()
            except OutputError as e:
                self._check_error = e
        if self._check_error is not None:
            raise self._check_error

    def commit(self) -> None:
        self.committed = True

    def disk_bytes(self) -> int:
        """What the staged model and its weight file hold (known without parsing the model)."""
        files = [self.path] + ([self.path.parent / self.data_name] if self.data_name else [])
        return sum(f.stat().st_size for f in files)


@contextlib.contextmanager
def staged_save(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    full_check: bool = True,
    no_stricter_than: str | os.PathLike | None = None,
) -> Iterator[Staged]:
    """Write and check ``model`` next to ``path``; it replaces ``path`` only if the caller commits.

    The staged model (``Staged.path``) is a complete model -- with its weight
    file when it has one -- that onnxruntime can run, so a caller can verify
    it before it replaces anything. Weights are renamed into place first,
    the model last; without a commit every temporary is removed.
    """
    out = Path(path)
    check_output_path(out, [Path(p) for p in inputs])
    external = has_external_data(model) or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_final = _free_data_name(out)
    with temporary_sibling(out) as model_tmp, temporary_sibling(data_final) as data_tmp:
        if external:
            external = _write_with_external_data(model, model_tmp, data_tmp, data_tmp.name) > 0
        synced = None
        if not external:  # nothing large enough to move: one self-contained file
            synced = _write_syncing(model, model_tmp, out)
        staged = Staged(
            model_tmp, data_tmp.name if external else None,
            functools.partial(_check_staged, model_tmp, full_check, no_stricter_than),
        )  # fmt: skip
        try:
            yield staged
        except Exception:
            staged.check()  # a staged model that fails the checker: that is what went wrong, whatever followed
            raise
        staged.check()
        if not staged.committed:
            return
        previous = _referenced_files(out)
        if external:
            final = onnx.load(str(model_tmp), load_external_data=False)
            for t in iter_tensors(final):
                for e in t.external_data:
                    if e.key == "location" and e.value == data_tmp.name:
                        e.value = data_final.name
            _write_proto(final, model_tmp)
            os.replace(data_tmp, data_final)  # a new name: the previous output still has its own weights
        if synced is not None:
            synced()
        os.replace(model_tmp, out)
        staged.stale = [name for name in previous if name != (data_final.name if external else None)]


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    full_check: bool = True,
    no_stricter_than: str | os.PathLike | None = None,
) -> Staged:
    """Write ``model`` to ``path`` atomically, never over one of ``inputs`` (see ``staged_save``).

    The file passes ``onnx.checker`` (full check: shape inference too) before
    it replaces anything; a model too large for one protobuf, or one whose
    weights are on disk, goes with a ``<name>.data`` (or ``<name>.<k>.data``)
    beside it. Returns the committed ``Staged`` (its ``stale`` files). With
    ``no_stricter_than``, a model derived from that file may fail the full
    check only if that file fails it too (the structural check must pass).
    """
    with staged_save(model, path, inputs=inputs, full_check=full_check, no_stricter_than=no_stricter_than) as staged:
        staged.commit()
    return staged


def _referenced_files(model_path: Path) -> list[str]:
    """External-data locations an existing model file names (none if there is no such model)."""
    if not model_path.is_file():
        return []
    st = model_path.stat()
    return sorted(set(_external_locations(str(model_path.resolve()), st.st_mtime_ns, st.st_size)))


def disk_bytes(model_path: str | os.PathLike) -> int:
    """What a model file and the weight files it names hold on disk (0 for what cannot be read)."""
    path = Path(model_path)
    total = 0
    for p in [path, *(path.parent / name for name in _referenced_files(path))]:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def _free_data_name(out: Path) -> Path:
    """``<out>.data``, or ``<out>.<k>.data``: a weight file name nothing has yet, so that nothing is
    overwritten and the previous output stays whole until the new model replaces it."""
    for k in range(10_000):
        candidate = out.parent / (f"{out.name}.data" if k == 0 else f"{out.name}.{k}.data")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise OutputError(f"{out}: no free name for its weight file")


def passes_full_check(path: str | os.PathLike) -> bool:
    try:
        check_path(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
    return True


def _check_staged(model_tmp: Path, full_check: bool, no_stricter_than: str | os.PathLike | None) -> None:
    """onnx's checker on a staged model (OutputError if it fails); the full check is excused when the
    source (``no_stricter_than``) fails it too."""
    try:
        _check_saved(model_tmp, full_check)
    except OutputError:
        if not full_check or no_stricter_than is None or passes_full_check(no_stricter_than):
            raise
        _check_saved(model_tmp, full_check=False)


def _check_saved(model_tmp: Path, full_check: bool) -> None:
    try:
        check_path(model_tmp, full_check=full_check)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OutputError(f"{model_tmp.name}: the model to be written fails onnx.checker: {first_line(e)}") from None
