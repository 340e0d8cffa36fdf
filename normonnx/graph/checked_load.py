"""A source loaded while onnx's checker judges it in the warm worker.

``load_model`` runs onnx's checker on the file, which parses the whole file again in C++ (0.1 s for a
100 MB model) and holds this process's interpreter lock all the while. ``fold`` and ``emit`` need its
verdict only before they write: where the warm worker runs anyway (the proof needs it, or the command
line started it), the checker runs there while this process rewrites the model.
"""

from __future__ import annotations

import os
import threading
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
from normonnx.isolation import call_in_shared_worker, in_isolated_child, shared_worker_started


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
    verdict = _Verdict(path).raise_problem if deferred else _valid
    if load_weights:
        try:
            read_weights(path, model)
        except Exception:
            verdict()  # an invalid source is what went wrong
            raise
    return Source(model, verdict, size)


def _valid() -> None:
    """The verdict on a source already checked."""


class _Verdict:
    """onnx's checker on a file, run in the warm worker from a background thread."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._path = path
        self._problem: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._check, name="normonnx-source-check", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            self._problem = call_in_shared_worker(  # the worker's working directory is the one it started in
                structure_problem, os.path.abspath(self._path), label=f"{self._path}: onnx's checker"
            )
        except BaseException as e:  # raised in the caller's thread, by raise_problem
            self._error = e

    def raise_problem(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._problem is not None:
            raise load_error(self._path, self._problem)
