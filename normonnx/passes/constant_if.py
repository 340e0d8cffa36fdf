"""constant-if: an If whose condition is a constant is replaced by the branch it takes.

Before::

    cond (constant True) -> If(then_branch: a -> Relu -> r, else_branch: ...) -> out -> readers

After::

    a -> Relu -> r -> readers          (r takes out's name where out is a graph output)

Formula: an If with a constant condition always runs the same branch and returns its outputs; the
branch's nodes run in the outer graph just as well, since a body reads outer tensors by name and
they are all there. The conditions are computed from static shapes inside a recurrent model's
bodies (silero), and become constants once static-shape-parts and fold-constants have run.

Preconditions: the condition is a constant of one element; the branch takes no inputs and has as
many outputs as the If. An output of the If that is a graph output takes the branch's result under
its own name, through an Identity when the branch only passes an outer tensor through or a body
reads the name.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from normonnx.graph.access import constant_value, describe
from normonnx.graph.edit import detach, redirect, replace_output
from normonnx.passes._writer import Writer
from normonnx.passes.rules import NO_FAMILY, NodePlan, PassContext


@dataclass(frozen=True)
class _Inline(NodePlan):
    branch: gs.Graph
    taken: str  # "then" or "else"


class ConstantIf:
    name = "constant-if"
    tidy_first = True
    ops = ("If",)

    def match(self, node: gs.Node, ctx: PassContext) -> tuple[gs.Node, bool] | None:
        cond = constant_value(node.inputs[0]) if node.inputs else None
        return (node, bool(cond.reshape(-1)[0])) if cond is not None and cond.size == 1 else None

    def check(self, match: tuple[gs.Node, bool], ctx: PassContext) -> _Inline | None:
        node, cond = match
        taken = "then" if cond else "else"
        branch = node.attrs.get(f"{taken}_branch")
        if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs) or branch.inputs:
            return None
        return _Inline(describe(node), NO_FAMILY, node, branch, taken)

    def rewrite(self, plan: _Inline, ctx: PassContext) -> str:
        node, branch = plan.node, plan.branch
        results, outs = list(branch.outputs), list(node.outputs)
        detach([node])
        node.attrs.clear()  # its bodies go with it: nothing may walk into them any more
        for inner in list(branch.nodes):
            ctx.add_node(inner)
        made_here = {id(t) for n in branch.nodes for t in n.outputs}
        for out, result in zip(outs, results, strict=True):
            read_by_name = out.name in ctx.read_by_bodies
            if out in ctx.outputs and id(result) in made_here and not read_by_name:
                # The branch's own result takes the output's place and name: no Identity needed.
                replace_output(ctx.graph, out, result)
                ctx.outputs.replace(out, result)
                continue
            if out in ctx.outputs or read_by_name or result is out:
                Writer(ctx, f"{out.name}/taken").op("Identity", [result], out=out)
                continue
            redirect(out, result)
        return f"replaced by its {plan.taken} branch ({len(branch.nodes)} nodes)"
