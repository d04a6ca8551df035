"""The package's layers, checked on its source (AST, nothing imported): imports only go down
(cli -> manager -> switch -> nf -> packet -> runtime -> errors), no two modules import each other
in a loop, no module imports another's private names, and no module reaches into another
module's objects' private attributes. See docs/architecture.md, "Layers".

Every import counts, wherever it is: at the top, inside a function, under ``TYPE_CHECKING``. A
function-local import does not make a cycle acceptable.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "e2actors"

#: Layer of each top-level part of the package, lowest first.
LAYERS = {"errors": 0, "_version": 0, "runtime": 1, "packet": 2, "nf": 3, "testing": 3, "switch": 4,
          "manager": 5, "cli": 6, "agent": 6, "__main__": 6}

#: Upward imports the design admits, each with its reason.
ALLOWED_UPWARD = {
    ("e2actors.nf.vport.pipelet", "e2actors.switch.afpacket"):
        "a virtual-port NF drives its program through the switch's AF_PACKET port (the ring socket "
        "is not below nf/ yet)",
}

#: Import cycles admitted, as packages whose modules may form one (the test fails once none is
#: left, so that the allowance goes too). None now: the runtime's actor names its node through
#: the ``ActorHost`` protocol (``runtime/host.py``), not ``Node``.
KNOWN_CYCLE_PACKAGES: set[str] = set()

#: Private names of the standard library that are its public API (namedtuple's, os._exit, ...).
STDLIB_PRIVATE = {"_replace", "_asdict", "_fields", "_make", "_exit", "_getframe"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PKG.rglob("*.py"))}


SOURCES = sources()


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def imports(mod: str, tree: ast.Module) -> list[tuple[str, int, list[str]]]:
    """Every import of a package module: ``(target module, line, names imported from it)``."""
    out = []
    is_pkg = SOURCES[mod][0].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target in SOURCES:
                out.append((target, node.lineno, names))
            for n in names:  # ``from package import module``
                if f"{target}.{n}" in SOURCES:
                    out.append((f"{target}.{n}", node.lineno, []))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in SOURCES:
                    out.append((a.name, node.lineno, []))
    return [(t, line, names) for t, line, names in out if t != mod]


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for mod, (_p, tree) in SOURCES.items():
        for target, _line, _names in imports(mod, tree):
            if target != "e2actors":  # (the package's façade imports everything; nothing imports it)
                g[mod].add(target)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(g) | set(SOURCES)):
        if v not in index:
            visit(v)
    return out


def known(cycle: list[str]) -> bool:
    return any(all(m == p or m.startswith(p + ".") for m in cycle) for p in KNOWN_CYCLE_PACKAGES)


def test_every_module_has_a_layer() -> None:
    assert not [m for m in SOURCES if m != "e2actors" and layer(m) is None]


def test_imports_only_go_down() -> None:
    up = []
    for mod, (path, tree) in SOURCES.items():
        lm = layer(mod)
        if lm is None:
            continue
        for target, line, _names in imports(mod, tree):
            lt = layer(target)
            if lt is not None and lt > lm and (mod, target) not in ALLOWED_UPWARD:
                up.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} imports {target} (a layer above)")
    assert not up, "\n".join(up)


def test_allowed_upward_imports_still_exist() -> None:
    g = graph()
    stale = [pair for pair in ALLOWED_UPWARD if pair[1] not in g.get(pair[0], ())]
    assert not stale, f"no longer needed, remove from ALLOWED_UPWARD: {stale}"


def test_no_import_cycles() -> None:
    found = cycles(graph())
    bad = [c for c in found if not known(c)]
    assert not bad, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in bad)


def test_known_cycles_are_still_there() -> None:
    """An allowance for a cycle that is gone must go too (so nothing new hides behind it)."""
    found = cycles(graph())
    stale = [p for p in KNOWN_CYCLE_PACKAGES if not any(known(c) and c[0].startswith(p) for c in found)]
    assert not stale, f"no cycle left in {stale}: remove it from KNOWN_CYCLE_PACKAGES"


def test_no_private_names_imported_across_modules() -> None:
    bad = []
    for mod, (path, tree) in SOURCES.items():
        for target, line, names in imports(mod, tree):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in SOURCES:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line}: from {target} import {n}")
    assert not bad, "\n".join(bad)


def private_reaches(tree: ast.Module) -> list[tuple[int, str]]:
    """``obj._name`` where ``obj`` is not ``self``/``cls`` and the module does not itself define
    ``_name`` (an attribute set on ``self``, a function, a class, a slot): a reach into an object
    of another module."""
    own: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and \
                isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
            own.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            own.add(n.id)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("_"):
            own.add(n.value)  # (__slots__ entries)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            v = n.value
            if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                continue
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                continue
            if n.attr in own or n.attr in STDLIB_PRIVATE:
                continue
            out.append((n.lineno, ast.unparse(n)))
    return out


@pytest.mark.parametrize("part", ["errors", "runtime", "packet", "nf", "switch", "manager", "testing", "cli", "agent"])
def test_no_reaches_into_other_modules_private_attributes(part: str) -> None:
    """What a module needs of another module's objects is public."""
    bad = []
    for mod, (path, tree) in SOURCES.items():
        if mod.split(".")[1:2] != [part]:
            continue
        bad += [f"{path.relative_to(PKG.parent)}:{line}: {text}" for line, text in private_reaches(tree)]
    assert not bad, "\n".join(bad)


#: The manager's modules that own a node of their own (start, spawn on it, stop it).
NODE_OWNERS = {"e2actors.manager.deployment", "e2actors.manager.manager", "e2actors.manager.control",
               "e2actors.manager.shardhost"}


def node_reaches(tree: ast.Module) -> list[tuple[int, str]]:
    """``X.node.anything`` and ``X.node`` passed on: another object's node used directly."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr == "node" and not (
                isinstance(n.value, ast.Name) and n.value.id == "self"):
            out.append((n.lineno, ast.unparse(n)))
    return out


def test_only_the_deployment_talks_to_the_deployments_nodes() -> None:
    # Recovery, transactions, rebalancing: through Deployment's methods (spawn, stop, ask,
    # probe, quarantine, ...), never its node (docs/architecture.md, "The manager's modules").
    bad = []
    for mod, (path, tree) in SOURCES.items():
        if mod.startswith("e2actors.manager.") and mod not in NODE_OWNERS:
            bad += [f"{path.relative_to(PKG.parent)}:{line}: {text}" for line, text in node_reaches(tree)
                    if not text.endswith(("ref.node", "msg.node", "msg.ref.node", "target.node"))]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_should() -> None:
    """The checks themselves, on made-up modules: an upward import, a private name imported, a
    reach into another object's private attribute, and a cycle are all found."""
    tree = ast.parse("from e2actors.cli import main\nfrom e2actors.switch.condition import _lsh\n"
                     "def f(p):\n    return p._meta\n")
    assert private_reaches(tree) == [(4, "p._meta")]
    SOURCES["e2actors.packet.fake"] = (PKG / "packet" / "fake.py", tree)
    try:
        found = imports("e2actors.packet.fake", tree)
        assert ("e2actors.cli", 1, ["main"]) in found and layer("e2actors.cli") > layer("e2actors.packet.fake")
        assert ("e2actors.switch.condition", 2, ["_lsh"]) in found
    finally:
        del SOURCES["e2actors.packet.fake"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert node_reaches(ast.parse("dep.node.quarantine(a)\nself.node.stop()\n")) == [(1, "dep.node")]
