"""Procedurally drawn shapes: the reference zoo's data set, generated in code.

Each 32x32 RGB image holds one shape -- circle, square, triangle or cross --
of random size, position and colour on a noisy background of random tint.
Classification labels are the shape; segmentation labels mark its pixels.
The same seed always gives the same images, so training is reproducible and
the held-out split never has to be stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "square", "triangle", "cross")
SIZE = 32
TRAIN_SEED, HELDOUT_SEED = 1234, 98765
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class Shapes:
    images: np.ndarray  # [N, 3, 32, 32] float32, normalized
    labels: np.ndarray  # [N] int64
    masks: np.ndarray  # [N, 32, 32] int64 (1 on the shape)


def _mask(kind: int, cy: np.ndarray, cx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks [N, 32, 32] for shapes of one kind centred at (cy, cx) with radius r."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = r[:, None, None]
    if kind == 0:
        return dy**2 + dx**2 <= r**2
    if kind == 1:
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if kind == 2:  # apex up: inside when below the apex and within the widening sides
        return (dy >= -r) & (dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6)
    arm = np.maximum(r * 0.3, 1.0)
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))


def generate(count: int, seed: int) -> Shapes:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    r = rng.uniform(5.0, 11.0, count).astype(np.float32)
    cy = rng.uniform(r, SIZE - 1 - r).astype(np.float32)
    cx = rng.uniform(r, SIZE - 1 - r).astype(np.float32)
    masks = np.zeros((count, SIZE, SIZE), dtype=bool)
    for kind in range(len(CLASSES)):
        idx = np.flatnonzero(labels == kind)
        if idx.size:
            masks[idx] = _mask(kind, cy[idx], cx[idx], r[idx])
    background = rng.uniform(0.0, 0.4, (count, 3, 1, 1))
    colour = rng.uniform(0.55, 1.0, (count, 3, 1, 1))
    images = np.where(masks[:, None], colour, background) + rng.normal(0.0, 0.08, (count, 3, SIZE, SIZE))
    images = ((np.clip(images, 0.0, 1.0) - MEAN) / STD).astype(np.float32)
    return Shapes(images, labels.astype(np.int64), masks.astype(np.int64))


def train_set(count: int = 4000) -> Shapes:
    return generate(count, TRAIN_SEED)


def heldout_set(count: int = 1000) -> Shapes:
    return generate(count, HELDOUT_SEED)
