"""The package keeps the layout of its design: no import cycles, and data flows one way.

Read from the source with :mod:`ast`; no koquant module is imported or executed.

The floors, lowest first::

    source -> quant_recipes -> artifact -> exporters -> runtime -> bench (and serve)

A module may import its own floor and any floor below it, never one above. The design card writes
the flow ``source -> quant_recipes -> exporters -> artifact -> runtime``, but what the code does
decides the order of those two: the exporters *write* artifacts (the pipeline stages, inventories
and publishes an ``Artifact``; every format's exporter fills its manifest), so ``exporters``
imports ``artifact``, and nothing in ``artifact`` imports an exporter. ``artifact`` is therefore the
lower floor: it describes a finished export folder (manifest, inventory, verify, atomic publish)
and needs no knowledge of how any format is made.

Outside the floors: ``errors.py`` and ``procs.py`` (the error family and the child-process
protocol: every floor may import them, so they import no floor), ``testing/`` (miniatures and
fixtures: anyone may import them, they may import anything) and the root ``koquant/__init__.py``
(the public API: its functions import lazily, so anyone may read ``koquant.__version__``; its
module level imports nothing of koquant, checked below). ``plan/`` and ``cli/`` (and
``__main__.py``) sit at the top and may import anything.

The runtime may use an exporter package's *backend helpers* (``exporters/gguf/llamacpp.py``:
the pinned binding and its CPU variant; ``exporters/onnx/genai.py``: the onnxruntime-genai
install check and loading), but never an exporter (``koquant.exporters.<format>.exporter``) or
the export pipeline (``koquant.exporters.pipeline``): the runtime never imports an exporter.

The floor rule applies to every import, at module level, inside functions and under
``TYPE_CHECKING`` alike. The cycle rule counts only imports that run when a module is imported
(module level, not under ``TYPE_CHECKING``): an import inside a function runs when the function
is called, after every module involved is loaded, so a function-level import is the allowed way
to break a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "koquant"

FLOORS = ({"source"}, {"quant_recipes"}, {"artifact"}, {"exporters"}, {"runtime"}, {"bench", "serve"})
TOP = {"plan", "cli", "matrix", "__main__"}
#: outside the floors; errors and procs import no floor (checked), testing is unconstrained
OUTSIDE = {"errors", "procs", "testing"}
#: what a runtime module may never import
RUNTIME_FORBIDDEN = ("koquant.exporters.pipeline", "koquant.exporters.*.exporter")

#: (importer, imported) -> why this upward import is, for now, allowed. Each must still occur
#: (test_exceptions_are_current), so a fixed one is removed from here.
EXCEPTIONS = {
    ("koquant.source.architectures", "koquant.plan.model_spec"):
        "type annotation only (under TYPE_CHECKING, nothing runs): architectures.weights(spec) lists the "
        "stored weights of a model that plan describes with its ModelSpec; moving ModelSpec and its "
        "config.json readers into source/ is a larger change than this rule's",
}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """(imported koquant module, runs at import time, line) for every import statement of ``name``."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rpartition(".")[0]
    found = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        # `from pkg import x` imports the submodule pkg.x when there is one, else an attribute of pkg
        return [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]

    def visit(node, at_import_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            runs = at_import_time and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:  # the else branch runs
                    visit(ast.Module(body=[sub], type_ignores=[]), False)
                for sub in child.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), at_import_time)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in targets(child):
                    if t == PACKAGE or t.startswith(PACKAGE + "."):
                        found.append((t, runs, child.lineno))
            visit(child, runs)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "" is the root package


def _floor(module: str) -> int | None:
    room = _room(module)
    for i, rooms in enumerate(FLOORS):
        if room in rooms:
            return i
    return None


def _matches(module: str, pattern: str) -> bool:
    a, b = module.split("."), pattern.split(".")
    return len(a) == len(b) and all(q == "*" or p == q for p, q in zip(a, b))


