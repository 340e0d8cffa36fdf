"""What every pass shares: the context it works in and the decisions it records.

A pass is an object with a ``name`` and ``run(ctx) -> int`` (rewrites made).
It works in place on ``ctx.graph`` and records, for each normalization it
looked at, a :class:`Decision`: folded (and into what) or refused (and why).
``inspect`` and the fold report show those decisions to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx_graphsurgeon as gs

from normonnx.graph.access import GraphOutputs, all_names, unique_name_factory
from normonnx.graph.external import SpillStore


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


@dataclass(frozen=True)
class Decision:
    """One pass's verdict on one normalization node."""

    node: str
    family: str
    pass_name: str
    folded: bool
    detail: str


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
            return gs.Constant(name, self.store.put(name, np.asarray(values)))
        return gs.Constant(name, values)


class Pass(Protocol):
    name: str

    def run(self, ctx: PassContext) -> int: ...


def run_to_fixpoint(passes: list[Pass], ctx: PassContext, max_rounds: int = 8) -> dict[str, int]:
    """Run the passes in order until a round changes nothing; return rewrites per pass."""
    counts = {p.name: 0 for p in passes}
    for _ in range(max_rounds):
        changed = 0
        for p in passes:
            n = p.run(ctx)
            counts[p.name] += n
            changed += n
        if not changed:
            break
    return counts
