"""The README's "Adding a method, a fusion, a dataset": each example file, dropped into a copy of the project with
no other file edited, is found by its registry and works (a tiny training run; a prepared manifest)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.train.test_data import extracted_features

TRAIN = """
import json, sys
from train.config import TrainConfig
from train.trainer import train
cfg = TrainConfig(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none",
                  methods=["random_split"], fusion="max")
summary = train(index_path=sys.argv[1], out_dir="run/train", method="random_split", config=cfg, seed=0)
print(json.dumps(summary))
"""
PREPARE = """
import json, sys
from pipeline.datasets import prepare_dataset
records, classes = prepare_dataset(dataset="flat_folder", root=sys.argv[1], split_file=None, ratios=[0.5, 0.25, 0.25],
                                   val_fraction=0.1, group_disjoint=False, seed=0)
print(json.dumps({"classes": classes, "splits": sorted({r.split for r in records}), "n": len(records)}))
"""


def readme_files() -> dict[str, str]:
    """path -> code of every ```python block of the README that opens with ``# <path>``."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return {path: code for path, code in blocks}


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's packages with the README's example files added."""
    for name in ("pipeline", "train", "stages"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    files = readme_files()
    assert set(files) == {"train/methods/random_split.py", "train/fusions/max.py", "pipeline/datasets/flat_folder.py"}
    for path, code in files.items():
        assert not (tmp_path / path).exists(), f"{path} exists already: the example must be a new file"
        (tmp_path / path).write_text(code)
    return tmp_path


def run(project: Path, script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(project), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_example_method_and_fusion_train(project, cremad_raw, tmp_path_factory):
    index = extracted_features(cremad_raw, tmp_path_factory) / "index.h5"
    summary = run(project, TRAIN, str(index))
    history = summary["history"]
    assert [h["phase"] for h in history] == ["warmup", "split", "split"]
    for h in history[1:]:  # every sample keeps one modality after warm-up
        assert h["assigned_audio"] + h["assigned_video"] == summary["train_samples"]
    assert (project / "run" / "train" / "model.pt").exists()


def test_example_dataset_prepares(project, kinetics_raw, tmp_path):
    flat = tmp_path / "flat"
    for clip in kinetics_raw.rglob("*.mp4"):  # <split>/<class>/<clip>.mp4 -> <class>/<clip>.mp4
        (flat / clip.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, flat / clip.parent.name / clip.name)
    got = run(project, PREPARE, str(flat))
    assert got["classes"] == sorted(p.name for p in flat.iterdir())
    assert got["splits"] == ["test", "train", "val"] and got["n"] == len(list(flat.rglob("*.mp4")))
