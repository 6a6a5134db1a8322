"""The import graph: every package imports only packages before it in :data:`LAYERS`, no modules import
each other in a circle, the library never imports the built-in benchmark, and `import safe.models` stays small.

Function-level imports count as much as module-level ones: an import moved into a function still runs
(at call time), so it can hide a circle but not remove one."""
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
LAYERS = ("adapters", "models", "processing", "data", "evaluation", "training", "policy", "inference", "reporting",
          "serve", "bench", "stages", "cli")
"""The packages of ``src/safe`` from the bottom up (``cli`` is the module ``cli.py``): each imports only
packages before it. ``bench`` (the built-in benchmark, base models and presets) sits above the library, so the
library never imports it; only ``stages`` (the commands, whose defaults are the built-in benchmark) and ``cli``
do. The top-level modules (``atomic``, ``runs``, ``validation``) sit below every package and import none;
``safe/__init__.py`` is the public facade, which names the library's entry points lazily; a package's
``__main__.py`` (``python -m ...``) is a command, on top with ``cli``."""
LIBRARY = LAYERS[:LAYERS.index("bench")]
BASE_MODULES = ("atomic", "runs", "validation")
PACKAGES = LIBRARY + ("bench",)


def _node(path: Path) -> str:
    """The layer a source file belongs to: its package, or its module name for a top-level file. A
    ``__main__.py`` (``python -m safe.x``) is a command entry point, so it sits on top with ``cli``."""
    rel = path.relative_to(SRC)
    if rel.name == "__main__.py":
        return "cli"
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_library(path: Path) -> bool:
    return _node(path) in LIBRARY or _node(path) in BASE_MODULES


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


def _module_name(path: Path) -> str:
    return ".".join(("safe",) + path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _package_graph() -> dict[str, dict[str, list[str]]]:
    """layer -> {layer it imports: ["file:line", ...]} over every source file but ``safe/__init__.py``."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in _sources():
        if path == SRC / "__init__.py":
            continue
        src = _node(path)
        for line, m in _imports(path):
            dst = _package(m)
            if dst is not None and dst != src:
                graph.setdefault(src, {}).setdefault(dst, []).append(f"{path.relative_to(SRC.parent)}:{line}")
    return graph


def _module_graph() -> dict[str, set[str]]:
    """module -> the ``safe`` modules it imports (a ``from pkg import name`` of a submodule names the submodule)."""
    names = {_module_name(p) for p in _sources()}
    graph: dict[str, set[str]] = {n: set() for n in names}
    for path in _sources():
        src = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                           for a in node.names]
            for t in targets:
                while t not in names and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in names and t != src and not src.startswith(t + "."):  # a package's own __init__ is no edge
                    graph[src].add(t)
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


def test_every_package_is_in_the_layer_order():
    found = {_node(p) for p in _sources()} - set(BASE_MODULES) - {"__init__"}
    assert found <= set(LAYERS), f"packages missing from LAYERS: {sorted(found - set(LAYERS))}"


def test_layers_point_one_way():
    """Each package imports only packages before it in :data:`LAYERS`; the top-level modules import no package."""
    order = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for src, dsts in _package_graph().items():
        for dst, where in dsts.items():
            if src in BASE_MODULES:
                ok = dst in BASE_MODULES
            else:
                ok = dst in BASE_MODULES or order[dst] < order[src]
            if not ok:
                bad.append(f"{src} imports {dst} ({', '.join(where[:3])}{', ...' if len(where) > 3 else ''})")
    assert not bad, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_no_modules_import_each_other_in_a_circle():
    graph = _module_graph()
    cycle = _find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_facade_names_the_library_only():
    """``safe/__init__.py`` (``safe.SAFEModel``, ``safe.pipeline``) resolves to the library, never to a command."""
    bad = [m for _, m in _imports(SRC / "__init__.py") if _package(m) not in LIBRARY]
    assert not bad, bad
