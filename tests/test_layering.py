"""The import graph: the library never imports the built-in benchmark, `import safe.models` stays
small, and the library packages import each other without cycles.

The library is everything under ``src/safe`` except ``bench/`` (the built-in benchmark, base models
and presets), ``cli*.py``, ``stages/`` and ``serve/`` (the server, a consumer of the stages; these may
import anything)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import safe

SRC = Path(safe.__file__).resolve().parent
LIBRARY = ("adapters", "models", "processing", "data", "training", "policy", "evaluation")
PACKAGES = LIBRARY + ("bench",)


def _is_library(path: Path) -> bool:
    rel = path.relative_to(SRC)
    return not (rel.parts[0] in ("bench", "stages", "serve") or (len(rel.parts) == 1 and rel.name.startswith("cli")))


def _library_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if _is_library(p))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute ``safe.*`` module a file imports, at any depth (functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from safe import bench` names a package in the alias list, not in `module`.
            out += ([(node.lineno, f"safe.{a.name}") for a in node.names] if node.module == "safe"
                    else [(node.lineno, node.module)])
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; the layering scan reads absolute ones")
    return [(line, m) for line, m in out if m == "safe" or m.startswith("safe.")]


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


_PROBE = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module("safe.{package}")
for info in pkgutil.walk_packages(pkg.__path__, "safe.{package}."):
    importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("safe."))))
"""


def _loaded_by(package: str) -> list[str]:
    """The ``safe.*`` modules a fresh interpreter holds after importing ``safe.<package>`` and every
    module in it (the package ``__init__`` files are nearly empty, so importing them alone shows little)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", _PROBE.format(package=package)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[str]]:
    return {p: _loaded_by(p) for p in PACKAGES}


def test_fresh_interpreter_imports_every_module_of_this_tree(loaded):
    # The subprocess must import the same sources the tests run on, or the checks below say nothing.
    for package in PACKAGES:
        mine = {".".join(("safe",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                for p in (SRC / package).rglob("*.py")}
        assert mine <= set(loaded[package]), sorted(mine - set(loaded[package]))


def test_import_safe_models_loads_no_upper_layer(loaded):
    above = ("safe.policy", "safe.training", "safe.evaluation", "safe.bench")
    bad = [m for m in loaded["models"] if m.split(".")[:2] in [a.split(".") for a in above]]
    assert not bad, f"`import safe.models` loads {bad}"


@pytest.mark.parametrize("package", LIBRARY)
def test_no_library_package_loads_the_benchmark(loaded, package):
    bad = [m for m in loaded[package] if m == "safe.bench" or m.startswith("safe.bench.")]
    assert not bad, f"`import safe.{package}` loads {bad}"


def test_no_library_module_imports_the_benchmark_anywhere():
    """Static: function-level imports count too (they would load the benchmark at call time)."""
    bad = [f"{p.relative_to(SRC.parent)}:{line} imports {m}" for p in _library_modules()
           for line, m in _imports(p) if _package(m) == "bench"]
    assert not bad, "\n".join(bad)


def test_scanner_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from safe.bench import files\n    import safe.bench.questions\n"
                     "from safe import bench\n")
    assert sorted(m for _, m in _imports(probe)) == ["safe.bench", "safe.bench", "safe.bench.questions"]


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {p: set() for p in LIBRARY}
    for path in _library_modules():
        rel = path.relative_to(SRC)
        src_pkg = rel.parts[0] if len(rel.parts) > 1 else None
        if src_pkg not in graph:
            continue  # top-level modules (safe/__init__.py, runs.py) are not package nodes
        for _, m in _imports(path):
            dst = _package(m)
            if dst in graph and dst != src_pkg:
                graph[src_pkg].add(dst)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_names_the_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_packages_import_each_other_without_cycles():
    graph = _package_graph()
    cycle = _find_cycle(graph)
    assert cycle is None, f"import cycle between packages: {' -> '.join(cycle)} (graph: {graph})"


def test_layers_point_one_way():
    """The order the packages build on each other (each imports only packages before it)."""
    order = ["adapters", "models", "processing", "data", "evaluation", "training", "policy"]
    graph = _package_graph()
    upward = [(src, dst) for src, dsts in graph.items() for dst in dsts if order.index(dst) > order.index(src)]
    assert not upward, f"imports against the layer order {order}: {upward}"


def test_only_the_cli_and_stages_sit_on_top():
    """Nothing in the library or the built-in benchmark imports the stages or the command line: those are
    the top layer (stages may import the library and ``safe.bench``; ``safe.cli`` imports stages)."""
    # safe/__init__.py is the public facade: `safe.pipeline` resolves to safe.inference.pipeline on first use.
    # safe.serve (the server) sits there too: it builds on safe.inference, and stages start it.
    modules = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in ("stages", "serve")
               and not (len(p.relative_to(SRC).parts) == 1 and p.name in ("cli.py", "__init__.py"))]
    bad = [f"{p.relative_to(SRC.parent)}:{line} imports {m}" for p in modules for line, m in _imports(p)
           if _package(m) in ("stages", "cli", "serve")]
    assert not bad, "\n".join(bad)
    cli_imports = [m for _, m in _imports(SRC / "cli.py")]
    assert all(_package(m) in (None, "stages") for m in cli_imports), cli_imports
