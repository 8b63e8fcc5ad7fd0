"""The import graph of the project's packages: arrows only point down, and no circles.

Every import counts, wherever it stands (module top, inside a function, under
`if TYPE_CHECKING:`): a circle hidden in a function is still a circle in the
design.  The layers (ARCHITECTURE.md):

    appliance  ->  mailstore  ->  cache  ->  gateway.s3        runtime is below all of them
    appliance  ->  gateway
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("gateway", "cache", "mailstore", "appliance", "runtime")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (resolved to the longest known module)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = imports_of(name, path, known)
        # importing a.b.c runs a/__init__ and a/b/__init__: count the module, not its parents
        g[name] = {d for d in deps if not name.startswith(d + ".")}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_arrows_point_down() -> None:
    forbidden = {
        "gateway": {"appliance", "mailstore", "cache"},
        "cache": {"appliance", "mailstore"},
        "mailstore": {"appliance"},
        "runtime": {"appliance", "mailstore", "cache", "gateway"},
    }
    bad = []
    for mod, deps in graph().items():
        for d in deps:
            if top(d) in forbidden.get(top(mod), set()):
                bad.append(f"{mod} -> {d}")
            # below the gateway's protocol layer, only its pure protocol may be used from outside
            if top(mod) in ("cache", "mailstore") and top(d) == "gateway" and not d.startswith("gateway.s3"):
                bad.append(f"{mod} -> {d}")
    assert bad == []


def test_the_walker_sees_circles_and_upward_arrows() -> None:
    """The checks above could pass by seeing nothing: they must catch a made-up circle."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    assert "gateway.s3.sigv4" in g["cache.s3client"]
    assert "runtime.batching" in g["mailstore.db"]
    assert len(g) > 60
