"""dvc.yaml deps that cannot drift, and paths set once.

Each stage's code deps are exactly the project modules its script imports: the import closure of
``stages/<name>.py``, walked with :mod:`ast` (``import``/``from ... import`` anywhere in a module, also
inside functions; ``if TYPE_CHECKING:`` blocks excepted), recursively, within the project packages.
A package whose ``__init__`` discovers its modules at runtime (``pkgutil``: ``train/methods``,
``train/fusions``, ``pipeline/datasets``) is a plugin folder: all its modules count as imported once
the closure reaches the ``__init__``, and dvc.yaml lists the folder itself, so a new plugin module is
a dependency without an edit. An ``__init__.py`` that executes nothing (empty or a docstring) may be
left out. Data deps (``features/index.h5``, ``${prepare.root}`` ...) are not checked here.

Paths are set once, in dvc.yaml's ``vars: paths:``; the cmds pass them to the scripts, whose argparse
defaults are the same values (so ``python -m stages.train --method remix`` writes where DVC expects).

    python -m tests.test_dvc_deps      # prints the code deps each stage needs (paste into dvc.yaml)
"""
from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("pipeline", "train", "stages", "experiments")


# ---- dvc.yaml, interpolated as DVC does for these simple cases: ${a.b} from vars and params.yaml, foreach ${item}

def _lookup(context: dict, dotted: str):
    value = context
    for key in dotted.split("."):
        value = value[key]
    return value


def interpolate(text: str, context: dict) -> str:
    return re.sub(r"\$\{\s*([\w.]+)\s*\}", lambda m: str(_lookup(context, m.group(1))), text)


def _entry_path(entry) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else entry


def load_pipeline(repo: Path = REPO) -> tuple[dict, dict]:
    """(paths vars, {stage name: {"cmd", "deps", "outs", "raw_cmd"}}), foreach stages expanded per item."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    context = dict(yaml.safe_load((repo / "params.yaml").read_text()))
    for var in spec.get("vars", []):
        assert isinstance(var, dict), f"dvc.yaml vars: {var!r}: this test reads inline mappings only"
        context.update(var)
    stages = {}
    for name, stage in spec["stages"].items():
        items = [(name, context, stage)]
        if "foreach" in stage:
            values = stage["foreach"]
            values = _lookup(context, values.strip("${} ")) if isinstance(values, str) else values
            items = [(f"{name}@{v}", {**context, "item": v}, stage["do"]) for v in values]
        for full, ctx, body in items:
            stages[full] = {
                "raw_cmd": body["cmd"], "cmd": interpolate(body["cmd"], ctx),
                "deps": [interpolate(d, ctx) for d in body.get("deps", [])],
                "outs": [interpolate(_entry_path(o), ctx) for key in ("outs", "metrics", "plots")
                         for o in body.get(key, [])],
            }
    return context.get("paths", {}), stages


def script_of(cmd: str) -> Path:
    m = re.search(r"python3?\s+-m\s+([\w.]+)", cmd)
    assert m, f"cmd {cmd!r}: expected `python -m stages.<name> ...`"
    return Path(*m.group(1).split(".")).with_suffix(".py")


# ---- the import closure

def module_file(name: str, repo: Path = REPO) -> Path | None:
    """The project file (relative to repo) that module ``name`` is, or None (not a project module)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    p = Path(*parts)
    if (repo / p / "__init__.py").is_file():
        return p / "__init__.py"
    if (repo / p.with_suffix(".py")).is_file():
        return p.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:  # the body runs for type checkers only
                yield from _import_nodes_of(sub)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif isinstance(node, ast.Call) and _call_name(node) in ("import_module", "__import__") and node.args \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        yield ast.Import(names=[ast.alias(name=node.args[0].value)])
    yield from _import_nodes(node)


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def imported_names(path: Path, repo: Path = REPO) -> set[str]:
    """Every module name ``path`` imports, with the parent packages Python imports first."""
    tree = ast.parse((repo / path).read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        names.add(base)
        names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")  # `from pkg import module`
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def is_plugin_package(init: Path, repo: Path = REPO) -> bool:
    """An ``__init__.py`` that imports its modules at runtime (pkgutil)."""
    return init.name == "__init__.py" and "pkgutil" in imported_names(init, repo)


def executes_nothing(path: Path, repo: Path = REPO) -> bool:
    """An ``__init__.py`` that is empty or only a docstring: importing it runs no code."""
    body = ast.parse((repo / path).read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str) for s in body)


