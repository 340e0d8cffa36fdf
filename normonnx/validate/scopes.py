"""The torch module an ONNX node came from, read from what the exporter recorded.

The dynamo exporter stores the module scopes of every node in its metadata
(``pkg.torch.onnx.name_scopes``: ``['', 'features', 'features.1', 'batch_norm']``, the last
entry the aten call); the TorchScript exporter names nodes by scope
(``/layers.0/attn/q/MatMul``: one level per segment, each either the full path or the
attribute name under the previous level). ``fold`` keeps the name of the node a
normalization folds into, so a folded model keeps its paths.
"""

from __future__ import annotations

import ast

import onnx

_DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"


def _from_metadata(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == _DYNAMO_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2 and all(isinstance(s, str) for s in scopes):
                return scopes[-2]
    return None


def _from_name(name: str) -> str | None:
    if not name.startswith("/"):
        return None
    path = ""
    for part in name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def module_path(node: onnx.NodeProto) -> str | None:
    """``stages.3.conv``; ``""`` for the root module; None when the exporter recorded nothing."""
    found = _from_metadata(node)
    return found if found is not None else _from_name(node.name)


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name -> the module path of the top-level node that computes it (where one is recorded)."""
    paths = {}
    for node in model.graph.node:
        path = module_path(node)
        if path is not None:
            for o in node.output:
                if o:
                    paths[o] = path
    return paths


def module_tensors(model: onnx.ModelProto, known: set[str]) -> dict[str, str]:
    """Module path -> the tensor that holds its output: the first output of the last top-level node
    (in the graph's order) recorded under that module or below it. Only paths in ``known`` (the
    module's ``named_modules``) count; the caller checks shapes, since a module's last node is not
    always what it returns."""
    last: dict[str, str] = {}
    for node in model.graph.node:
        path = module_path(node)
        if not path or not node.output or not node.output[0] or node.op_type in _NOT_RESULTS:
            continue
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if prefix in known:
                last[prefix] = node.output[0]
    return last


# Nodes that compute shapes and constants, never what a module returns.
_NOT_RESULTS = frozenset({"Constant", "Shape", "Size", "ConstantOfShape"})
