"""Progress: the phase a command is in (load, fold, reference and candidate runs, write), and how long each took.

On a terminal, one status line on stderr, redrawn in place, never wider than the terminal; a ticker thread
redraws the elapsed time of a long phase, so an opaque one (onnxruntime verifying parity) still shows life.
Under ``-v``, a line per phase with its time instead (the redrawn line would tear the log lines). Into a log
or a pipe, a line for every phase that took ``LONG_PHASE`` seconds or more: a long run is never silent, a short
one prints nothing but its result.

Pipelines mark phases with ``phase("reference run")``; the command's progress, if any, shows them.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO

LONG_PHASE = 10.0  # seconds: a phase this long gets its own line in a log
log = logging.getLogger("normonnx")
_ACTIVE: list[Progress] = []


def phase(name: str) -> None:
    """The command now does ``name`` (the innermost progress shows it and times the previous phase)."""
    if _ACTIVE:
        _ACTIVE[-1].begin(name)


class Progress:
    """``with Progress(total, "fold") as bar: bar.update(done, "model.onnx")``; ``total=None`` for one step."""

    def __init__(self, total: int | None = None, label: str = "", stream: TextIO | None = None) -> None:
        self.total, self.label, self.done, self.note = total, label, 0, ""
        self.stream = stream or sys.stderr
        verbose = logging.getLogger().isEnabledFor(logging.INFO)
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)()) and not verbose
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.verbose = verbose
        self._phase: tuple[str, float] | None = None

    def begin(self, name: str) -> None:
        """A new phase: the previous one ends (its time said where that is wanted), this one is shown."""
        self._end_phase()
        self._phase = (name, time.perf_counter())
        self.update(note=name)

    def _end_phase(self) -> None:
        if self._phase is None:
            return
        name, began = self._phase
        self._phase = None
        seconds = time.perf_counter() - began
        where = f"{self.label}: " if self.label else ""
        if self.verbose:
            log.info("%s%s took %.2f s", where, name, seconds)
        elif not self.enabled and seconds >= LONG_PHASE:
            self.stream.write(f"normonnx: {where}{name} took {seconds:.0f} s\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        _ACTIVE.append(self)
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._end_phase()
        self._phase = None
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        if self.enabled:
            with self._lock:
                self.stream.write("\r" + " " * self._width() + "\r")
                self.stream.flush()

    def update(self, done: int | None = None, note: str | None = None) -> None:
        with self._lock:
            if done is not None:
                self.done = done
            if note is not None:
                self.note = note
        self._draw()

    def advance(self, note: str | None = None) -> None:
        self.update(self.done + 1, note)

    def line(self) -> str:
        """The status line as it would be drawn (also what tests read)."""
        elapsed = f"{time.perf_counter() - self.start:.0f} s"
        parts = [self.label] if self.label else []
        if self.total:
            width = 20
            filled = int(width * min(self.done, self.total) / self.total)
            parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        if self.note:
            parts.append(self.note)
        parts.append(f"({elapsed})")
        return " ".join(parts)

    @staticmethod
    def _width() -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def _draw(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        width = self._width()
        if len(text) > width:
            text = text[: width - 3] + "..."
        with self._lock:
            self.stream.write("\r" + text.ljust(width))
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()