def import_closure(script: Path, repo: Path = REPO) -> dict[Path, Path | None]:
    """{project file: the file that imported it first (None for the script)}, plugin modules included."""
    parent: dict[Path, Path | None] = {script: None}
    todo = [script]
    while todo:
        current = todo.pop()
        found = {f for name in imported_names(current, repo) if (f := module_file(name, repo))}
        if is_plugin_package(current, repo):
            found.update(p.relative_to(repo) for p in (repo / current.parent).rglob("*.py")
                         if "__pycache__" not in p.parts)
        for f in sorted(found):
            if f not in parent:
                parent[f] = current
                todo.append(f)
    return parent


def chain(closure: dict[Path, Path | None], f: Path) -> str:
    links = [f]
    while closure[links[-1]] is not None:
        links.append(closure[links[-1]])
    return " -> ".join(str(p) for p in reversed(links))


def code_deps(closure: dict[Path, Path | None], repo: Path = REPO) -> list[str]:
    """The code deps a stage with this closure needs: its script, then the modules and plugin folders it imports."""
    script = next(f for f, by in closure.items() if by is None)
    plugins = [f.parent for f in closure if is_plugin_package(f, repo)]
    files = [f for f in closure if not any(f.is_relative_to(p) for p in plugins)
             and not executes_nothing(f, repo) and f != script]
    return [str(script), *sorted(str(p) for p in [*plugins, *files])]


def _is_code_dep(dep: str) -> bool:
    return Path(dep).parts[0] in PACKAGES


def deps_problems(stage: str, spec: dict, repo: Path = REPO) -> list[str]:
    script = script_of(spec["cmd"])
    fix = f"in dvc.yaml, stage {stage.split('@')[0]!r}"
    if not (repo / script).is_file():
        return [f"{stage}: cmd runs {script}, which does not exist"]
    closure = import_closure(script, repo)
    deps = [Path(d.rstrip("/")) for d in spec["deps"] if _is_code_dep(d)]
    folders = [d for d in deps if (repo / d).is_dir()]
    problems = []
    for d in deps:
        if not (repo / d).exists():
            problems.append(f"{stage}: dep {d} does not exist (moved or deleted?): {fix}, remove it or name its new path")
        elif d in folders:
            init = d / "__init__.py"
            if init not in closure:
                problems.append(f"{stage}: dep folder {d} is not imported by {script}: {fix}, remove it from deps")
            elif not is_plugin_package(init, repo):
                extra = sorted(str(p.relative_to(repo)) for p in (repo / d).rglob("*.py")
                               if p.relative_to(repo) not in closure and "__pycache__" not in p.parts)
                if extra:
                    problems.append(f"{stage}: dep folder {d} also covers {extra}, which {script} does not import "
                                    f"(only a plugin package, whose __init__ uses pkgutil, may be a folder dep): "
                                    f"{fix}, list the imported files instead")
        elif d.suffix == ".py" and d not in closure:
            problems.append(f"{stage}: dep {d} is not imported by {script} (directly or through other modules): "
                            f"{fix}, remove it from deps")
    for f in sorted(closure):
        if is_plugin_package(f, repo) and not any(f.parent.is_relative_to(d) for d in folders):
            problems.append(f"{stage}: {f.parent} discovers its modules at runtime (pkgutil; reached by "
                            f"{chain(closure, f)}): {fix}, list the folder `- {f.parent}` in deps")
        elif not (f in deps or any(f.is_relative_to(d) for d in folders) or executes_nothing(f, repo)
                  or any(f.is_relative_to(p.parent) for p in closure if is_plugin_package(p, repo))):
            problems.append(f"{stage}: {chain(closure, f)}: {f} is imported but not a dep, so editing it would not "
                            f"rerun the stage: {fix}, add `- {f}` to deps")
    return problems


def test_each_stage_depends_on_exactly_the_modules_its_script_imports():
    _, stages = load_pipeline()
    problems = list(dict.fromkeys(p for name, spec in stages.items()  # a foreach stage: its items share the code
                                  for p in deps_problems(name.split("@")[0], spec)))
    assert not problems, "dvc.yaml code deps do not match the imports (`python -m tests.test_dvc_deps` prints " \
                         "what each stage needs):\n" + "\n".join(problems)


