"""How the runtime's modules depend on each other, checked on their source (AST, no imports run):
no import cycle (reading the ``e2actors.runtime`` package namespace counts as importing its
``__init__``), the transport never imports the node, and no module reaches into another
object's private attributes or imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "e2actors" / "runtime"
PACKAGE = "e2actors.runtime"

#: ``x._name`` accesses allowed, as (file, source text): the cell binding its actor instance to
#: itself (``Actor._cell``), both classes in the same module.
FRIENDS = {("actor.py", "actor._cell")}


def _module(path: Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported when ``path`` runs, modules imported only for type checking or inside
    functions) among the runtime's, ``from e2actors.runtime import x`` counting as the package."""
    eager: set[str] = set()
    lazy: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}

    def visit(body: list[ast.stmt], into: set[str]) -> None:
        for n in body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                into |= targets(n)
            elif isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                visit(n.body, lazy)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for m in ast.walk(n):
                    if isinstance(m, (ast.Import, ast.ImportFrom)):
                        lazy.update(targets(m))
            elif isinstance(n, (ast.If, ast.Try, ast.With, ast.ClassDef)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(n, field, []), into)

    visit(ast.parse(path.read_text()).body, eager)
    return eager, lazy


def test_no_import_cycle_in_the_runtime() -> None:
    graph: dict[str, set[str]] = {}
    typing_only: dict[str, set[str]] = {}
    for path in sorted(RUNTIME.glob("*.py")):
        me = _module(path)
        graph[me], typing_only[me] = _imports(path)
        graph[me].discard(me)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph.get(m, ()):
                if n == goal:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == [], f"modules on an import cycle: {cycles}"
    node = f"{PACKAGE}.node"
    assert node not in graph[f"{PACKAGE}.transport"] | typing_only[f"{PACKAGE}.transport"]
    assert PACKAGE not in graph[f"{PACKAGE}.transport"]
    # Back edges only for type hints: the actor's ``node`` attribute is typed as the Node.
    back = {(m, n) for m, ns in typing_only.items() for n in ns if reaches(n, m) or n == PACKAGE}
    assert back <= {(f"{PACKAGE}.actor", node)}, back


def test_no_private_reach_across_runtime_objects() -> None:
    reaches: list[str] = []
    for path in sorted(RUNTIME.glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.endswith("__"):
                if isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
                    continue
                if (path.name, ast.unparse(n)) not in FRIENDS:
                    reaches.append(f"{path.name}:{n.lineno}: {ast.unparse(n)}")
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("e2actors"):
                reaches += [f"{path.name}:{n.lineno}: imports {a.name}" for a in n.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert reaches == []
