"""A source loaded while onnx's checker judges it in the warm worker.

``load_model`` runs onnx's checker on the file, which parses the whole file again in C++ (0.1 s for a
100 MB model) and holds this process's interpreter lock all the while. ``fold`` and ``emit`` need its
verdict only before they write: where the warm worker runs anyway (the proof needs it, or the command
line started it), the checker runs there while this process rewrites the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from normonnx.graph.modelio import (
    disk_bytes,
    has_external_data,
    load_error,
    load_model,
    read_weights,
    structure_problem,
)
from normonnx.isolation import call_in_shared_worker, in_background, in_isolated_child, shared_worker_started


@dataclass(frozen=True)
class Source:
    """A loaded source, and what its caller still has to hear about it."""

    model: onnx.ModelProto
    verdict: Callable[[], None]  # raises the ModelLoadError onnx's checker found (waiting for it)
    disk_bytes: int  # the file and the weight files it names, on disk


def load_checked_meanwhile(path: str | os.PathLike, *, load_weights: bool, isolated: bool, verify: bool) -> Source:
    """``load_model(path)``, the checker's verdict still to be heard: the caller hears it before writing
    anything, and when anything fails, so that an invalid source is reported as that, whatever it led to.
    Checked here and now where no worker runs."""
    deferred = isolated and not in_isolated_child() and (verify or shared_worker_started())
    model = load_model(path, load_weights=False, check=not deferred)
    size = disk_bytes(path) if has_external_data(model) else Path(path).stat().st_size
    verdict = _verdict(path) if deferred else _valid
    if load_weights:
        try:
            read_weights(path, model)
        except Exception:
            verdict()  # an invalid source is what went wrong
            raise
    return Source(model, verdict, size)


def _valid() -> None:
    """The verdict on a source already checked."""


def _verdict(path: str | os.PathLike) -> Callable[[], None]:
    """onnx's checker on ``path``, started now in the warm worker from a background thread; the returned call
    waits for it and raises the ModelLoadError it found."""
    problem = in_background(  # the worker's working directory is the one it started in: the absolute path
        lambda: call_in_shared_worker(structure_problem, os.path.abspath(path), label=f"{path}: onnx's checker"),
        name="normonnx-source-check",
    )

    def raise_problem() -> None:
        found = problem.result()
        if found is not None:
            raise load_error(path, found)

    return raise_problem
