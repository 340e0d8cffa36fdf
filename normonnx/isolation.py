"""Running onnxruntime on an untrusted model without risking the caller.

A model from a hub can crash onnxruntime (a segfault in a kernel, an abort
in a provider) or hang it. ``call_isolated`` runs a function in a fresh
Python process (``python -m normonnx.isolation``) with a timeout: a
crash or a hang becomes a one-line error naming the model, and the caller
lives on. The function and its arguments travel pickled over the child's
stdin (functions by reference, so any importable function works, whatever
the parent's ``__main__`` is); the result comes back over its stdout.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from normonnx.errors import MissingKernelError, NormonnxError, UnusableInputError, first_line

DEFAULT_TIMEOUT = 900.0
# A many-file worker shares the cores with its siblings: its onnxruntime sessions get this many threads.
THREADS_ENV = "NORMONNX_SESSION_THREADS"
# onnxruntime custom-op libraries (--custom-ops), os.pathsep-separated: every session, here or in a child, loads them.
CUSTOM_OPS_ENV = "NORMONNX_CUSTOM_OPS"


class IsolatedRunError(UnusableInputError):
    """The isolated run crashed, hung, or raised."""


class _Raised:
    """An exception from the child, carried as text (exception objects may not pickle)."""

    def __init__(self, error: BaseException) -> None:
        self.type = type(error).__name__
        self.message = first_line(error)
        self.exit_code = error.exit_code if isinstance(error, NormonnxError) else 2
        self.ours = isinstance(error, NormonnxError)  # normonnx's own message: no type name in front


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def call_isolated(fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in a child process; ``label`` names what runs, for messages."""
    payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    env = _child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "normonnx.isolation"],
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
        raise _died(label, "onnxruntime's process", proc.returncode, err)
    return _unwrap(pickle.loads(out), label)


def _died(label: str, what: str, code: int, stderr: bytes) -> IsolatedRunError:
    """The error for a child that ended without an answer: how it ended, and its last stderr line."""
    how = _signal_name(code) if code < 0 else f"exit code {code}"
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return IsolatedRunError(f"{label}: {what} died ({how}){': ' + tail[0][:200] if tail[0] else ''}")


def _unwrap(result: Any, label: str) -> Any:
    """The child's answer, or the exception it reported raised here with the child's exit code."""
    if isinstance(result, _Raised):
        if result.type == "MissingKernelError":  # a mistake the user fixes with an option: kept as it is
            raise MissingKernelError(f"{label}: {result.message}")
        what = result.message if result.ours else f"{result.type}: {result.message}"
        error = IsolatedRunError(f"{label}: {what}")
        error.exit_code = result.exit_code
        raise error
    return result


_LOG_ENV = "NORMONNX_WORKER_LOG"
# Set in every child normonnx starts: there, onnxruntime may run in-process (the child is the isolation).
_CHILD_ENV = "NORMONNX_ISOLATED_CHILD"


def _child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **{_CHILD_ENV: "1"}, **extra)


def in_isolated_child() -> bool:
    """Whether this process is one normonnx started to run onnxruntime in."""
    return os.environ.get(_CHILD_ENV) == "1"


_shared: Worker | None = None
_shared_lock = threading.Lock()


def _shared_worker() -> Worker:
    global _shared
    if _shared is None:
        import atexit

        _shared = Worker()
        atexit.register(_shared.close)
    return _shared


