"""What every pass shares: its context, the decisions it records, and how a rule runs.

A pass has a ``name`` and ``run(ctx) -> int`` (rewrites made); it works in
place on ``ctx.graph``. Most passes are *rules*, written as onnxscript's
rewrite rules are, in three parts:

* ``match(node, ctx)``: is this node the start of the pattern? (``None``: not
  this rule's business, nothing is recorded);
* ``check(match, ctx)``: can it be rewritten exactly? A :class:`Refusal`
  says why not, naming the node; ``None`` means there is nothing to do; a
  plan carries everything the rewrite needs (no state on the rule);
* ``rewrite(plan, ctx)``: change the graph; returns what was done.

``RulePass`` runs a rule over the graph and records, for every normalization
it looked at, a :class:`Decision` under the rule's own name: folded (and
into what) or refused (and why). ``inspect`` and the reports show them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import GraphOutputs, all_names, unique_name_factory
from normonnx.graph.bridge import lazy_constant
from normonnx.graph.external import SpillStore, read_external
from normonnx.passes._foldmath import FoldMathError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldOptions:
    """Knobs of the fold pipeline; the defaults are what ``normonnx fold`` does."""

    # Evaluate Shape/Size of tensors whose inferred shape is fully static.
    fold_static_shapes: bool = True
    # Constant subgraphs whose result is larger than this and than twice
    # their inputs are left alone (an Expand to a huge tensor is not a fold).
    growth_limit_bytes: int = 1 << 20
    # Opt-in: fold LayerNorm/RMSNorm/GroupNorm/InstanceNorm affines into the linear op after them.
    fold_norm_affine: bool = False
    # Opt-in: initializers also listed as graph inputs (ir_version >= 4) are constants, and
    # leave the input list. By default they are defaults a caller may override: never folded.
    constant_initializer_inputs: bool = False
    # Zero Pads into Conv, x*1 and x+0 away, Reshape chains read through (passes.simplify).
    simplify: bool = True
    # Rewrites left undone: the anchor node of a rule's rewrite, or the name of a simplification
    # pass (what bisecting a fold whose output failed parity varies).
    undone: frozenset[str] = frozenset()


UNDONE = "left undone: the fold with this rewrite failed parity"


@dataclass(frozen=True)
class Decision:
    """One pass's verdict on one normalization node."""

    node: str
    family: str
    pass_name: str
    folded: bool
    detail: str


@dataclass(frozen=True)
class Refusal:
    """Why a rule leaves a normalization as it is."""

    node: str
    family: str
    reason: str


@dataclass
class PassContext:
    graph: gs.Graph
    options: FoldOptions = field(default_factory=FoldOptions)
    decisions: list[Decision] = field(default_factory=list)
    nodes_added: int = 0
    # Where new weights go: None keeps them in memory; a SpillStore writes them to disk at once.
    store: SpillStore | None = None
    outputs: GraphOutputs = field(init=False)
    fresh: Callable[[str], str] = field(init=False)

    def __post_init__(self) -> None:
        self.outputs = GraphOutputs(self.graph)
        self.fresh = unique_name_factory(all_names(self.graph))

    def folded(self, node: str, family: str, pass_name: str, into: str) -> None:
        self.decisions.append(Decision(node, family, pass_name, True, into))

    def refused(self, node: str, family: str, pass_name: str, reason: str) -> None:
        self.decisions.append(Decision(node, family, pass_name, False, reason))

    def add_node(self, node: gs.Node) -> None:
        """Append a new node; the graph is then re-sorted on export."""
        self.graph.nodes.append(node)
        self.nodes_added += 1

    def constant(self, base: str, values) -> gs.Constant:
        """A new initializer with a name not used anywhere in the graph."""
        name = self.fresh(base)
        if self.store is not None and np.asarray(values).nbytes >= 1024:
            return lazy_constant(name, self.store.put(name, np.asarray(values)), read_external)
        return gs.Constant(name, values)


class Pass(Protocol):
    name: str

    def run(self, ctx: PassContext) -> int: ...


class Plan(Protocol):
    """What a rule's ``check`` hands to its ``rewrite``: at least the node it is about and its family."""

    anchor: str
    family: str


class Rule(Protocol):
    name: str

    def match(self, node: gs.Node, ctx: PassContext) -> Any | None: ...

    def check(self, match: Any, ctx: PassContext) -> Plan | Refusal | None: ...

    def rewrite(self, plan: Any, ctx: PassContext) -> str: ...


class RulePass:
    """A rule applied to every node of the graph once (a pipeline repeats it to a fixpoint)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name

    def run(self, ctx: PassContext) -> int:
        rule, rewrites = self.rule, 0
        for node in list(ctx.graph.nodes):
            if not node.outputs:  # detached by an earlier rewrite of this round
                continue
            match = rule.match(node, ctx)
            if match is None:
                continue
            plan = rule.check(match, ctx)
            if plan is None:
                continue
            if isinstance(plan, Refusal):
                ctx.refused(plan.node, plan.family, self.name, plan.reason)
                continue
            if plan.anchor in ctx.options.undone:
                ctx.refused(plan.anchor, plan.family, self.name, UNDONE)
                continue
            try:
                done = rule.rewrite(plan, ctx)
            except FoldMathError as e:  # a value that would not survive the cast: the graph is untouched
                ctx.refused(plan.anchor, plan.family, self.name, str(e))
                continue
            ctx.folded(plan.anchor, plan.family, self.name, done)
            rewrites += 1
        return rewrites


@dataclass(frozen=True)
class Stage:
    """Passes run in order, once or until a round changes nothing."""

    passes: tuple[Pass, ...]
    fixpoint: bool = False


@dataclass
class PipelineResult:
    rewrites: dict[str, int]
    converged: bool = True
    note: str = ""


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    max_rounds: int = 8

    @property
    def names(self) -> list[str]:
        return [p.name for s in self.stages for p in s.passes]

    def run(self, ctx: PassContext) -> PipelineResult:
        """Every stage in order; a fixpoint stage that still rewrites after ``max_rounds`` is reported."""
        result = PipelineResult({name: 0 for name in self.names})
        for stage in self.stages:
            rounds = self.max_rounds if stage.fixpoint else 1
            for _ in range(rounds):
                changed = 0
                for p in stage.passes:
                    if p.name in ctx.options.undone:
                        continue
                    n = p.run(ctx)
                    result.rewrites[p.name] += n
                    changed += n
                if not changed:
                    break
            else:
                if stage.fixpoint:
                    names = ", ".join(p.name for p in stage.passes)
                    result.converged = False
                    result.note = (
                        f"{names} still rewrote the graph after {rounds} rounds; stopped there"
                        " (the model is correct, but more may fold on another run)"
                    )
                    log.warning("%s", result.note)
        return result
