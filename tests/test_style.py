"""The code's shape, checked: short, simple functions in train/ and pipeline/, and a loop that names no method or modality."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MAX_LINES = 80  # a function longer than this does too much (DEVELOPERS.md: nanoGPT-style loop)
NAMED = ("remix", "baseline", "only_", "audio", "video")  # methods and modalities live in train/methods and train/data


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("package", ["train", "pipeline"])
def test_no_function_over_80_lines(package):
    long = [f"{p.relative_to(REPO)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in sorted((REPO / package).rglob("*.py")) for f in _functions(p)
            if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert not long, f"split these functions (at most {MAX_LINES} lines): {long}"


def test_complexity_under_15_by_ruff():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pyproject.toml): reinstall with `make install`"
    proc = subprocess.run([ruff, "check", "--select", "C901", "train", "pipeline", "stages", "experiments", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True)  # max-complexity: pyproject.toml [tool.ruff]
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_loop_names_no_method_and_no_modality():
    """No string and no identifier of train/trainer.py names a method or a modality (docstrings aside)."""
    tree = ast.parse((REPO / "train" / "trainer.py").read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        else:
            continue
        if text == "RemixBatchSampler":  # the sampler's name: it streams any plan, pure or mixed
            continue
        found += [f"line {node.lineno}: {text!r}" for word in NAMED if word in text.lower()]
    assert not found, found
