"""Seeded inputs from a model's input specs, or real ones from an .npz file.

Dynamic dims get a default (the first dim 2, so batch handling is exercised;
any other 16) unless the user names the shape (``--shape name:d0,d1,...``).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from normonnx.errors import UnusableInputError, first_line

DEFAULT_BATCH = 2
DEFAULT_DIM = 16


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UnusableInputError(f"input '{vi.name}' is not a tensor; only tensor inputs can be generated")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(dtype), shape))
    return specs


def parse_dims(text: str) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; None unless every dim is a positive integer."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        return None
    return dims if dims and all(d > 0 for d in dims) else None


def parse_shape_overrides(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x:1,3,224,224"]`` -> ``{"x": (1, 3, 224, 224)}``."""
    result: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, text = item.rpartition(":")
        dims = parse_dims(text) if sep and name else None
        if dims is None:
            raise UnusableInputError(f"--shape '{item}': expected NAME:D0,D1,... with positive integer dims")
        result[name] = dims
    return result


def concrete_shape(spec: InputSpec, overrides: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    if spec.name in overrides:
        shape = overrides[spec.name]
        if spec.shape is not None and len(spec.shape) != len(shape):
            raise UnusableInputError(f"--shape {spec.name}: rank {len(shape)}, the model expects {len(spec.shape)}")
        for want, got in zip(spec.shape or (), shape, strict=False):
            if isinstance(want, int) and want > 0 and want != got:
                raise UnusableInputError(f"--shape {spec.name}: dim {got} where the model fixes {want}")
        return shape
    if spec.shape is None:
        raise UnusableInputError(f"input '{spec.name}' has no declared shape; pass --shape {spec.name}:D0,D1,...")
    return tuple(
        d if isinstance(d, int) and d > 0 else (DEFAULT_BATCH if i == 0 else DEFAULT_DIM)
        for i, d in enumerate(spec.shape)
    )


def random_inputs(
    specs: list[InputSpec], seed: int, overrides: dict[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """One seeded set of feeds: floats ~ N(0, 1), integers in [0, 8), booleans fair."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = concrete_shape(spec, overrides or {})
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = np.asarray(rng.random(shape) < 0.5)  # a rank-0 comparison gives a numpy scalar
        else:
            raise UnusableInputError(
                f"input '{spec.name}' has dtype {spec.dtype}: normonnx cannot make up values for it"
                " (check and convert take real ones: --inputs, --data)"
            )
    return feeds


def check_shape_names(overrides: dict[str, tuple[int, ...]] | None, specs: list[InputSpec]) -> None:
    """--shape for an input the model does not have is a mistake, not something to ignore."""
    unknown = sorted(set(overrides or {}) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs) or "none"
        raise UnusableInputError(f"--shape {unknown[0]}: the model has no such input (its inputs: {names})")


def seeded_input_sets(
    model: onnx.ModelProto, count: int = 3, overrides: dict[str, tuple[int, ...]] | None = None, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    specs = input_specs(model)
    check_shape_names(overrides, specs)
    return [random_inputs(specs, seed + k, overrides) for k in range(count)]


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read without unpickling anything."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's word for "this would need unpickling": it is not an .npz of arrays
        raise UnusableInputError(f"{path}: not an .npz file of arrays (np.savez writes one)") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise UnusableInputError(f"{path}: not a readable .npz of arrays ({first_line(e)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UnusableInputError(f"{path}: a single .npy array, not an .npz of named arrays (np.savez writes one)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UnusableInputError(f"{path}: not a readable .npz of arrays ({first_line(e)})") from None


def save_npz(path: str | os.PathLike, sets: list[dict[str, np.ndarray]]) -> None:
    """Several sets of named arrays as one .npz, each name's sets stacked on a leading axis (written atomically)."""
    import io

    from normonnx.fileio import write_bytes_atomic

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.stack([s[name] for s in sets]) for name in sets[0]})
    write_bytes_atomic(path, buffer.getvalue())


def load_npz(
    path: str | os.PathLike, specs: list[InputSpec], *, one_array_any_name: bool = False
) -> list[dict[str, np.ndarray]]:
    """Real inputs: arrays named like the inputs; a leading extra axis means several sets.
    ``one_array_any_name``: a model with one input takes an .npz of one array whatever its name."""
    return sets_from_arrays(path, read_input_arrays(path, specs, one_array_any_name), specs)


def read_input_arrays(
    path: str | os.PathLike, specs: list[InputSpec], one_array_any_name: bool = False
) -> dict[str, np.ndarray]:
    """The arrays of an .npz, keyed by input name (``one_array_any_name``: see ``load_npz``)."""
    arrays = read_npz(path)
    if one_array_any_name and len(specs) == 1 and len(arrays) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    return arrays


def sets_from_arrays(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], specs: list[InputSpec]
) -> list[dict[str, np.ndarray]]:
    """Input sets from arrays named like the inputs (``path`` names them in messages); a leading extra axis
    means several sets."""
    if not specs:
        raise UnusableInputError(f"{path}: the model takes no inputs")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise UnusableInputError(f"{path}: no array for input(s) {', '.join(missing)}")
    extra = sorted(set(arrays) - {s.name for s in specs})
    if extra:
        names = ", ".join(s.name for s in specs)
        raise UnusableInputError(f"{path}: array {extra[0]!r} is no input of the model (its inputs: {names})")
    sets: list[dict[str, np.ndarray]] = []
    first = specs[0]
    stacked = first.shape is not None and arrays[first.name].ndim == len(first.shape) + 1
    count = arrays[first.name].shape[0] if stacked else 1
    for k in range(count):
        # np.asarray: one set of a stacked scalar input (silero's sample rate) is an array, not a numpy scalar
        sets.append({s.name: np.asarray(arrays[s.name][k] if stacked else arrays[s.name], s.dtype) for s in specs})
    for spec in specs:
        _check_fixed_dims(path, spec, sets[0][spec.name].shape)
    return sets


def _check_fixed_dims(path, spec: InputSpec, shape: tuple[int, ...]) -> None:
    """An array must have the input's rank and every size the model fixes."""
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise UnusableInputError(f"{path}: {spec.name} has rank {len(shape)}, the model takes rank {len(spec.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want > 0 and want != got:
            raise UnusableInputError(
                f"{path}: {spec.name} has {got} at axis {axis} where the model fixes {want} (shape {list(shape)})"
            )
