"""Progress on a terminal: one status line on stderr, redrawn in place, never wider than the terminal.

Quiet when stderr is not a terminal (a log, a pipe, CI), and under ``-v``,
whose step lines would otherwise be torn by the redrawn line. A ticker thread redraws the elapsed time of a long
step, so an opaque step (a child process verifying parity) still shows life.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO


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

    def __enter__(self) -> Progress:
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
            self._draw()
        return self

    def __exit__(self, *exc) -> None:
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