def test_every_module_has_a_room():
    rooms = set().union(*FLOORS) | TOP | OUTSIDE | {""}
    homeless = sorted(m for m in MODULES if _room(m) not in rooms)
    assert not homeless, f"modules outside every floor of the design (give them a room): {homeless}"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the koquant modules its import runs (module level, not under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, imports in IMPORTS.items():
        own = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
        for target, runs, _ in imports:
            if not runs or target not in MODULES:
                continue
            graph[m].add(target)
            # importing a.b.c first runs the packages a.b (not the importer's own packages, already running)
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent not in own and parent != m:
                    graph[m].add(parent)
        graph[m].discard(m)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, ("module-level import cycles (move one import into the function that needs it): "
                        f"{cycles}")


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _upward() -> dict[tuple[str, str], int]:
    """(importer, imported) -> line, for every import that climbs a floor or leaves errors/procs for a floor."""
    bad = {}
    for m, imports in IMPORTS.items():
        room, floor = _room(m), _floor(m)
        for target, _, line in imports:
            t_room, t_floor = _room(target), _floor(target)
            if t_room == "":
                continue  # the root package: koquant.__version__ (its module level is checked below)
            if room in ("errors", "procs"):
                ok = t_room in ("errors", "procs")
            elif floor is None:
                ok = True  # top (plan, cli, __main__), root, testing
            else:
                ok = t_room in OUTSIDE or (t_floor is not None and t_floor <= floor)
            if not ok:
                bad[(m, target)] = line
    return bad


def test_data_flows_one_way():
    found = _upward()
    unexplained = {k: v for k, v in found.items() if k not in EXCEPTIONS}
    assert not unexplained, "imports from a higher floor (" + " -> ".join(
        "/".join(sorted(r)) for r in FLOORS) + "): " + ", ".join(
        f"{a} -> {b} (line {line})" for (a, b), line in sorted(unexplained.items()))


def test_exceptions_are_current():
    found = _upward()
    stale = [k for k in EXCEPTIONS if k not in found]
    assert not stale, f"listed exceptions that no longer occur (remove them from EXCEPTIONS): {stale}"


def test_the_runtime_never_imports_an_exporter():
    bad = [f"{m} -> {t} (line {line})" for m, imports in IMPORTS.items() if _room(m) == "runtime"
           for t, _, line in imports if any(_matches(t, p) for p in RUNTIME_FORBIDDEN)]
    assert not bad, f"the runtime imports an exporter or the export pipeline: {bad}"


def test_the_root_package_imports_lazily():
    eager = [f"{t} (line {line})" for t, runs, line in IMPORTS[PACKAGE] if runs]
    assert not eager, f"koquant/__init__.py imports koquant modules at import time: {eager}"


def test_public_functions_named_like_their_packages_stay_callable():
    """koquant.bench / koquant.serve: a package imported first (koquant.bench.report) must not hide the function."""
    import subprocess
    import sys

    code = ("import koquant.bench.report, koquant.serve.pool, koquant, inspect\n"
            "from koquant.bench import bench\nfrom koquant.serve import serve\n"
            "assert callable(koquant.bench) and callable(koquant.serve)\n"
            "assert inspect.signature(koquant.bench.__call__) and koquant.bench.bench is bench\n"
            "print(koquant.serve.serve is serve)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize("example, expected", [
    (("koquant.source.checkpoint", "koquant.exporters.gate"), True),
    (("koquant.artifact.manifest", "koquant.exporters.pipeline"), True),
    (("koquant.exporters.pipeline", "koquant.artifact.manifest"), False),
    (("koquant.runtime.loader", "koquant.plan.planner"), True),
    (("koquant.procs", "koquant.exporters.gguf.llamacpp"), True),
    (("koquant.bench.runner", "koquant.runtime.loader"), False),
    (("koquant.cli.export", "koquant.bench.runner"), False),
])
def test_the_rule_itself(example, expected, monkeypatch):
    """The checker catches what it should (an upward import planted into the parsed imports)."""
    importer, imported = example
    monkeypatch.setitem(IMPORTS, importer, [(imported, False, 1)])
    assert (example in _upward()) is expected