def call_in_shared_worker(fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Any:
    """``fn`` in the one warm child this process shares for every onnxruntime run: constant evaluation,
    shape probing, the reference's and the candidate's runs, latency.

    A child per call would cost a process start and an onnxruntime import each; one worker, started
    early (``prestart_shared_worker``) and closed at exit, costs one, paid while the caller works. A crash
    or a hang still ends only the worker (the call raises IsolatedRunError; the next call starts a fresh
    one). Inside an isolated child, ``fn`` runs right here.
    """
    return submit_to_shared_worker(fn, *args, label=label, timeout=timeout, **kwargs).result()


class Pending:
    """A call sent to the shared worker and not yet answered: the worker computes while the caller does
    something else in this process. ``result`` must be called (it frees the worker for the next call)."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self._answer = answer

    @classmethod
    def now(cls, fn: Callable, *args, **kwargs) -> Pending:
        """``fn`` called right now, its value or its exception kept for ``result`` (where nothing can overlap)."""
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:  # raised by ``result``, where the caller expects the call's outcome
            error = e

            def fail() -> Any:
                raise error

            return cls(fail)
        return cls(lambda: value)

    def result(self) -> Any:
        """The call's return value (waiting for it), or the exception it raised."""
        return self._answer()


def in_background(fn: Callable[[], Any], *, name: str) -> Pending:
    """``fn()`` on a daemon thread from now on, while the caller works on (its calls to the shared worker
    take their turn there); ``result`` waits for it and returns its value or raises, in the caller's thread,
    what it raised. ``result`` may be asked more than once."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # raised again by ``result``, where the caller expects the outcome
            outcome["error"] = e

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def answer() -> Any:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return Pending(answer)


def submit_to_shared_worker(
    fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs
) -> Pending:
    """``call_in_shared_worker``, returning once the call is on its way: its answer is read by ``result``.
    Other threads' calls wait until then. Inside an isolated child, ``fn`` runs now, right here."""
    if in_isolated_child():
        return Pending.now(fn, *args, **kwargs)
    _shared_lock.acquire()
    try:
        receive = _shared_worker().send(fn, *args, label=label, timeout=timeout, **kwargs)
    except BaseException:
        _shared_lock.release()
        raise

    def answer() -> Any:
        try:
            return receive()
        finally:
            _shared_lock.release()

    return Pending(answer)


def shared_worker_started() -> bool:
    """Whether this process's shared worker is running (started, or prestarted by the command line)."""
    return _shared is not None and _shared.proc is not None and _shared.proc.poll() is None


def prestart_shared_worker() -> None:
    """Start the shared worker now, so that its interpreter start and onnxruntime import overlap the caller's
    own work (a command knows early that it will verify)."""
    if in_isolated_child():
        return
    with _shared_lock:
        _shared_worker().start()


def _send(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class Worker:
    """A long-lived isolated child that runs calls one after another (many-file runs).

    One call's crash or hang ends this worker only: the call raises
    IsolatedRunError naming ``label``, and the next call starts a fresh child.
    """

    def __init__(self, session_threads: int | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self.session_threads = session_threads
        self._started_with: str | None = None  # the custom-op libraries its sessions load (fixed at start)

    def start(self) -> subprocess.Popen:
        """The child, started now if it is not running (it imports onnxruntime while the caller works on)."""
        if self.proc is not None and self.proc.poll() is None and self._started_with == os.environ.get(CUSTOM_OPS_ENV):
            return self.proc
        self.close()
        return self._start()

    def _start(self) -> subprocess.Popen:
        self._started_with = os.environ.get(CUSTOM_OPS_ENV)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the child writes to it for its whole life)
        self._forwarded = 0
        extra = {THREADS_ENV: str(self.session_threads)} if self.session_threads else {}
        if logging.getLogger().isEnabledFor(logging.INFO):  # under -v the worker logs its steps too
            extra[_LOG_ENV] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "normonnx.isolation", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_child_env(**extra),
        )
        return self.proc

    def call(self, fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs) -> Any:
        return self.send(fn, *args, label=label, timeout=timeout, **kwargs)()

    def send(
        self, fn: Callable, *args, label: str, timeout: float | None = DEFAULT_TIMEOUT, **kwargs
    ) -> Callable[[], Any]:
        """Send the call now; the returned function waits for its answer (the timeout counts from now)."""
        proc = self.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()

        def died() -> IsolatedRunError:
            proc.kill()
            code = proc.wait()
            self.proc = None
            if timer and not timer.is_alive() and code == -signal.SIGKILL:
                return IsolatedRunError(f"{label}: no answer within {timeout:.0f} s; stopped it")
            self._stderr.seek(0)
            return _died(label, "the worker process", code, self._stderr.read())

        try:
            _send(proc.stdin, (fn, args, kwargs))
        except (BrokenPipeError, OSError):
            error = died()  # before the timer is cancelled: a timer still running means it did not fire
            if timer:
                timer.cancel()
            raise error from None
        except BaseException:
            if timer:
                timer.cancel()
            raise

        def receive() -> Any:
            try:
                result = _receive(proc.stdout)
                self._forward_log()
            except (EOFError, BrokenPipeError, OSError):
                raise died() from None
            finally:
                if timer:
                    timer.cancel()
            return _unwrap(result, label)

        return receive

    def _forward_log(self) -> None:
        """Under -v, what the worker logged for this call goes to our stderr (else it waits for a crash tail)."""
        if not logging.getLogger().isEnabledFor(logging.INFO) or self._stderr is None:
            return
        self._stderr.seek(self._forwarded)
        text = self._stderr.read().decode(errors="replace")
        self._forwarded = self._stderr.tell()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def _main() -> None:
    # Pickle exceptions as the importable class, not as this __main__'s copy of it.
    from normonnx.isolation import _Raised as Raised

    channel_in, channel = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the call prints must not corrupt the result stream
    serve = "--serve" in sys.argv[1:]
    if os.environ.get(_LOG_ENV):  # a many-file run under -v: the worker logs its steps too
        logging.basicConfig(level=logging.INFO, format="normonnx: %(message)s", stream=sys.stderr)
    if serve:  # a warm worker imports what every call needs before the first call arrives
        try:
            import numpy  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            pass  # the call that needs it says so
    while True:
        try:
            fn, args, kwargs = _receive(channel_in) if serve else pickle.loads(channel_in.read())
        except EOFError:
            return
        try:
            result: Any = fn(*args, **kwargs)
        except BaseException as e:  # report everything, including SystemExit, to the parent
            result = Raised(e)
        if serve:
            _send(channel, result)
            continue
        channel.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        channel.flush()
        return


if __name__ == "__main__":
    _main()
