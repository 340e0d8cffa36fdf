"""Loading checkpoints without ever executing code from them.

safetensors files are preferred (their header is size-checked before it is
parsed); anything else goes through ``torch.load(weights_only=True)`` and
nothing else: a pickled module, a TorchScript archive or a pickle that
builds objects is refused, never retried with an unsafe loader.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zipfile
from pathlib import Path

from normonnx.errors import CheckpointError, first_line
from normonnx.fileio import regular_file_size
from normonnx.torchfront import export_extra_missing, missing_export_package

MAX_CHECKPOINT_BYTES = 64 << 30
MAX_SAFETENSORS_HEADER = 100 << 20
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def _precheck(path: Path) -> int:
    size = regular_file_size(path, MAX_CHECKPOINT_BYTES, f"over the {MAX_CHECKPOINT_BYTES} byte limit")
    if isinstance(size, str):
        raise _fail(path, size)
    return size


def _is_safetensors(path: Path, size: int) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path, size: int) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise _fail(path, "truncated safetensors file (no header length)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_SAFETENSORS_HEADER or n > size - 8:
        raise _fail(
            path, f"safetensors header of {n} bytes is larger than the file or the {MAX_SAFETENSORS_HEADER} limit"
        )
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as e:
        missing = missing_export_package(e)
        if not missing:
            raise
        raise export_extra_missing(missing, f"{path}: ") from None

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError and friends: the message says what is wrong
        raise _fail(path, f"not a valid safetensors file ({first_line(e)})") from None


def _load_torch(path: Path) -> dict:
    import pickle

    import torch

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise _fail(path, "is a TorchScript archive, not a state dict; save model.state_dict() instead")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e)
        if "Unsupported global" in detail or "GLOBAL" in detail or "allowlist" in detail:
            blocked = re.search(r"GLOBAL ([\w.]+)|allowlist this global.*?\[([\w.]+)\]", detail)
            name = next((g for g in blocked.groups() if g), "") if blocked else ""
            raise _fail(
                path,
                f"refused by torch.load(weights_only=True): it pickles objects{f' ({name})' if name else ''},"
                " not just tensors; save model.state_dict() or use safetensors",
            ) from None
        raise _fail(path, "not a readable torch checkpoint (not a pickle torch.load understands)") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise _fail(path, f"not a readable torch checkpoint ({first_line(e)[:200]})") from None
    except Exception as e:  # weights_only unpickling executes nothing; any other failure is a bad file
        raise _fail(path, f"not a readable torch checkpoint ({type(e).__name__} while unpickling)") from None


def load_state_dict(path: str | os.PathLike) -> dict:
    """A flat {name: tensor} dict from a checkpoint file, loaded without executing code."""
    import torch

    path = Path(path)
    size = _precheck(path)
    state = _load_safetensors(path, size) if _is_safetensors(path, size) else _load_torch(path)
    if isinstance(state, dict):
        for key in _NESTED_KEYS:
            if isinstance(state.get(key), dict) and all(isinstance(v, torch.Tensor) for v in state[key].values()):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _fail(path, "does not hold a state dict of tensors")
    return state


def apply_checkpoint(module, path: str | os.PathLike) -> None:
    """Load ``path`` into ``module`` strictly: every key must match."""
    state = load_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches are raised even when strict=False
        lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
        detail = lines[1] if len(lines) > 1 else first_line(e)
        raise _fail(Path(path), f"does not match the model: {detail[:200]}") from None
    problems = []
    if result.missing_keys:
        problems.append(
            f"missing {', '.join(result.missing_keys[:5])}" + (" ..." if len(result.missing_keys) > 5 else "")
        )
    if result.unexpected_keys:
        extra = result.unexpected_keys
        problems.append(f"unexpected {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
    if problems:
        raise _fail(Path(path), "does not match the model: " + "; ".join(problems))
