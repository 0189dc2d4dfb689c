"""The import graph of the project's own code: no module imports, even from inside a function, a module that
imports it back (directly or through others), ``models/`` knows no recipe and no workflow, ``methods/fp8/``
is a library that imports only torch, triton, the standard library and itself, and the workflow's stages point
one way: ``pipelines/run`` imports neither the analysis nor the report, ``pipelines/analysis`` never the report,
``pipelines/`` never the benchmarks (the benchmarks may use the workflow's code), and ``common/`` (what both
need) neither of them.

Read from the source (``ast``), so a function-local import counts as much as a top-level one. A package
import (``import methods``) is the registry's plugin loader, not a dependency of one module on another, and
is not an edge; neither are imports under ``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "methods", "models", "pipelines", "benchmarks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in it (``from a.b import c`` gives a.b and a.b.c)."""
    found: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _imports(path: Path, modules: dict[str, Path], packages: set[str]) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` is a.b.c where that is a module)."""
    return {m for m in _imported_names(path) if m in modules and m not in packages}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    return {m: _imports(p, modules, packages) - {m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_models_know_no_recipe_and_no_workflow():
    graph = _graph()
    bad = {
        m: sorted(d for d in deps if d.split(".")[0] in ("methods", "pipelines", "benchmarks"))
        for m, deps in graph.items()
        if m.split(".")[0] == "models"
    }
    assert {m: d for m, d in bad.items() if d} == {}


#: what the FP8 numerics library may import besides the standard library and itself
FP8_LIBRARY_ALLOWED = ("torch", "triton")


def _outside_fp8_library(names: set[str]) -> set[str]:
    """The imported names that are neither the standard library, torch, triton nor ``methods.fp8`` itself."""

    def allowed(name: str) -> bool:
        top = name.split(".")[0]
        return (
            top in sys.stdlib_module_names
            or top == "__future__"
            or top in FP8_LIBRARY_ALLOWED
            or name == "methods.fp8"
            or name.startswith("methods.fp8.")
        )

    return {n for n in names if not allowed(n)}


def test_the_fp8_library_imports_only_torch_triton_and_itself():
    files = sorted((ROOT / "methods" / "fp8").rglob("*.py"))
    assert len(files) > 10  # the walk found the library
    bad = {str(f.relative_to(ROOT)): sorted(_outside_fp8_library(_imported_names(f))) for f in files}
    assert {f: names for f, names in bad.items() if names} == {}


def test_the_fp8_library_check_catches_a_crossing(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import math\nimport torch.nn\ndef g():\n    from methods.base import Trainee\n"
        "    import numpy\n    from methods.fp8.formats import E4M3\n"
    )
    assert _outside_fp8_library(_imported_names(f)) == {"methods.base", "methods.base.Trainee", "numpy"}


#: (importer prefix, forbidden prefixes): the stages of the workflow and the rooms around it point one way
DIRECTIONS = [
    ("pipelines.run", ("pipelines.analysis", "pipelines.report", "benchmarks")),
    ("pipelines.analysis", ("pipelines.report", "benchmarks")),
    ("pipelines", ("benchmarks",)),
    ("common", ("pipelines", "benchmarks")),
]


def _crossings(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    def under(mod: str, prefix: str) -> bool:
        return mod == prefix or mod.startswith(prefix + ".")

    return sorted(
        {
            (m, d)
            for m, deps in graph.items()
            for src, banned in DIRECTIONS
            if under(m, src)
            for d in deps
            if any(under(d, b) for b in banned)
        }
    )


def test_the_stages_import_one_way():
    graph = _graph()
    assert any(m.startswith("pipelines.analysis.") for m in graph) and any(
        m.startswith("pipelines.run.") for m in graph
    )
    assert _crossings(graph) == []


def test_the_stage_check_catches_a_crossing():
    graph = {
        "pipelines.analysis.frontier": {"pipelines.report.figures"},
        "pipelines.run.train": {"pipelines.run.data"},
        "pipelines.run.config": {"benchmarks.gpu_cost"},
        "benchmarks.fp8_bench": {"pipelines.run.config"},
    }
    assert _crossings(graph) == [
        ("pipelines.analysis.frontier", "pipelines.report.figures"),
        ("pipelines.run.config", "benchmarks.gpu_cost"),
    ]


def test_the_bench_names_the_workflow_checks_are_the_benchmarks_own():
    from benchmarks.gpu_cost import DEVICES, EXTRA_SHAPES
    from benchmarks.optim_bench import CPU_OPTIMIZERS, LAYER_SHAPES
    from common import bench_choices as names

    assert set(names.OPTIM_LAYER_SHAPES) == set(LAYER_SHAPES)
    assert set(names.OPTIM_OPTIMIZERS) == set(CPU_OPTIMIZERS)
    assert set(names.GPU_DEVICES) == set(DEVICES)
    assert set(names.GPU_EXTRA_SHAPES) == set(EXTRA_SHAPES)
