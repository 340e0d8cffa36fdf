"""Runners: one model, run one way, built by a command and handed to whatever compares.

Validation is split the way Polygraphy splits it: a command turns its options (provider,
optimizations, threads, a child process or this one, a timeout) into one runner per model it runs,
and verify, check, bench, probe, half and convert only call that runner; ``parity.compare`` judges
what comes back. No other module decides how or where a model runs.

Every operation of an onnxruntime runner is one function of ``validate.execute`` (what a child
process is asked to run lives there, and only there): ``InProcessRunner`` calls it here (a validated
model in memory, or any model in a many-file worker, which is itself the isolation);
``IsolatedRunner`` calls it in a child process (``normonnx.isolation``), so a crash or a hang of
onnxruntime becomes a one-line ``IsolatedRunError`` naming the run. ``FaithfulRunner`` runs a half
model as a GPU computes it (``validate.faithful``).

A runner holds no onnxruntime session: each operation makes its own and drops it, so a runner is
cheap to derive (another label, another session setting) and no model stays in memory between runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from normonnx.isolation import (
    DEFAULT_TIMEOUT,
    Pending,
    call_in_shared_worker,
    call_isolated,
    in_isolated_child,
    submit_to_shared_worker,
)
from normonnx.validate import execute
from normonnx.validate.runner import SessionConfig

if TYPE_CHECKING:
    import onnx

    from normonnx.results import LatencyStats, OutputResult
    from normonnx.validate.parity import Gate

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]  # output name -> value, in the model's output order
T = TypeVar("T")
R = TypeVar("R", bound="OnnxruntimeRunner")


class Runner(Protocol):
    """What the comparator needs: a model's outputs for every feed, and a name for messages."""

    label: str

    def infer(self, feeds: Sequence[Feed]) -> list[Outputs]: ...


