"""Every change to how nodes are wired goes through here, as ``onnx_ir.convenience`` is for onnx-ir.

A rewrite that rewires by hand (``user.inputs[i] = x`` in one place, ``node.outputs = [y]`` in
another, a third helper that clears both lists) leaves each call site to remember the cases: a
reader that reads the same tensor twice, an optional input past the end of the list, a tensor
that is a graph output. These few verbs remember them once.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

import numpy as np
import onnx_graphsurgeon as gs


def redirect(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node reading ``old`` reads ``new`` instead (every input slot that held it)."""
    for user in list(old.outputs):
        for i, t in enumerate(user.inputs):
            if t is old:
                user.inputs[i] = new


def set_input(node: gs.Node, index: int, tensor: gs.Tensor) -> None:
    """``node`` reads ``tensor`` at ``index``; optional inputs before it are left empty."""
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = tensor


def set_outputs(node: gs.Node, *tensors: gs.Tensor) -> None:
    """``node`` produces ``tensors`` (and nothing else): the tensors' previous producers lose them."""
    node.outputs = list(tensors)


def detach(nodes: Iterable[gs.Node]) -> None:
    """Unhook nodes from every tensor; the graph's cleanup drops them."""
    for n in nodes:
        n.inputs.clear()
        n.outputs.clear()


def bypass(node: gs.Node, x: gs.Tensor) -> None:
    """Every reader of ``node``'s first output reads ``x`` instead, and the node goes."""
    redirect(node.outputs[0], x)
    detach([node])


def to_constant(tensor: gs.Tensor, value: np.ndarray) -> None:
    """``tensor`` holds ``value`` from now on: its readers keep reading it, its producer loses it."""
    tensor.to_constant(value)
    tensor.inputs.clear()


def replace_output(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """``new`` takes ``old``'s place among the graph's outputs, and its name (what a caller of the model reads)."""
    graph.outputs[[o is old for o in graph.outputs].index(True)] = new
    new.name = old.name


def prune(nodes: Iterable[gs.Node], outputs: Container[gs.Tensor]) -> None:
    """Each of ``nodes`` that nothing reads any more (no output read, none among ``outputs``, the graph's)
    goes, and so, in turn, does every node that only fed one that went."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if any(t.outputs or t in outputs for t in node.outputs):
            continue
        feeding = [t.inputs[0] for t in node.inputs if t.inputs]
        detach([node])
        pending.extend(feeding)


def tidy(graph: gs.Graph) -> bool:
    """Drop the nodes that feed no graph output (graphsurgeon's cleanup), when there are any; whether there were.

    A rule counts readers: a node a rewrite orphaned must not count as one. The look for a node none
    of whose outputs is read is cheap; the cleanup that follows walks the graph and its bodies.
    """
    if not _unread(graph, GraphOutputs(graph)):
        return False
    cleanup(graph)
    return True


def _unread(graph: gs.Graph, outputs: GraphOutputs) -> list[gs.Node]:
    """The nodes none of whose outputs is read or is a graph output (a body's node reading an outer tensor
    is among that tensor's readers)."""
    return [n for n in graph.nodes if not any(t.outputs or t in outputs for t in n.outputs)]


class GraphOutputs:
    """Fast membership test for graph outputs (by identity)."""

    def __init__(self, graph: gs.Graph) -> None:
        self._ids = {id(t) for t in graph.outputs}

    def __contains__(self, tensor: gs.Tensor) -> bool:
        return id(tensor) in self._ids

    def replace(self, old: gs.Tensor, new: gs.Tensor) -> None:
        """``new`` now stands where ``old`` was among the outputs."""
        self._ids.discard(id(old))
        self._ids.add(id(new))


def cleanup(graph: gs.Graph) -> None:
    """graphsurgeon's cleanup (every node that feeds no graph output goes, in bodies too), with the nodes
    nothing reads removed first: graphsurgeon writes every node it removes into a log message, printing
    each constant's values, even when nothing is logged (0.8 s of a 7 MB detector's fold)."""
    outputs = GraphOutputs(graph)
    prune(_unread(graph, outputs), outputs)
    gone = [n for n in graph.nodes if not n.outputs]
    if gone:
        detach(gone)
        graph.nodes = [n for n in graph.nodes if n.outputs]
    graph.cleanup(remove_unused_graph_inputs=False)
