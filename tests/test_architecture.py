"""The layout the code promises: imports flow one way, agents uses only view_env's public API, no SB3 unless used,
functions short enough to read, and every entry point's ``main`` returns an exit status."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agents", "view_env")
#: view_env's modules agents may import from; the others (core, render, rng, data.<source>) are internals.
PUBLIC_VIEW_ENV = ("view_env", "view_env.data", "view_env.vector", "view_env.wrappers")
#: Longest function allowed in agents/ and benchmarks/ (benchmark ``main`` functions excepted).
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of :data:`PACKAGES`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import statement of a module, at any depth (function-level
    imports included), with relative imports resolved."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found += [(base, alias.name) for alias in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of :data:`PACKAGES` it imports (``from pkg import submodule`` is an edge to the
    submodule; an import of a name is an edge to the module that holds it)."""
    modules = _modules()

    def owner(module: str) -> str | None:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        return module or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, imported in _imports(name, path):
            submodule = f"{module}.{imported}" if imported else module
            target = owner(submodule) if submodule in modules else owner(module)
            if target is not None and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules, the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_agents_and_view_env():
    graph = _graph()
    assert "agents.network" in graph["agents.checkpoint"] and "agents.checkpoint" in graph["agents.probe"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_agents_flow_one_way():
    """config -> network -> checkpoint -> pretrain; the probes read checkpoints and never the training code."""
    graph = _graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    assert not {"agents.network", "agents.checkpoint", "agents.pretrain", "agents.probe"} & reaches("agents.config")
    assert not {"agents.checkpoint", "agents.pretrain", "agents.probe"} & reaches("agents.network")
    assert not {"agents.pretrain", "agents.probe", "agents.collect"} & reaches("agents.checkpoint")
    assert not {"agents.pretrain", "agents.collect"} & reaches("agents.probe")


def test_agents_import_only_the_public_api_of_view_env():
    bad = []
    for name, path in _modules().items():
        if not name.startswith("agents"):
            continue
        for module, imported in _imports(name, path):
            if not module.startswith("view_env"):
                continue
            if module not in PUBLIC_VIEW_ENV:
                bad.append(f"{name}: {module} is internal to view_env")
            elif imported is not None:
                public = getattr(importlib.import_module(module), "__all__", None)
                if imported.startswith("_") or (public is not None and imported not in public):
                    bad.append(f"{name}: {module}.{imported} is not public API")
    assert not bad, bad


def test_importing_the_pretrainer_does_not_load_stable_baselines3():
    code = "import sys, agents.pretrain, agents.probe; print('stable_baselines3' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "False", result.stderr


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_80_lines():
    long = []
    for folder in ("agents", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, lines in _functions(path):
                if lines > MAX_FUNCTION_LINES and not (folder == "benchmarks" and name == "main"):
                    long.append(f"{path.relative_to(ROOT)}: {name} is {lines} lines")
    assert not long, long


ENTRY_POINTS = ["agents/pretrain.py", "agents/collect.py", "agents/probe.py",
                *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py")
                        if p.name not in ("common.py", "pil_env.py"))]


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_every_entry_point_main_returns_an_exit_status(path):
    """``main(argv) -> int`` and the script exits with it (the tests of each command check the values)."""
    tree = ast.parse((ROOT / path).read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert ast.unparse(main.returns) == "int" and [a.arg for a in main.args.args] == ["argv"]
    guard = next(node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    assert ast.unparse(guard.body[0]) in ("raise SystemExit(main())", "sys.exit(main())")
