"""The pass manager: a model in, the rewritten model and every decision out.

``Pipeline.apply`` is the one place where a ModelProto becomes a graph, rules
run over it, and it becomes a ModelProto again. It owns what each command
used to do by hand: the bridge (model-level fields kept), the stages (a
fixpoint stage repeats until a round changes nothing, and says so when it is
cut off), the same pipeline inside every If/Loop/Scan body, shape inference
again while a rewrite keeps making more shapes known, the topological sort
when nodes were added, and onnx's structural check of the result.

A third party writes a rule in one file (see ``passes.rules``) and runs it::

    outcome = Pipeline((Stage((MyRule(),)),)).apply(model)
    outcome.model, outcome.decisions
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from normonnx.errors import OutputError, first_line
from normonnx.graph.access import bodies
from normonnx.graph.bridge import prepare_graph, to_model
from normonnx.graph.external import SpillStore
from normonnx.graph.modelio import check_structure
from normonnx.passes.rules import FoldOptions, PassContext, Rule, run_rule
from normonnx.results import Decision

log = logging.getLogger(__name__)
BODIES = "in If/Loop/Scan bodies"


@dataclass(frozen=True)
class Stage:
    """Rules run in order, once or until a round changes nothing."""

    rules: tuple[Rule, ...]
    fixpoint: bool = False


@dataclass
class PipelineResult:
    """What one run of the stages over one graph did."""

    rewrites: dict[str, int]
    converged: bool = True
    note: str = ""


@dataclass
class PassOutcome:
    """A rewritten model, what every rule decided, and what the caller should be told."""

    model: onnx.ModelProto
    graph: gs.Graph  # the rewritten graph the model was exported from (for statistics and scans)
    decisions: list[Decision] = field(default_factory=list)
    rewrites: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    converged: bool = True


@dataclass(frozen=True)
class Pipeline:
    """Stages of rules, and how the manager carries them over a whole model.

    ``into_bodies``: run the same stages inside every If/Loop/Scan body (a body's outputs stay).
    ``reinfer``: after a run, whether shapes should be inferred again and the stages run again
    (``reinfer(rewrites, graph)``), at most ``max_reinference`` times.
    """

    stages: tuple[Stage, ...]
    max_rounds: int = 8
    into_bodies: bool = False
    reinfer: Callable[[dict[str, int], gs.Graph], bool] | None = None
    max_reinference: int = 16

    @property
    def names(self) -> list[str]:
        return [r.name for s in self.stages for r in s.rules]

    def run(self, ctx: PassContext) -> PipelineResult:
        """Every stage in order on ``ctx.graph``; a fixpoint stage still rewriting after ``max_rounds`` is reported."""
        result = PipelineResult({name: 0 for name in self.names})
        for stage in self.stages:
            rounds = self.max_rounds if stage.fixpoint else 1
            for _ in range(rounds):
                changed = 0
                for rule in stage.rules:
                    if rule.name in ctx.options.undone:
                        continue
                    n = run_rule(rule, ctx)
                    result.rewrites[rule.name] += n
                    changed += n
                if not changed:
                    break
            else:
                if stage.fixpoint:
                    names = ", ".join(r.name for r in stage.rules)
                    result.converged = False
                    result.note = (
                        f"{names} still rewrote the graph after {rounds} rounds; stopped there"
                        " (the model is correct, but more may fold on another run)"
                    )
                    log.warning("%s", result.note)
        return result

    def apply(
        self,
        model: onnx.ModelProto,
        options: FoldOptions | None = None,
        *,
        graph: gs.Graph | None = None,
        store: SpillStore | None = None,
        always_infer: bool = False,
        sort: bool | None = None,
        check: bool = True,
    ) -> PassOutcome:
        """The rewritten copy of ``model`` (which is never modified) and every decision.

        ``graph``: ``model`` already bridged (``prepare_graph``), when the caller looked at it first.
        ``store``: where new weights go (models whose weights stay on disk).
        ``sort``: None sorts when a rule added nodes; True or False decide for the caller.
        ``check``: onnx's structural checker on the result (models kept in memory); a failure the model
        came in with is not blamed on the rules.
        """
        options = options or FoldOptions()
        graph = graph if graph is not None else prepare_graph(model, always_infer=always_infer)
        ctx = PassContext(graph, options, store=store)
        ran = self.run(ctx)
        rewrites, notes, converged = dict(ran.rewrites), [ran.note] if ran.note else [], ran.converged
        in_bodies = self._run_in_bodies(graph, ctx) if self.into_bodies else 0
        if in_bodies:
            rewrites[BODIES] = in_bodies
        out = to_model(graph, model, sort=_sort(sort, ctx.nodes_added + in_bodies))
        rounds = 0
        while self.reinfer is not None and self.reinfer(ran.rewrites, graph):
            if rounds == self.max_reinference:
                notes.append(f"shapes were inferred again {rounds} times and rules still rewrote; stopped there")
                break
            rounds += 1
            # What a rewrite made constant can make the next tensor's shape inferable (TorchScript's
            # GroupNorm reshapes): infer again and rewrite on, so that one run leaves nothing for the next.
            graph = prepare_graph(out, always_infer=True)
            ctx = PassContext(graph, options, decisions=ctx.decisions, store=store)
            ran = self.run(ctx)
            if not any(ran.rewrites.values()):
                break
            rewrites = {k: rewrites.get(k, 0) + v for k, v in ran.rewrites.items()}
            notes += [ran.note] if ran.note else []
            converged = converged and ran.converged
            out = to_model(graph, model, sort=_sort(sort, ctx.nodes_added))
        if check:
            _check_result(out, model)
        return PassOutcome(out, graph, ctx.decisions, rewrites, notes, converged)

    def _run_in_bodies(self, graph: gs.Graph, parent: PassContext) -> int:
        """The same stages inside every If/Loop/Scan body, innermost last (silero's recurrent bodies hold
        shape arithmetic and Ifs whose conditions are constant there)."""
        done = 0
        for body in bodies(graph):
            body.opset = body.opset or graph.opset
            ctx = PassContext(body, parent.options, decisions=parent.decisions, store=parent.store)
            done += sum(self.run(ctx).rewrites.values())
            if ctx.nodes_added:
                body.toposort()
        return done


def _sort(sort: bool | None, added: int) -> bool:
    """Rules that only remove nodes or rewire in place keep a sorted graph sorted; added nodes need the sort."""
    return bool(added) if sort is None else sort


_CHECK_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def _check_result(out: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """onnx's structural checker on the rewritten model; a failure the model came in with is not the rules'."""
    try:
        check_structure(out)
    except _CHECK_ERRORS as e:
        try:
            check_structure(model)
        except _CHECK_ERRORS:
            return
        name = model.graph.name or "<model>"
        raise OutputError(f"{name}: the rewritten model fails onnx.checker: {first_line(e)}") from None
