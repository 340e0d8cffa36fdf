"""The layering of docs/ARCHITECTURE.md, checked on the source: nothing below imports upward, and torch
is imported only where a torch model is involved."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normonnx"
# Bottom to top; a module may import from its own layer and the layers below it.
LAYERS = [
    {"errors", "families", "fileio", "isolation", "passes._foldmath", "reports.schema", "reports.table"},
    {"graph"},
    {"recognize"},
    {"passes"},
    {"validate", "torchfront", "reports", "zoo"},
    {"pipelines"},
    {"cli", "__init__", "__main__"},
]
TORCH_USERS = {"torchfront", "zoo", "validate.torch_reference", "pipelines.export", "pipelines.convert"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _layer(name: str) -> int:
    """The layer of a module: the most specific entry that names it or a package above it."""
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if (name == entry or name.startswith(entry + ".")) and entry.count(".") > depth:
                best, depth = i, entry.count(".")
    assert best is not None, f"normonnx.{name} is in no layer of ARCHITECTURE.md"
    return best


def _imports(tree: ast.Module):
    """(imported module, line) for every import outside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, node.lineno
            yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path).removesuffix(".__init__"), ast.parse(path.read_text())


def test_no_module_imports_upward():
    problems = []
    for name, tree in _sources():
        mine = _layer(name)
        for target, line in _imports(tree):
            if not target.startswith("normonnx."):
                continue
            inner = target.removeprefix("normonnx.")
            if (
                not (PACKAGE / inner.replace(".", "/")).with_suffix(".py").exists()
                and not (PACKAGE / inner.replace(".", "/")).is_dir()
            ):
                continue  # `from normonnx.x import name`: the module itself is checked
            if _layer(inner) > mine:
                problems.append(f"normonnx.{name}:{line} imports {target} from a higher layer")
    assert not problems, "\n".join(problems)


def test_torch_is_imported_only_where_a_torch_model_is_involved():
    users = set()
    for name, tree in _sources():
        if any(t == "torch" or t.startswith("torch.") for t, _ in _imports(tree)):
            users.add(name)
    assert all(any(u == t or u.startswith(t + ".") for t in TORCH_USERS) for u in users), sorted(users)
    assert "validate.torch_reference" in users  # the check itself can fail
