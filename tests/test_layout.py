"""The import layout of server/, tools/, memory_store/ and evaluation/: no cycles, and every layer imports
only downwards.

The graph is read with `ast`, never by importing anything: every `import x` and `from x import y` at any
nesting level (inside functions, `if`, `try` too), relative imports resolved, and `from pkg import module`
counted as an import of the submodule. Only modules of the four packages are nodes. Importing `a.b.c`
counts as an edge to `a.b.c` alone, not to its parent packages `a` and `a.b` (as import linters do).

The layers, lowest first:
  memory_store                 imports neither tools nor server
  tools.core                   imports no other part of tools (bar the empty `tools` package itself)
  tools.models, tools.metrics  import no tool package, nor each other (a model with weights, like the
                               LPIPS network, lives in models; metrics are model-free)
  the tool packages            import no other tool package
  server                       may import anything below it; nothing below imports server
  evaluation                   an MCP client of the server: may import server and anything below; nothing
                               imports it but server.cli, whose `eval` command hands over to evaluation.cli
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "tools", "memory_store", "evaluation")
EVAL_ENTRY = ("server.cli", "evaluation.cli")  # the one import of evaluation from below it

CORE = "tools.core"
LOW = ("tools.models", "tools.metrics")
# the tool packages: each wraps one tool
TOOL_PACKAGES = (
    "tools.generate",
    "tools.refine_region",
    "tools.judge",
    "tools.search",
    "tools.session",
    "tools.memory",
    "tools.cut_out",
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    file: str  # relative to the root the graph was read from
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.file}:{self.line})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of the packages under root: its dotted name and its file."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing `name` runs last: `name` itself, or its longest known prefix."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imported_modules(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict
) -> set[str]:
    """The modules of ours one import statement runs: `from x import y` is `x.y` where that is a module, else `x`."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolve against the package this module is in
            package = module.split(".") if is_package else module.split(".")[:-1]
            if node.level - 1 > len(package):
                raise ValueError(f"relative import beyond the top-level package in {module}")
            base = package[: len(package) - (node.level - 1)]
            base_name = ".".join([*base, *([node.module] if node.module else [])])
        else:
            base_name = node.module or ""
        names = [
            f"{base_name}.{alias.name}" if f"{base_name}.{alias.name}" in modules else base_name
            for alias in node.names
        ]
    return {target for name in names if name and (target := resolve(name, modules)) is not None}


def import_edges(root: Path, packages: Iterable[str] = PACKAGES) -> tuple[set[str], list[Edge]]:
    """The modules of the packages under root and every import between them, with its file and line."""
    modules = find_modules(root, packages)
    edges: list[Edge] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # every nesting level: function bodies, if/try blocks, classes
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in sorted(imported_modules(node, module, is_package, modules) - {module}):
                    edges.append(Edge(module, target, path.relative_to(root).as_posix(), node.lineno))
    return set(modules), edges


def graph_of(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one, as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for start in sorted(
        graph
    ):  # Tarjan's algorithm, iterative so a deep graph cannot hit the recursion limit
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))

    cycles = []
    for component in components:
        members = set(component)
        first = component[0]
        # the shortest way back to `first` inside the component (breadth first)
        previous: dict[str, str] = {}
        frontier = [first]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for child in sorted(graph.get(node, ())):
                    if child == first:
                        found = node
                        break
                    if child in members and child not in previous:
                        previous[child] = node
                        following.append(child)
                if found is not None:
                    break
            frontier = following
        path = [first]
        node = found
        while node is not None and node != first:
            path.append(node)
            node = previous[node]
        cycles.append([first, *reversed(path[1:]), first])
    return sorted(cycles)


