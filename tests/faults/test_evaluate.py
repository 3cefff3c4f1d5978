"""Faults of the evaluate stage, and metrics that hold for any class count (issue 15, defect 5).

The project is a finished tiny one (3 of CREMA-D's 6 classes generated). Defect 5: its class list, model and
metrics counted all 6 classes of the layout (macro-F1 over 6, chance 1/6) and ``imbalance_ratio`` was written
as ``Infinity``, which strict JSON parsers reject. Bad params and inputs fail naming the key or the file, and
leave ``runs/<method>/metrics.json`` and ``eval/`` as they were; a kill leaves them whole or absent, and the
rerun completes them. Most bad-input cases call :func:`train.evaluate.evaluate` in-process (they fail before
any model runs); the stage's one-line error is checked by running ``python stages/evaluate.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.fileio import dumps_strict, write_json_strict
from pipeline.shards import IndexReader
from tests.faults.tiny import built, copy_of, fails, ok, run, snapshot
from train import evaluate as ev

METHOD = "baseline"


def strict_json(path: Path):
    """Parse as RFC 8259 JSON: NaN, Infinity and -Infinity are errors."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    return copy_of(built(tmp_path_factory), tmp_path / "project")


def results(project: Path) -> dict[str, str]:
    """metrics.json and eval/ of the run (not its train/ folder)."""
    run_dir = project / "runs" / METHOD
    return {k: v for k, v in snapshot(run_dir).items() if not k.startswith("train/")}


def call(project: Path, index: str = "features/index.h5", method: str = METHOD) -> dict:
    return ev.evaluate(index_path=project / index, run_dir=project / "runs" / method)


def test_three_classes_present_make_a_three_class_model_and_metrics(project):
    """Defect 5: synth.num_classes 3, CREMA-D layout: 3 classes everywhere, macro-F1 over 3, chance 1/3."""
    assert (project / "data" / "classes.txt").read_text().split() == ["NEU", "HAP", "SAD"]
    assert IndexReader(project / "features" / "index.h5").class_names == ("NEU", "HAP", "SAD")
    ckpt = torch.load(project / "runs" / METHOD / "train" / "model.pt", weights_only=False)
    assert ckpt["model"]["fusion.fc.weight"].shape[0] == 3  # 3 outputs
    metrics = strict_json(project / "runs" / METHOD / "metrics.json")
    assert metrics["num_classes"] == 3 and metrics["chance"] == pytest.approx(1 / 3)
    pairs = json.loads((project / "runs" / METHOD / "eval" / "plots" / "sklearn" / "confusion_matrix.json").read_text())
    names = ["NEU", "HAP", "SAD"]
    y = np.array([names.index(p["actual"]) for p in pairs])
    y_hat = np.array([names.index(p["predicted"]) for p in pairs])
    assert metrics["macro_f1"] == pytest.approx(ev.macro_f1(y, y_hat, 3))
    assert metrics["samples"] == len(pairs) and metrics["acc_fused"] == pytest.approx(float(np.mean(y == y_hat)))


def test_macro_f1_is_sklearns_over_the_models_classes():
    """sklearn.metrics.f1_score(y, y_hat, labels=range(C), average="macro", zero_division=0), by hand."""
    y, y_hat = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 2, fn 0 -> 1/2; class 2: tp 0, fn 1 -> 0
    assert ev.macro_f1(y, y_hat, 3) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert ev.macro_f1(y, y_hat, 4) == pytest.approx((2 / 3 + 1 / 2 + 0 + 0) / 4)  # a class never seen counts 0
    assert ev.macro_f1(y, y, 3) == 1.0


def test_metrics_json_is_strict_json(project, monkeypatch):
    """Defect 5: a modality at chance made imbalance_ratio infinite, written as the non-JSON ``Infinity``."""
    monkeypatch.setattr(ev, "imbalance_ratio", lambda *a: math.inf)
    returned = call(project)
    metrics = strict_json(project / "runs" / METHOD / "metrics.json")
    assert metrics["imbalance_ratio"] is None and returned["imbalance_ratio"] is None
    assert metrics["num_classes"] == 3


