"""The house's rules, checked on the source: no import cycles, imports only go down the data flow, small
modules, and one installed top-level package.

Every ``import`` counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import is
still a dependency a reader must follow. The flow (``loadgen/__init__.py`` maps it)::

    base (settings, records, errors, ...) → workload → schedule | client | metrics → report | observe
        → servers → engine → study → cli | api
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "loadgen"

# A module may import its own rank or lower ones, never a higher one.
RANK = {"base": 0, "workload": 1, "schedule": 2, "client": 2, "metrics": 2, "report": 3, "observe": 3,
        "servers": 3.5, "engine": 4, "study": 5, "cli": 6, "api": 6, "entry": 7}
# Reviewed exceptions, each with its reason.
EXCEPTIONS = {
    # Settings validation checks an arrival block by building its process (one source of truth).
    ("loadgen.settings", "loadgen.schedule.arrivals"),
    # The run-length estimate said before a run uses the simulator's analytic service time.
    ("loadgen.schedule.length", "loadgen.servers.sim.config"),
}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(name: str) -> str:
    parts = name.split(".")
    if name in ("loadgen", "loadgen.__main__"):
        return "entry"
    if name == "loadgen.api":
        return "api"
    if len(parts) >= 3 or (len(parts) == 2 and parts[1] in RANK and (PKG / parts[1]).is_dir()):
        return parts[1]
    return "base"


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loadgen"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(resolve(full if full in mods else node.module) or "")
            elif isinstance(node, ast.Import):
                edges.update(resolve(a.name) or "" for a in node.names if a.name.startswith("loadgen"))
        graph[name] = {e for e in edges if e and e not in (name, "loadgen")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(imports(modules())) == []


def test_imports_go_down_the_data_flow():
    graph = imports(modules())
    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if RANK[layer(b)] > RANK[layer(a)] and (a, b) not in EXCEPTIONS)
    assert upward == [], "imports against the flow (move the code down or pass it in):\n" + "\n".join(
        f"  {a} -> {b}" for a, b in upward)


def test_every_exception_is_still_needed():
    graph = imports(modules())
    assert [e for e in EXCEPTIONS if e[1] not in graph.get(e[0], set())] == []


def test_modules_stay_small_and_folders_say_what_is_inside():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert {"workload", "schedule", "client", "engine", "metrics", "report", "observe", "study", "servers",
            "cli"} <= packages
    for name in packages:  # each sub-package says what it holds
        assert ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text())), name


def test_the_simulator_and_launcher_live_inside_the_one_package():
    assert not (ROOT / "servers").exists()
    assert (PKG / "servers" / "sim" / "__main__.py").exists()
