"""What every rewrite shares: the options, the context it works in, and the one way a rule runs.

Every rewrite in normonnx is a *rule*, written as onnxscript's rewrite rules are, in three parts:

* ``match(node, ctx)``: is this node the start of the pattern? (``None``: not
  this rule's business, nothing is recorded);
* ``check(match, ctx)``: can it be rewritten exactly? A :class:`Refusal`
  says why not, naming the node; ``None`` means there is nothing to do; a
  plan carries everything the rewrite needs (no state on the rule);
* ``rewrite(plan, ctx)``: change the graph, through ``graph.edit`` and
  ``ctx.add_node``; returns what was done. The nodes it adds inherit the
  matched node's metadata (the exporter's module scopes).

A rule that needs one look at the whole graph before it judges single nodes
(which nodes are constant, which keys were seen) declares ``survey(ctx)``: its
result is ``ctx.survey`` for that sweep, and ``ctx.memo`` is a scratch dict
that lives as long. ``ops`` (optional) lists the ops a rule can match, so the
sweep skips the rest without calling it. ``tidy_first`` (optional) asks for
the nodes earlier rewrites orphaned to be gone before the sweep: a rule that
counts a tensor's readers must not count dead ones.

``run_rule`` sweeps a rule over a graph once and records a :class:`Decision`
under the rule's name for every plan it rewrote or refused; ``inspect``, the
reports, ``undone`` and bisection read those. ``passes.manager`` runs rules
in stages over whole models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.foldmath import FoldMathError
from normonnx.graph.access import GraphOutputs, all_names, bodies, op_is, unique_name_factory
from normonnx.graph.bridge import inherit_metadata, lazy_constant
from normonnx.graph.edit import tidy
from normonnx.graph.external import SpillStore, read_external
from normonnx.results import Decision

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
    # The exact simplifications (zero Pads into Conv, x*1 and x+0 away, Reshape chains read through, ...).
    simplify: bool = True
    # Rewrites left undone: the anchor node of a rule's rewrite, or the name of a simplification
    # pass (what bisecting a fold whose output failed parity varies).
    undone: frozenset[str] = frozenset()
    # The deployment target (normonnx.targets) the folded model is emitted for: its opset and forms.
    target: str | None = None


UNDONE = "left undone: the fold with this rewrite failed parity"


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
    # What the running rule's survey found, and its scratch space: both live for one sweep.
    survey: Any = None
    memo: dict = field(default_factory=dict)
    # Tensor names an If/Loop/Scan body reads from this graph: never bypassed (taken at each sweep).
    read_by_bodies: frozenset[str] = frozenset()
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


# The family of a rewrite that is no normalization's (a simplification, a precision change): recorded,
# undone and bisected like any other, never reported as a normalization folded or kept.
NO_FAMILY = ""


class Plan(Protocol):
    """What a rule's ``check`` hands to its ``rewrite``: at least the node it is about and its family."""

    anchor: str
    family: str


@dataclass(frozen=True)
class NodePlan:
    """The plan most rules hand from check to rewrite: the node it is about, named, and its family;
    a rule's own plan adds what its rewrite needs."""

    anchor: str
    family: str
    node: gs.Node


class Rule(Protocol):
    name: str

    def match(self, node: gs.Node, ctx: PassContext) -> Any | None: ...

    def check(self, match: Any, ctx: PassContext) -> Plan | Refusal | None: ...

    def rewrite(self, plan: Any, ctx: PassContext) -> str: ...


def _names_read_by_bodies(graph: gs.Graph) -> frozenset[str]:
    return frozenset(t.name for body in bodies(graph) for node in body.nodes for t in node.inputs)


def run_rule(rule: Rule, ctx: PassContext) -> int:
    """One sweep of ``rule`` over the graph's nodes (as they stood when it began); the rewrites made.

    Every plan rewritten or refused is recorded under the rule's name; a plan whose anchor the
    options leave undone is refused as such; a rewrite that raises FoldMathError left the graph
    untouched (its contract) and is recorded as refused with the reason.
    """
    if getattr(rule, "tidy_first", False):
        tidy(ctx.graph)
    ctx.read_by_bodies = _names_read_by_bodies(ctx.graph)
    ctx.memo = {}
    survey = getattr(rule, "survey", None)
    ctx.survey = survey(ctx) if survey is not None else None
    ops = getattr(rule, "ops", None)
    rewrites = 0
    try:
        for node in list(ctx.graph.nodes):
            if not node.outputs:  # detached by an earlier rewrite of this sweep
                continue
            if ops is not None and not op_is(node, *ops):
                continue
            match = rule.match(node, ctx)
            if match is None:
                continue
            plan = rule.check(match, ctx)
            if plan is None:
                continue
            if isinstance(plan, Refusal):
                ctx.refused(plan.node, plan.family, rule.name, plan.reason)
                continue
            if plan.anchor in ctx.options.undone:
                ctx.refused(plan.anchor, plan.family, rule.name, UNDONE)
                continue
            before = len(ctx.graph.nodes)
            try:
                done = rule.rewrite(plan, ctx)
            except FoldMathError as e:  # a value that would not survive the cast: the graph is untouched
                ctx.refused(plan.anchor, plan.family, rule.name, str(e))
                continue
            # The nodes a rewrite writes carry the scopes of the node it was about (check --torch names them).
            inherit_metadata(ctx.graph.nodes[before:], node)
            ctx.folded(plan.anchor, plan.family, rule.name, done)
            rewrites += 1
    finally:
        ctx.survey, ctx.memo = None, {}
    return rewrites