# ---- paths: set once in dvc.yaml vars, passed by the cmds, equal to the scripts' defaults

def argparse_defaults(script: Path, repo: Path = REPO) -> dict[str, object]:
    """{--option: default} of the script's ``add_argument`` calls with a literal default."""
    out = {}
    for node in ast.walk(ast.parse((repo / script).read_text())):
        if isinstance(node, ast.Call) and _call_name(node) == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if flags and isinstance(default, ast.Constant):
                out[flags[0]] = default.value
    return out


def cmd_options(cmd: str) -> dict[str, str]:
    words = shlex.split(cmd)
    return {w: v for w, v in zip(words, words[1:]) if w.startswith("--") and not v.startswith("--")}


def test_paths_are_set_once_in_dvc_yaml_vars_and_are_the_scripts_defaults():
    paths, stages = load_pipeline()
    assert paths and all(isinstance(v, str) for v in paths.values()), "dvc.yaml: vars: - paths: {name: path}"
    assert paths["index"] == f"{paths['features']}/index.h5"  # extract writes <features>/index.h5
    problems = []
    for name, spec in stages.items():
        script = script_of(spec["cmd"])
        defaults = argparse_defaults(script)
        raw = cmd_options(spec["raw_cmd"])
        for option, value in cmd_options(spec["cmd"]).items():
            var = re.fullmatch(r"\$\{\s*paths\.(\w+)\s*\}", raw.get(option, ""))
            if var and defaults.get(option) != paths[var.group(1)]:
                problems.append(f"{name}: {script} {option} defaults to {defaults.get(option)!r}, dvc.yaml passes "
                                f"${{paths.{var.group(1)}}} = {value!r}: make them equal")
        for option, default in defaults.items():  # a path default the cmd does not pass would be set twice
            if default in paths.values() and option not in raw:
                problems.append(f"{name}: {script} {option} defaults to the path {default!r} but the cmd does not "
                                f"pass it: add `{option} ${{paths.<name>}}` to the cmd")
        # no other literal of the paths in the script: they come from the arguments
        tree = ast.parse((REPO / script).read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        allowed = {id(k.value) for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) == "add_argument"
                   for k in n.keywords if k.arg == "default"}
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings | allowed \
                    and any(n.value.startswith(p + "/") or (n.value == p and ("/" in p or "." in p))
                            for p in paths.values()):  # (a bare `features` may be a params section)
                problems.append(f"{name}: {script}:{n.lineno} hard-codes the path {n.value!r}: "
                                f"take it from an argument whose default is the dvc.yaml var")
    assert not problems, "\n".join(problems)