class OnnxruntimeRunner(ABC):
    """A model on onnxruntime with one session configuration; where it runs is the subclass's."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike | bytes, config: SessionConfig, *, label: str):
        self.model = model
        self.config = config
        self.label = label

    @abstractmethod
    def _call(self, op: Callable[..., T], *args: Any) -> T:
        """``op(*args)`` (a function of validate.execute) where this runner runs."""

    def derived(self: R, *, label: str | None = None, **config: Any) -> R:
        """The same model, run in the same place, under another label or with other SessionConfig fields."""
        other = copy.copy(self)
        other.config = replace(self.config, **config) if config else self.config
        other.label = self.label if label is None else label
        return other

    def _submit(self, op: Callable[..., T], *args: Any) -> Pending:
        """``op(*args)`` started where this runner runs; its result read later. Here: computed now."""
        return Pending.now(self._call, op, *args)

    def _call_meanwhile(self, meanwhile: Callable[[], None] | None, op: Callable[..., T], *args: Any) -> T:
        """``op(*args)``, with ``meanwhile()`` done in this process while the worker runs it; an exception
        from ``meanwhile`` wins over the run's own outcome."""
        if meanwhile is None:
            return self._call(op, *args)
        pending = self._submit(op, *args)
        try:
            meanwhile()
        except BaseException:
            with contextlib.suppress(Exception):
                pending.result()  # the worker is free again for the next call
            raise
        return pending.result()

    def infer(self, feeds: Sequence[Feed], *, meanwhile: Callable[[], None] | None = None) -> list[Outputs]:
        """The model's outputs for every feed (inputs the model does not take are left out); ``meanwhile``:
        work for this process while the worker runs them (onnx's checker on the file being verified)."""
        return self._call_meanwhile(meanwhile, execute.run_outputs, self.model, list(feeds), self.config)

    def infer_beside(
        self, other: OnnxruntimeRunner, feeds: Sequence[Feed], *, meanwhile: Callable[[], None] | None = None
    ) -> tuple[list[Outputs], list[Outputs]]:
        """(this model's outputs, ``other``'s) for every feed, both run at once where this runner runs, with
        this runner's session configuration (``meanwhile`` as for ``infer``)."""
        return self._call_meanwhile(
            meanwhile, execute.run_side_by_side, self.model, other.model, list(feeds), self.config
        )

    def intermediates(self, feed: Feed, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The values of the named tensors inside the model (floating ones only) on one feed."""
        return self._call(execute.run_intermediates, self.model, feed, list(names), self.config)

    def ranges(self, feeds: Sequence[Feed], names: Sequence[str]) -> dict[str, float]:
        """The largest finite |value| each named floating tensor takes over ``feeds`` (a calibration)."""
        return self._call(execute.tensor_ranges, self.model, list(feeds), list(names), self.config)

    def float64(self, feeds: Sequence[Feed]) -> list[Outputs] | None:
        """The outputs computed in double precision (None when neither onnxruntime nor onnx's evaluator can)."""
        return self._call(execute.run_float64, self.model, list(feeds))

    def first_that_runs(self, makers: Sequence[Callable[[], Feed]]) -> tuple[int, list[str]]:
        """(index of the first feed the model runs on, or -1; one error line per feed that failed).
        Each feed is made by its maker where the model runs, only when its turn comes (makers pickle,
        where a list of large arrays would cost its size to send)."""
        return self._call(execute.first_that_runs, self.model, list(makers), self.config)

    def class_predictions(self, data: np.ndarray, batch: int) -> tuple[list[np.ndarray], int, bool]:
        """(argmax over axis 1 of the first output, per batch of ``data``; the batch size used; whether
        the model fixes it) for a single-input model."""
        return self._call(execute.class_predictions, self.model, data, batch, self.config)

    def compare_intermediates(
        self,
        reference: OnnxruntimeRunner,
        feed: Feed,
        reference_feed: Feed,
        pairs: Sequence[tuple[str, str]],
        gate: Gate | None = None,
    ) -> list[OutputResult | None]:
        """Each (tensor of this model, tensor of ``reference``) pair compared by ``parity.compare_output``,
        both models run where this one runs, a chunk at a time (only the verdicts come back)."""
        return self._call(
            execute.compare_intermediates, self.model, reference.model, feed, reference_feed, list(pairs),
            self.config, gate, reference.config,
        )  # fmt: skip

    def applied_transformers(self) -> list[str]:
        """The onnxruntime graph transformers that change this model when its session is made."""
        return self._call(execute.applied_transformers, self.model, self.config)


class InProcessRunner(OnnxruntimeRunner):
    """onnxruntime in this process: for a validated model in memory, or inside an isolated worker
    (``timeout`` bounds only the child that ``applied_transformers`` starts)."""

    def __init__(
        self,
        model: onnx.ModelProto | str | os.PathLike | bytes,
        config: SessionConfig = SessionConfig(),
        *,
        label: str,
        timeout: float | None = None,
    ):
        super().__init__(model, config, label=label)
        self.timeout = timeout

    def _call(self, op: Callable[..., T], *args: Any) -> T:
        return op(*args)

    def applied_transformers(self) -> list[str]:
        """Read from onnxruntime's verbose log, which means pointing the process's stderr (fd 2) at a file
        while the session is made: done in a child whenever the model can cross to one, not here, where
        other threads may be writing to stderr."""
        source = execute.runnable_source(self.model)
        if source is None:
            return super().applied_transformers()
        return IsolatedRunner(source, self.config, label=self.label, timeout=self.timeout).applied_transformers()


class IsolatedRunner(OnnxruntimeRunner):
    """onnxruntime in the command's warm child process (``normonnx.isolation``) for every operation: a crash,
    a hang past ``timeout`` seconds, or an exception there is an ``IsolatedRunError`` that starts with
    ``label`` (and the next operation gets a fresh child)."""

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        config: SessionConfig = SessionConfig(),
        *,
        label: str,
        timeout: float | None = None,
    ):
        super().__init__(source if isinstance(source, bytes) else str(source), config, label=label)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout

    def _call(self, op: Callable[..., T], *args: Any) -> T:
        return call_in_shared_worker(op, *args, label=self.label, timeout=self.timeout)

    def _submit(self, op: Callable[..., T], *args: Any) -> Pending:
        return submit_to_shared_worker(op, *args, label=self.label, timeout=self.timeout)


class FaithfulRunner:
    """A half (fp16/bf16) model as a GPU computes it: ``faithful_copy``'s float32 model, which rounds every
    half tensor as it is stored, run with onnxruntime's optimizations off (they would cancel the rounding).
    Feeds are float32 where the model takes half; so are the outputs."""

    def __init__(self, model: onnx.ModelProto, *, label: str, options: RunOptions | None = None):
        from normonnx.validate.faithful import faithful_copy
        from normonnx.validate.inputs import input_specs

        self.simulated = faithful_copy(model)
        self.label = label
        self._dtypes = {s.name: s.dtype for s in input_specs(self.simulated)}
        serialized = self.simulated.SerializeToString()
        self._runner = (options or RunOptions()).runner(serialized, SessionConfig(), label=label)

    def _cast(self, feed: Feed) -> Feed:
        return {k: v.astype(self._dtypes[k]) for k, v in feed.items() if k in self._dtypes}

    def infer(self, feeds: Sequence[Feed]) -> list[Outputs]:
        return self._runner.infer([self._cast(f) for f in feeds])

    def simulated_name(self, tensor: str) -> str:
        """The simulation's name for the half model's ``tensor``: its value as stored (rounded to the half type)."""
        return f"{tensor}__f32" if f"{tensor}__f32" in self._names else tensor

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(o for n in self.simulated.graph.node for o in n.output)

    def compare_intermediates(
        self, reference: OnnxruntimeRunner, feed: Feed, pairs: Sequence[tuple[str, str]], gate: Gate | None = None
    ) -> list[OutputResult | None]:
        """Each (tensor of the half model, tensor of the float32 ``reference``) pair compared as the half model
        stores it (``OnnxruntimeRunner.compare_intermediates``)."""
        named = [(self.simulated_name(c), r) for c, r in pairs]
        return self._runner.compare_intermediates(reference, self._cast(feed), feed, named, gate)


@dataclass(frozen=True)
class RunOptions:
    """How one command runs its models: in child processes or in this one, and for how long at most
    (None: ``isolation.DEFAULT_TIMEOUT``). Built once from the command's options; it makes the runners."""

    isolated: bool = True
    timeout: float | None = None

    def runner(
        self,
        model: onnx.ModelProto | str | os.PathLike | bytes,
        config: SessionConfig = SessionConfig(),
        *,
        label: str | None = None,
    ) -> OnnxruntimeRunner:
        """A file (its path) or serialized bytes run in a child unless the command is itself an isolated
        worker; a ModelProto is a model already validated in memory and runs in this process."""
        name = label or model_label(model)
        if self.isolated and isinstance(model, str | os.PathLike | bytes):
            return IsolatedRunner(model, config, label=name, timeout=self.timeout)
        return InProcessRunner(model, config, label=name, timeout=self.timeout)

    def call(self, fn: Callable[..., T], *args: Any, label: str) -> T:
        """``fn(*args)`` where this command runs onnxruntime: in a child, unless it is itself one (for work
        that is not a run of one model, such as onnxruntime's quantizer)."""
        if self.isolated and not in_isolated_child():
            return call_isolated(fn, *args, label=label, timeout=self.timeout or DEFAULT_TIMEOUT)
        return fn(*args)

    def faithful(self, model: onnx.ModelProto, *, label: str) -> FaithfulRunner:
        """``model`` judged half-faithfully (see FaithfulRunner), run where this command runs models."""
        return FaithfulRunner(model, label=label, options=self)


def measure_interleaved(
    runners: Mapping[str, OnnxruntimeRunner],
    feeds: Sequence[Feed],
    *,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float = 60.0,
    label: str,
) -> dict[str, LatencyStats]:
    """Latency of every runner's model (``feeds``: one per runner, in order), in turns inside one process
    (see validate.latency), so that every model sees the same machine. They share one kind and config."""
    first = next(iter(runners.values()))
    if any(type(r) is not type(first) or r.config != first.config for r in runners.values()):
        raise ValueError("models timed against each other run the same way: one runner kind, one SessionConfig")
    models = {name: r.model for name, r in runners.items()}
    timed = first.derived(label=label)
    return timed._call(execute.latency, models, list(feeds), first.config, warmup, runs, max_seconds)


def model_label(model: onnx.ModelProto | str | os.PathLike | bytes) -> str:
    """How messages name a model: its path, else its graph's name (bytes: "model")."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    return "model" if isinstance(model, bytes) else (model.graph.name or "model")
