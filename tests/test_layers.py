"""The layering of docs/ARCHITECTURE.md, checked on the source: nothing below imports upward, no two
modules import each other (directly or around a circle), and torch is imported only where a torch model
is involved. Every import counts: at the top, inside functions, and under ``if TYPE_CHECKING:``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normonnx"
# Bottom to top; a module may import from its own layer and the layers below it.
LAYERS = [
    {"errors", "families", "fileio", "isolation", "foldmath", "reports.schema", "reports.table", "results"},
    {"graph", "targets"},
    {"recognize"},
    {"passes"},
    {"validate", "int8", "torchfront", "reports", "zoo"},
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


def _imports(tree: ast.Module, type_checking: bool = True):
    """(imported module, line) for every import; those under ``if TYPE_CHECKING:`` only with ``type_checking``
    (a type named from a higher layer is an upward dependency, though nothing is imported at run time)."""
    skip = set()
    for node in ast.walk(tree):
        if not type_checking and isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
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
    """(name below normonnx, parsed source) of every module, the zoo's too: it lives in models/, shipped as zoo."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path).removesuffix(".__init__"), ast.parse(path.read_text())
    zoo = PACKAGE.parent / "models"  # pyproject.toml's package-dir maps it to normonnx.zoo
    for path in sorted(zoo.rglob("*.py")):
        name = ".".join(("zoo", *path.relative_to(zoo).with_suffix("").parts))
        yield name.removesuffix(".__init__"), ast.parse(path.read_text())


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


def _module_graph() -> dict[str, dict[str, int]]:
    """Every module below normonnx -> the modules it imports -> the line of the first such import.

    ``from normonnx.x import name`` is an import of ``x.name`` when that is a module, else of ``x``."""
    sources = dict(_sources())
    modules = set(sources) | {"__init__"}

    def module(target: str) -> str | None:
        if target == "normonnx":
            return "__init__"
        inner = target.removeprefix("normonnx.")
        return inner if target.startswith("normonnx.") and inner in modules else None

    graph: dict[str, dict[str, int]] = {}
    for name, tree in sources.items():
        edges = graph.setdefault(name, {})
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [module(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [module(f"{node.module}.{a.name}") or module(node.module) for a in node.names]
            else:
                continue
            for target in targets:
                if target is not None and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _shortest_circle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """One circle through the component's first module, each import with its line: what to cut."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                path.reverse()
                steps = [
                    f"normonnx.{a}:{graph[a][b]} -> normonnx.{b}" for a, b in zip(path, [*path[1:], start], strict=True)
                ]
                return "; ".join(steps)
            if w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"no circle through {start}")


def test_circles_found_on_a_small_graph():
    """The circle finder itself: a triangle and a pair are found, a chain and a self-import are not."""
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"e": 4}, "e": {"d": 5}, "f": {"a": 6}, "g": {}}
    assert _circles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _shortest_circle(graph, ["a", "b", "c"]) == (
        "normonnx.a:1 -> normonnx.b; normonnx.b:2 -> normonnx.c; normonnx.c:3 -> normonnx.a"
    )


def test_no_import_circles():
    """Two modules that need each other are one concept split in two, or a result defined above its renderer:
    each circle is listed with the imports that close it."""
    graph = _module_graph()
    assert "results" in graph and "graph.bridge" in graph["graph.access"]  # the graph is built at all
    problems = [f"{' <-> '.join(c)}: {_shortest_circle(graph, c)}" for c in _circles(graph)]
    assert not problems, "import circles:\n" + "\n".join(problems)


def test_torch_is_imported_only_where_a_torch_model_is_involved():
    users = set()
    for name, tree in _sources():
        if any(t == "torch" or t.startswith("torch.") for t, _ in _imports(tree, type_checking=False)):
            users.add(name)
    assert all(any(u == t or u.startswith(t + ".") for t in TORCH_USERS) for u in users), sorted(users)
    assert "validate.torch_reference" in users  # the check itself can fail
