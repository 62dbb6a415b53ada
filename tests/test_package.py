"""The package as a whole: every shipped config loads, the import graph has no cycle and no function-level imports,
and the torch-free modules stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activeseg.bench.config import BenchmarkConfig, load_benchmark
from activeseg.config import RunConfig, load_config

from _support import REPO

PACKAGE = REPO / "src" / "activeseg"
RUN_CONFIGS = sorted((PACKAGE / "configs").glob("*.yaml"))
BENCHMARK_YAMLS = sorted((REPO / "benchmarks").glob("*.yaml"))


def is_benchmark(path: Path) -> bool:
    """A benchmark YAML names its strategies and the run they share; anything else is a run config."""
    raw = yaml.safe_load(path.read_text()) or {}
    return "strategies" in raw or "run" in raw


def test_there_are_shipped_configs_of_both_kinds() -> None:
    assert RUN_CONFIGS, f"no run config under {PACKAGE / 'configs'}"
    assert any(is_benchmark(p) for p in BENCHMARK_YAMLS) and not all(is_benchmark(p) for p in BENCHMARK_YAMLS)


@pytest.mark.parametrize("path", RUN_CONFIGS + BENCHMARK_YAMLS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_config_loads(path: Path) -> None:
    if is_benchmark(path):
        assert isinstance(load_benchmark(path), BenchmarkConfig)
    else:
        assert isinstance(load_config(path), RunConfig)


# --- the import graph ------------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
OPTIONAL_EXTRAS = {"src/activeseg/cli.py": "from activeseg.annotation.server import serve as run_server"}
"""The one deliberate function-level import: ``activeseg serve`` imports the server (FastAPI, the optional 'serve'
extra) only when asked to, and names the extra if it is missing."""


def resolve(module: str, level: int, importer: str) -> str:
    """The absolute module name of ``from <level dots><module> import …`` written in ``importer``."""
    if not level:
        return module
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{module}" if module else base


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(name: str) -> tuple[set[str], list[str]]:
    """The activeseg modules that ``name`` imports when it runs, and its imports inside functions (``line: code``)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    edges: set[str] = set()
    nested: list[str] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        module = resolve(node.module or "", node.level, name)
        # `from package import module` imports that module; `from module import name` imports the module
        return [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for statement in node.orelse:
                visit(statement, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found = [t for t in targets(node) if t == "activeseg" or t.startswith("activeseg.")]
            if found and in_function:
                where, code = str(MODULES[name].relative_to(REPO)), ast.unparse(node)
                if OPTIONAL_EXTRAS.get(where) != code:
                    nested.append(f"{where}:{node.lineno}: {code}")
            edges.update(t for t in found if t != name)
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, in_function=False)
    unknown = {e for e in edges if e not in MODULES}
    assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    return edges, nested


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``a → b → … → a``) of the graph, or None: a depth-first search for a back edge."""
    state: dict[str, str] = {}  # "active" while on the search stack, "done" after
    stack: list[str] = []

    def search(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "active":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := search(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := search(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": set(), "b": {"b"}}) == ["b", "b"]


def test_module_imports_form_no_cycle_and_none_hides_in_a_function() -> None:
    graph, nested = {}, []
    for name in MODULES:
        graph[name], inside = runtime_imports(name)
        nested += inside
    assert len(MODULES) > 40 and sum(map(len, graph.values())) > 100  # the walk really saw the package
    assert "activeseg.rundir.layout" not in graph["activeseg.rundir.label_store"]  # only under TYPE_CHECKING
    assert "activeseg.config" in graph["activeseg.engine.loop"]
    assert find_cycle(graph) is None, "import cycle: " + " → ".join(find_cycle(graph) or [])
    assert nested == [], "function-level imports of activeseg modules:\n" + "\n".join(nested)


# --- torch-free modules ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["activeseg.config", "activeseg.bench.stats"])
def test_module_imports_without_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"importing {module} imports torch"
