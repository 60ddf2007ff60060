"""The package's shape: no import circles, products below executors, plugins only through the registry.

Every import counts (module level, inside functions, under ``if TYPE_CHECKING:``): an edge A -> B
means module A imports module B of the package. The layering the job graph relies on: product
modules never import the job graph or an executor; executors never import the runner. The core
(``benchmark/``, ``leaderboard/``) imports no defense, attack or metric module (documented exceptions in
``CORE_PLUGIN_IMPORTS``), and plugin kinds do not import each other. Modules and functions have no
line budget: they are split by responsibility, not by length.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder (pyproject.toml's package-dir)
PACKAGE_DIRS = {"inversion_bench": "benchmark", "inversion_bench.defenses": "defenses",
                "inversion_bench.attacks": "attacks", "inversion_bench.metrics": "metrics",
                "inversion_bench.leaderboard": "leaderboard"}


def package_modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    mods: dict[str, Path] = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            edges.update(t for t in map(resolve, targets) if t is not None and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package():
    found = cycles(import_graph(package_modules()))
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("layer,forbidden", [
    ("inversion_bench.products", ("inversion_bench.jobs", "inversion_bench.executors", "inversion_bench.runner",
                                  "inversion_bench.leaderboard", "inversion_bench.cli")),
    ("inversion_bench.run_context", ("inversion_bench.products", "inversion_bench.jobs",
                                     "inversion_bench.executors", "inversion_bench.runner")),
    ("inversion_bench.jobs", ("inversion_bench.executors", "inversion_bench.runner")),
    ("inversion_bench.executors", ("inversion_bench.runner", "inversion_bench.cli", "inversion_bench.leaderboard")),
    ("inversion_bench.defenses", ("inversion_bench.runner", "inversion_bench.executors", "inversion_bench.jobs",
                                  "inversion_bench.products")),
    ("inversion_bench.attacks", ("inversion_bench.runner", "inversion_bench.executors", "inversion_bench.jobs",
                                 "inversion_bench.products")),
    ("inversion_bench.leaderboard", ("inversion_bench.runner", "inversion_bench.executors", "inversion_bench.jobs",
                                     "inversion_bench.cli")),
    ("inversion_bench.metrics", ("inversion_bench.runner", "inversion_bench.executors", "inversion_bench.jobs",
                                 "inversion_bench.products")),
])
def test_layers(layer, forbidden):
    graph = import_graph(package_modules())
    bad = [(m, t) for m, edges in graph.items() if m == layer or m.startswith(layer + ".")
           for t in edges if any(t == f or t.startswith(f + ".") for f in forbidden)]
    assert bad == [], f"{layer} must not import {forbidden}: {bad}"


def test_no_code_imports_the_repository_folders_by_their_old_names():
    """Only ``inversion_bench.*`` names: ``import metrics`` would pick up whatever ``metrics`` comes
    first on sys.path (e.g. the official StyleGAN code's)."""
    old = ("benchmark", "defenses", "attacks", "metrics", "leaderboard")
    bad = []
    files = [*package_modules().values(), *sorted((ROOT / "tests").rglob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "examples").rglob("*.py"))]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{f.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in old]
    assert bad == []


PLUGIN_PACKAGES = ("inversion_bench.defenses", "inversion_bench.attacks", "inversion_bench.metrics")
# The core imports no plugin module: the registry loads the built-ins by name (registry.BUILTIN_MODULES) and
# third-party plugins through entry points, and the core reaches them through their resolved entries
# (inversion_bench.entries). The exceptions, each with its reason; an exception no longer needed fails below.
CORE_PLUGIN_IMPORTS = {
    ("inversion_bench.products.audit", "inversion_bench.metrics.accuracy"):
        "the audit feeds real images to the evaluation model exactly as attack accuracy feeds reconstructions "
        "(model_logits: same batches, same numbers)",
    ("inversion_bench.export", "inversion_bench.metrics.accuracy"):
        "bench export labels each reconstruction with the evaluation model's prediction as attack accuracy does "
        "(model_logits)",
    ("inversion_bench.rescore", "inversion_bench.metrics.accuracy"):
        "bench rescore compares two evaluation models' top-1 decisions on the same reconstructions exactly as attack "
        "accuracy takes them (model_logits)",
}


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def core_plugin_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(core module, plugin module) for every import of a plugin module by a core module."""
    return {(m, t) for m, edges in graph.items() if not _inside(m, PLUGIN_PACKAGES)
            for t in edges if _inside(t, PLUGIN_PACKAGES)}


def cross_kind_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(plugin module, plugin module of another kind) for every such import."""
    return {(m, t) for m, edges in graph.items() if _inside(m, PLUGIN_PACKAGES)
            for t in edges if _inside(t, PLUGIN_PACKAGES) and t.split(".")[1] != m.split(".")[1]}


def test_plugin_import_rules_on_a_hand_made_graph():
    graph = {"inversion_bench.cli": {"inversion_bench.defenses.mid", "inversion_bench.registry"},
             "inversion_bench.attacks_extra": {"inversion_bench.attacks.ppa"},
             "inversion_bench.attacks.ppa": {"inversion_bench.attacks.common.search", "inversion_bench.metrics.fid"},
             "inversion_bench.metrics.fid": {"inversion_bench.interfaces"}}
    assert core_plugin_imports(graph) == {("inversion_bench.cli", "inversion_bench.defenses.mid"),
                                          ("inversion_bench.attacks_extra", "inversion_bench.attacks.ppa")}
    assert cross_kind_imports(graph) == {("inversion_bench.attacks.ppa", "inversion_bench.metrics.fid")}


def test_the_core_imports_no_plugin_module():
    """Core modules (``benchmark/`` and ``leaderboard/``) do not import defenses, attacks or metrics: plugins
    come in through the registry, so a built-in plugin is replaceable like a third-party one."""
    bad = sorted(core_plugin_imports(import_graph(package_modules())) - set(CORE_PLUGIN_IMPORTS))
    assert bad == [], ("core modules import plugin modules (use the registry or the resolved entries, or move the "
                       f"shared helper into the core): {bad}")


def test_every_core_plugin_import_exception_is_still_used():
    stale = sorted(set(CORE_PLUGIN_IMPORTS) - core_plugin_imports(import_graph(package_modules())))
    assert stale == [], f"exceptions no longer needed, remove them from CORE_PLUGIN_IMPORTS: {stale}"


def test_plugin_kinds_do_not_import_each_other():
    """A defense, attack or metric module imports only the core and its own kind's package: the shared attack
    pieces (``attacks.common``, ``attacks.generators``) are for attacks only."""
    bad = sorted(cross_kind_imports(import_graph(package_modules())))
    assert bad == [], f"plugin modules import another kind's modules: {bad}"
