"""The import graph of ``train/`` and ``pipeline/``: no cycle, and no project module imported inside a function.

The graph is read from the import statements (:mod:`ast`) of every module under ``train/`` and ``pipeline/``:
``import a.b`` and ``from a.b import c`` (``a.b.c`` when that is a module, else ``a.b``; relative imports
resolved), at module level (also inside ``if``/``try``/class bodies) and inside functions. ``if TYPE_CHECKING:``
blocks are not imports at run time and are left out. Importing ``a.b.c`` runs ``a/b/__init__.py`` too; that
implicit edge is not drawn (a package's ``__init__`` importing its own modules is no cycle to forbid).
Runtime discovery (``importlib.import_module`` in the ``registry()`` of a plugin package) is not an import
statement and is not drawn either.

An import inside a function hides a dependency (and usually dodges a cycle): a project module
(``train.*``, ``pipeline.*``, ``experiments.*``) must be imported at the top of the module. Lazy imports of
third-party libraries are fine.

    python -m tests.test_imports      # prints the offenders, if any
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("train", "pipeline")  # the packages whose modules form the graph
PROJECT = ("train", "pipeline", "experiments")  # a function-level import of these is an offence


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "train.methods.base"
    target: str  # imported module, e.g. "train.trainer"
    path: Path
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """module name -> file, for every .py under the scanned packages."""
    return {module_name(p): p for pkg in SCANNED for p in sorted((REPO / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the importing module's package, up level - 1
        package = source.split(".") if is_package else source.split(".")[:-1]
        base = package[:len(package) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    subs = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known]
    plain = [alias for alias in node.names if f"{module}.{alias.name}" not in known]
    return subs + ([module] if plain else [])


def imports(path: Path, known: set[str]) -> list[Import]:
    """Every import statement of ``path`` (``if TYPE_CHECKING:`` blocks excepted)."""
    source = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, source, is_package, known):
                found.append(Import(source, target, path, node.lineno, in_function))
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    known = set(modules)
    return [imp for path in modules.values() for imp in imports(path, known)]


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def function_level_offenders() -> list[Import]:
    return [imp for imp in all_imports() if imp.in_function and _is_project(imp.target)]


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself), each as
    one cycle through it, over the module-level and function-level imports among the scanned modules."""
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports():
        if imp.target in graph:
            graph[imp.source].add(imp.target)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan (the graph is small: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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
            if len(comp) > 1 or v in graph[v]:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(graph, comp) for comp in components]


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A path start -> ... -> start inside the component (breadth-first from its first module)."""
    start, members = comp[0], set(comp)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _where(imp: Import) -> str:
    return f"{imp.path.relative_to(REPO)}:{imp.line}: {imp.target}"


def test_graph_sees_the_packages():
    """The scan finds the modules and their imports (guards the two tests below against passing vacuously)."""
    modules = project_modules()
    assert {"train.models", "train.fusions", "train.fusions.base", "pipeline.datasets", "pipeline.manifest"} <= set(modules)
    edges = {(imp.source, imp.target) for imp in all_imports()}
    assert ("train.fusions.concat", "train.fusions.base") in edges and ("train.fusions.base", "train.models") in edges
    assert ("pipeline.datasets.base", "pipeline.manifest") in edges


def test_the_checks_catch_a_planted_cycle_and_a_hidden_import(tmp_path, monkeypatch):
    files = {"train/__init__.py": "", "pipeline/__init__.py": "",
             "train/a.py": "from train import b\n",  # train.b is a module: the edge goes to it
             "train/b.py": "import os\n\n\ndef f():\n    import numpy\n    from .a import x\n    return x\n",
             "train/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from train.a import y\n",
             "pipeline/d.py": "from . import e\nfrom train.b import f\n", "pipeline/e.py": ""}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert cycles() == [["train.a", "train.b", "train.a"]]
    assert [(i.source, i.target, i.line) for i in function_level_offenders()] == [("train.b", "train.a", 6)]
    edges = {(i.source, i.target) for i in all_imports()}
    assert ("pipeline.d", "pipeline.e") in edges and ("pipeline.d", "train.b") in edges
    assert [i.target for i in all_imports() if i.source == "train.c"] == ["typing"]  # not the TYPE_CHECKING one


def test_no_import_cycle():
    found = cycles()
    assert not found, "import cycles among project modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_function_level_import_of_a_project_module():
    offenders = function_level_offenders()
    assert not offenders, ("project modules imported inside a function (import them at the top; break a cycle by "
                           "moving code, not by hiding the import):\n" + "\n".join(map(_where, offenders)))


if __name__ == "__main__":
    for c in cycles():
        print("cycle:", " -> ".join(c))
    for imp in function_level_offenders():
        print("function-level:", _where(imp))