def _strings(node, where: str):
    """(where, string) for every key and string value of a parsed YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield where, str(k)
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node


def test_dvc_yaml_writes_the_paths_of_vars_only_as_vars():
    """A path of ``vars: paths`` appears in dvc.yaml's stages and plots only as ${paths.<name>} (or below it)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    paths = next(v["paths"] for v in spec["vars"] if "paths" in v)
    problems = [f"{where}: {text!r} repeats a path of vars: write it with ${{paths.…}}"
                for key in ("stages", "plots") for where, text in _strings(spec.get(key, {}), key)
                if any(text.startswith(p + "/") or (text == p and ("/" in p or "." in p)) for p in paths.values())]
    assert not problems, "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checker_on_a_small_project(tmp_path):
    """Function-level, relative and `from pkg import module` imports count, TYPE_CHECKING ones do not; a plugin
    package's modules all count; each kind of mismatch is named with its fix."""
    _write(tmp_path, {
        "stages/__init__.py": "",
        "stages/fit.py": "from train.loop import run\n",
        "train/__init__.py": '"""docstring only: executes nothing"""\n',
        "train/loop.py": "from typing import TYPE_CHECKING\nfrom . import plugins\nif TYPE_CHECKING:\n"
                         "    from train import typing_only\n\ndef run():\n    from train.lazy import x\n",
        "train/lazy.py": "from pipeline import io\nx = 1\n",
        "train/typing_only.py": "",
        "train/unused.py": "",
        "train/plugins/__init__.py": "import pkgutil\n",
        "train/plugins/a.py": "from train.plugin_helper import h\n",
        "train/plugin_helper.py": "h = 1\n",
        "pipeline/__init__.py": "LOADED = True\n",
        "pipeline/io.py": "",
    })
    closure = import_closure(Path("stages/fit.py"), tmp_path)
    assert chain(closure, Path("pipeline/io.py")) == "stages/fit.py -> train/loop.py -> train/lazy.py -> pipeline/io.py"
    assert Path("train/plugin_helper.py") in closure  # imported by a plugin module
    assert Path("train/typing_only.py") not in closure and Path("train/unused.py") not in closure
    needed = ["pipeline/__init__.py", "pipeline/io.py", "stages/fit.py", "train/lazy.py", "train/loop.py",
              "train/plugin_helper.py", "train/plugins"]
    assert code_deps(closure, tmp_path) == ["stages/fit.py", *(d for d in needed if d != "stages/fit.py")]  # no train/__init__.py, stages/__init__.py: they run nothing
    cmd = "python -m stages.fit --out ${paths.x}"
    assert deps_problems("fit", {"cmd": cmd, "deps": [*needed, "data/x.csv"]}, tmp_path) == []
    wrong = [d for d in needed if d not in ("train/lazy.py", "train/plugins")] + \
        ["train/plugins/a.py", "train/unused.py", "train/gone.py"]
    problems = "\n".join(deps_problems("fit", {"cmd": cmd, "deps": wrong}, tmp_path))
    for expected in ("train/lazy.py is imported but not a dep", "add `- train/lazy.py`",
                     "train/plugins discovers its modules at runtime", "list the folder `- train/plugins`",
                     "dep train/unused.py is not imported by stages/fit.py", "dep train/gone.py does not exist"):
        assert expected in problems, (expected, problems)
    problems = deps_problems("fit", {"cmd": cmd, "deps": ["train", "stages/fit.py", "pipeline"]}, tmp_path)
    assert len(problems) == 1 and "dep folder train also covers ['train/typing_only.py', 'train/unused.py']" \
        in problems[0]  # pipeline: every module imported, so a folder dep is exact


def test_rewrite_code_deps_keeps_data_deps_and_comments():
    text = ("stages:\n  a:  # stage a\n    cmd: python -m stages.a\n    deps:\n      - train/old.py\n"
            "      - data/in.csv  # data\n    outs:\n      - out\n  b:\n    deps:\n      - stages/b.py\n")
    assert rewrite_code_deps(text, {"a": ["stages/a.py", "train/new"], "b": ["stages/b.py", "pipeline/x.py"]}) == (
        "stages:\n  a:  # stage a\n    cmd: python -m stages.a\n    deps:\n      - stages/a.py\n      - train/new\n"
        "      - data/in.csv  # data\n    outs:\n      - out\n  b:\n    deps:\n      - stages/b.py\n"
        "      - pipeline/x.py\n")


def rewrite_code_deps(text: str, needed: dict[str, list[str]]) -> str:
    """dvc.yaml ``text`` with each stage's code deps replaced by ``needed[stage]`` (data deps, comments kept)."""
    out, stage, pending, indent = [], None, None, ""
    for line in text.splitlines(keepends=True):
        item = re.match(r"^(\s+)- (\S+)", line)
        if pending is not None:
            if item and Path(item.group(2)).parts[0] in PACKAGES:
                indent = item.group(1)
                continue  # an old code dep: replaced
            out.extend(f"{indent}- {d}\n" for d in pending)
            pending = None
        if m := re.match(r"^  (\w+):", line):
            stage = m.group(1)
        if (m := re.match(r"^(\s+)deps:\s*(#.*)?$", line)) and stage in needed:
            pending, indent = needed[stage], m.group(1) + "  "
        out.append(line)
    out.extend(f"{indent}- {d}\n" for d in pending or [])  # the file ended in a deps list
    return "".join(out)


if __name__ == "__main__":
    import sys

    _, stages = load_pipeline()
    needed = {name.split("@")[0]: code_deps(import_closure(script_of(spec["cmd"]))) for name, spec in stages.items()}
    if sys.argv[1:] == ["--write"]:  # rewrite dvc.yaml's code deps in place
        (REPO / "dvc.yaml").write_text(rewrite_code_deps((REPO / "dvc.yaml").read_text(), needed))
    for stage, deps in needed.items():
        print(f"{stage}:\n" + "".join(f"  - {d}\n" for d in deps), end="")
