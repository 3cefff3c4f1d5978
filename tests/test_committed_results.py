"""The committed results are those of the committed code: `dvc.lock` matches every code and params dependency
of the tree, and the README's demo table is what `python -m train.report` prints from the committed
`runs/*/metrics.json` (what `make demo` prints on a fresh clone).

Run on a clean clone (CI), the first test fails whenever code a stage depends on changed after the last
`dvc repro` + commit of `dvc.lock`: a stale lock, and with it a stale README table, cannot land.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.params import load_params
from tests.conftest import REPO
from train.config import TrainConfig
from train.report import table


def _git_tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _stale_code_deps(status: dict, tracked: set[str]) -> dict[str, list[str]]:
    """Per stage, the changed dependencies that are files (or folders) of the git tree, params included."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for path, what in entry.get("changed deps", {}).items():
                in_git = path in tracked or any(t.startswith(path.rstrip("/") + "/") for t in tracked)
                if in_git:
                    stale.setdefault(stage, []).append(f"{path}: {what}")
    return stale


def test_stale_code_dependencies_are_found():
    status = {"extract": [{"changed deps": {"pipeline/extract.py": "modified", "data/manifest.csv": "deleted"}},
                          {"changed outs": {"features": "not in cache"}}],
              "train@remix": [{"changed deps": {"train/methods": "modified", "params.yaml": {"train": "modified"}}}],
              "evaluate@remix": ["always changed"]}
    tracked = {"pipeline/extract.py", "train/methods/remix.py", "params.yaml"}
    assert _stale_code_deps(status, tracked) == {
        "extract": ["pipeline/extract.py: modified"],
        "train@remix": ["train/methods: modified", "params.yaml: {'train': 'modified'}"]}


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout")
def test_dvc_lock_matches_the_committed_code():
    dvc = shutil.which("dvc") or os.path.join(os.path.dirname(sys.executable), "dvc")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    if dirty and not os.environ.get("CI"):
        pytest.skip("uncommitted changes: this checks the committed tree (CI runs it on a clean clone)")
    out = subprocess.run([dvc, "status", "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert out.returncode == 0, out.stderr
    stale = _stale_code_deps(json.loads(out.stdout or "{}"), _git_tracked())
    assert not stale, (f"dvc.lock is stale for {stale}: run `make demo` (dvc repro), then commit dvc.lock, "
                       f"runs/*/metrics.json and the README's table")


def test_readme_demo_table_is_the_committed_metrics():
    config = TrainConfig.from_params(load_params(REPO / "params.yaml")["train"])
    results = [json.loads((REPO / "runs" / m / "metrics.json").read_text()) for m in config.methods]
    expected = table(results, config.modalities)
    readme = (REPO / "README.md").read_text()
    assert expected in readme, f"README.md's demo table is not `python -m train.report`'s:\n{expected}"
