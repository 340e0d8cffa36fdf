"""Helpers more than one test module needs, defined once (graph builders live in tests/builders.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes (None when there is no such file): proof that an input was not touched."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