def describe_cycle(cycle: list[str], edges: Iterable[Edge]) -> str:
    where = {}
    for edge in edges:
        where.setdefault((edge.source, edge.target), f"{edge.file}:{edge.line}")
    steps = [f"{a} -> {b} ({where.get((a, b), '?')})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def tool_package(module: str) -> str | None:
    return next((p for p in TOOL_PACKAGES if within(module, p)), None)


def layering_problems(edges: Iterable[Edge]) -> list[str]:
    """Each import that goes against the layers, with the rule it breaks."""
    problems = []
    for edge in edges:
        source, target = edge.source, edge.target
        rule = None
        if (
            within(target, "evaluation")
            and not within(source, "evaluation")
            and (source, target) != EVAL_ENTRY
        ):
            rule = "only evaluation imports evaluation (and server.cli, evaluation.cli only)"
        elif within(target, "server") and not within(source, "server") and not within(source, "evaluation"):
            rule = "only server and evaluation import server"
        elif within(source, "memory_store") and within(target, "tools"):
            rule = "memory_store imports no part of tools"
        elif (
            within(source, CORE)
            and within(target, "tools")
            and target != "tools"
            and not within(target, CORE)
        ):
            rule = "tools.core imports no other part of tools"
        elif any(within(source, p) for p in LOW) and tool_package(target):
            rule = "tools.models and tools.metrics import no tool package"
        elif any(within(source, a) and within(target, b) for a, b in (LOW, LOW[::-1])):
            rule = "tools.models and tools.metrics import each other in neither direction"
        elif tool_package(source) and tool_package(target) and tool_package(source) != tool_package(target):
            rule = "a tool package imports no other tool package"
        if rule:
            problems.append(f"{edge}: {rule}")
    return sorted(problems)


@pytest.fixture(scope="module")
def layout() -> tuple[set[str], list[Edge]]:
    return import_edges(REPO)


def test_the_graph_is_read_from_every_module_of_the_three_packages(layout):
    modules, edges = layout
    # the check must not pass on an empty graph: it has to see the imports that are known to be there
    for package in PACKAGES:
        assert any(within(m, package) for m in modules), f"no module found under {package}/"
    assert len(modules) > 30, sorted(modules)
    pairs = {(e.source, e.target) for e in edges}
    assert ("server.cli", "server.app") in pairs  # an import inside a function
    assert ("server.memory_tools", "tools.memory") in pairs  # `from tools import memory`: a submodule
    assert ("memory_store", "memory_store.store") in pairs  # a package's __init__ importing its own modules


def test_there_are_no_import_cycles(layout):
    _, edges = layout
    cycles = find_cycles(graph_of(edges))
    assert not cycles, "import cycles:\n  " + "\n  ".join(describe_cycle(c, edges) for c in cycles)


def test_every_import_follows_the_layers(layout):
    _, edges = layout
    problems = layering_problems(edges)
    assert not problems, "imports against the layers:\n  " + "\n  ".join(problems)


# -- the checks themselves: they find what they are there to find ----------------------------------------------
def test_a_synthetic_cycle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # two cycles sharing a module are one component; the shortest cycle through its first module is named
    cycles = find_cycles({"x": {"y", "z"}, "y": {"x"}, "z": {"y"}})
    assert cycles == [["x", "y", "x"]]


def test_cycles_and_layer_breaks_are_found_in_files_through_every_kind_of_import(tmp_path):
    files = {
        "server/__init__.py": "",
        "server/app.py": "from tools.core import jobs\n",
        "tools/__init__.py": "",
        "tools/core/__init__.py": "",
        # an import inside a function, of a module of the layer above
        "tools/core/jobs.py": "def f():\n    from server import app\n    return app\n",
        "tools/judge/__init__.py": "from . import work\n",  # relative, a submodule
        "tools/judge/work.py": "if True:\n    import tools.judge.types\n",
        "tools/judge/types.py": "from ..judge import work\n",  # relative, two levels, back to work: a cycle
        "tools/search/__init__.py": "",
        "tools/search/page.py": "from tools.judge.types import X\n",  # a name from a module
        "memory_store/__init__.py": "",
        "memory_store/store.py": "try:\n    from tools import search\nexcept ImportError:\n    pass\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    modules, edges = import_edges(tmp_path)
    assert "tools.judge" in modules and "tools.core.jobs" in modules
    pairs = {(e.source, e.target): e for e in edges}
    assert (
        str(pairs["tools.core.jobs", "server.app"]) == "tools.core.jobs -> server.app (tools/core/jobs.py:2)"
    )
    assert ("tools.judge", "tools.judge.work") in pairs
    assert ("tools.judge.types", "tools.judge.work") in pairs
    assert ("tools.search.page", "tools.judge.types") in pairs
    assert ("memory_store.store", "tools.search") in pairs

    cycles = find_cycles(graph_of(edges))
    assert ["server.app", "tools.core.jobs", "server.app"] in cycles
    assert ["tools.judge.types", "tools.judge.work", "tools.judge.types"] in cycles
    assert "tools/judge/types.py:1" in describe_cycle(cycles[-1], edges)

    problems = layering_problems(edges)
    assert any(p.startswith("tools.core.jobs -> server.app") for p in problems), problems
    assert any(p.startswith("memory_store.store -> tools.search") for p in problems), problems
    assert any("tools.search.page -> tools.judge.types" in p and "other tool package" in p for p in problems)
    assert len(problems) == 3, problems