def test_write_json_strict(tmp_path):
    obj = {"a": math.inf, "b": [math.nan, -math.inf, 1.5], "c": {"d": np.float32("inf"), "e": np.float64(2.0)}, "f": "x"}
    write_json_strict(tmp_path / "m.json", obj)
    assert strict_json(tmp_path / "m.json") == {"a": None, "b": [None, None, 1.5], "c": {"d": None, "e": 2.0}, "f": "x"}
    assert dumps_strict({"x": float("nan")}) == '{"x": null}'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # written atomically, no temporary file left


def test_bad_params_fail_naming_them_and_touch_nothing(project):
    before = results(project)
    with pytest.raises(FileNotFoundError, match=r"runs/nosuch/train/model\.pt not found: train this method first "
                       r"\(`dvc repro train@<method>`\)"):
        call(project, method="nosuch")
    ckpt_path = project / "runs" / METHOD / "train" / "model.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["config"]["lr"] = 0  # a checkpoint whose settings no longer hold
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ValueError, match=r"model\.pt: its training settings do not hold for this avremix "
                       r"\(train\.lr: must be > 0, got 0\): retrain it"):
        call(project)
    ckpt["config"]["lr"], ckpt["config"]["frame_sise"] = 0.001, 80  # a key this trainer does not know
    torch.save(ckpt, ckpt_path)
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['frame_sise'\]"):
        call(project)
    assert results(project) == before


def test_bad_inputs_fail_naming_the_file_and_touch_nothing(project):
    before = results(project)
    features, index = project / "features", project / "features" / "index.h5"
    ckpt_path = project / "runs" / METHOD / "train" / "model.pt"
    good_ckpt, good_index = ckpt_path.read_bytes(), index.read_bytes()
    ckpt_path.write_bytes(good_ckpt[: len(good_ckpt) // 2])  # truncated
    with pytest.raises(ValueError, match=r"model\.pt is not a readable checkpoint .*: retrain .* or restore it"):
        call(project)
    ckpt_path.write_bytes(good_ckpt)
    index.write_bytes(b"not an HDF5 file")
    with pytest.raises(ValueError, match=r"index\.h5: not a readable feature index .*run `dvc repro extract` again"):
        call(project)
    index.write_bytes(good_index)
    test_shard = next(features.glob("test-*.tar"))
    test_shard.rename(features / "moved.tar")
    with pytest.raises(FileNotFoundError, match=rf"{test_shard.name}: shard listed in .*index\.h5 is missing"):
        call(project)
    (features / "moved.tar").rename(test_shard)
    with test_shard.open("r+b") as f:  # same size, other bytes
        f.seek(600)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match=rf"{test_shard.name}: SHA-256 differs from the one in .*index\.h5"):
        call(project)
    assert results(project) == before


def test_the_stage_names_a_deleted_index_and_the_folder_to_run_from(project, tmp_path):
    before = results(project)
    (project / "features" / "index.h5").unlink()
    fails(run(project, "evaluate"), "evaluate: error: features/index.h5 (in ", "feature index not found: run "
          "`dvc repro extract` to extract the features, or `dvc checkout features` to restore them")
    elsewhere = tmp_path / "elsewhere"  # the stage reads no params.yaml: the relative paths name the folder
    elsewhere.mkdir()
    fails(run(elsewhere, "evaluate"), f"runs/{METHOD}/train/model.pt not found")
    assert results(project) == before and list(elsewhere.iterdir()) == []


def test_kill_leaves_results_whole_or_absent_and_the_rerun_completes_them(project):
    run_dir = project / "runs" / METHOD
    clean = results(project)
    (run_dir / "eval" / "old-marker").write_text("from the earlier evaluation")
    (run_dir / "metrics.json").write_text('{"old": true}\n')
    assert run(project, "evaluate", pause_at="eval").returncode == -9  # between moving the old eval/ aside and the new in
    assert not (run_dir / "eval").exists() and (run_dir / ".old-eval" / "old-marker").exists()
    assert strict_json(run_dir / "metrics.json") == {"old": True}
    assert run(project, "evaluate", pause_at="metrics.json").returncode == -9  # new eval/ in place, metrics not yet
    assert not (run_dir / "eval" / "old-marker").exists() and not (run_dir / ".old-eval").exists()
    assert strict_json(run_dir / "metrics.json") == {"old": True}
    ok(run(project, "evaluate"))
    assert results(project) == clean  # the same bytes as a clean run, no temporary file left
