"""What every benchmark script does with its committed results, in one place.

- ``start(minutes)`` prints how long the run is expected to take before it starts;
- ``require(peers, allow_missing)`` refuses to run without the peers the results name (``--allow-missing``
  runs anyway, and the returned list of missing peers goes into the title and the table);
- ``write(path, text)`` / ``write_with(path, writer)`` write beside the committed file and rename over it:
  an interrupted run (Ctrl-C, a crash, a full disk) leaves the committed result as it was.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_STARTED = time.perf_counter()


def start(name: str, minutes: float) -> None:
    print(f"{name}: expected to take about {minutes:g} minutes on 2 cores", flush=True)


def elapsed() -> float:
    return time.perf_counter() - _STARTED


def missing_peers(peers: Iterable[str]) -> list[str]:
    """The peers (importable module names) that are not installed here."""
    return [p for p in peers if importlib.util.find_spec(p) is None]


def require(peers: Iterable[str], allow_missing: bool) -> list[str]:
    """The peers that are missing; without ``allow_missing`` a missing peer ends the run before it starts."""
    missing = missing_peers(peers)
    if missing and not allow_missing:
        print(
            f"missing peers: {', '.join(missing)}; install them (pip install -e '.[bench]') or pass --allow-missing,"
            " which names them as missing in the results",
            file=sys.stderr,
        )
        sys.exit(2)
    return missing


def missing_note(missing: list[str]) -> str:
    """The line the title and table carry when peers were missing ('' when none)."""
    return f" (not installed, so not compared: {', '.join(missing)})" if missing else ""


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """``writer(tmp)`` writes the new result beside ``path``; only a complete file replaces it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write(path: Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text))


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure written as ``write_with`` writes (complete or not at all), then closed."""
    import matplotlib.pyplot as plt

    write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
