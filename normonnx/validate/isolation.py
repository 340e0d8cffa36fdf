"""Running onnxruntime on an untrusted model without risking the caller.

A model from a hub can crash onnxruntime (a segfault in a kernel, an abort
in a provider) or hang it. ``call_isolated`` runs a function in a fresh
Python process (``python -m normonnx.validate.isolation``) with a timeout: a
crash or a hang becomes a one-line error naming the model, and the caller
lives on. The function and its arguments travel pickled over the child's
stdin (functions by reference, so any importable function works, whatever
the parent's ``__main__`` is); the result comes back over its stdout.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from normonnx.errors import NormonnxError, UnusableInputError, first_line

DEFAULT_TIMEOUT = 900.0


class IsolatedRunError(UnusableInputError):
    """The isolated run crashed, hung, or raised."""


class _Raised:
    """An exception from the child, carried as text (exception objects may not pickle)."""

    def __init__(self, error: BaseException) -> None:
        self.type = type(error).__name__
        self.message = first_line(error)
        self.exit_code = error.exit_code if isinstance(error, NormonnxError) else 2


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def call_isolated(fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in a child process; ``label`` names what runs, for messages."""
    payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-m", "normonnx.validate.isolation"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise IsolatedRunError(f"{label}: no answer within {timeout:.0f} s; stopped it") from None
    if proc.returncode != 0 or not out:
        code = proc.returncode
        how = _signal_name(code) if code < 0 else f"exit code {code}"
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise IsolatedRunError(f"{label}: onnxruntime's process died ({how}){': ' + tail[0][:200] if tail[0] else ''}")
    result = pickle.loads(out)
    if isinstance(result, _Raised):
        error = IsolatedRunError(f"{label}: {result.type}: {result.message}")
        error.exit_code = result.exit_code
        raise error
    return result


def _main() -> None:
    # Pickle exceptions as the importable class, not as this __main__'s copy of it.
    from normonnx.validate.isolation import _Raised as Raised

    fn, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    channel = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the call prints must not corrupt the result stream
    try:
        result: Any = fn(*args, **kwargs)
    except BaseException as e:  # report everything, including SystemExit, to the parent
        result = Raised(e)
    channel.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    channel.flush()


if __name__ == "__main__":
    _main()
