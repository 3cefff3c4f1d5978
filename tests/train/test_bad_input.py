"""Bad state and bad input to the trainer: a clear error naming the file or key, or a logged skip; never a hang."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.shards import IndexReader
from tests.train.test_data import extracted_features
from tests.train.test_resume import CONFIG, kill_at, launch
from train.checkpoint import default_work_dir
from train.config import TrainConfig
from train.methods import remix
from train.evaluate import evaluate
from train.methods.remix import ScoresFile
from train.trainer import train

TINY = {**CONFIG, "epochs": 2, "checkpoint_every": 0}


@pytest.fixture
def features(cremad_raw, tmp_path_factory, tmp_path) -> Path:
    """A private copy of the tiny extracted features, free to break."""
    return Path(shutil.copytree(extracted_features(cremad_raw, tmp_path_factory), tmp_path / "features"))


def a_train_shard(features: Path) -> Path:
    index = IndexReader(features / "index.h5")
    return features / index.shard_names[int(index.shard[index.indices("train")[0]])]


def run(features: Path, out: Path, config: dict = TINY, method: str = "remix") -> dict:
    return train(index_path=features / "index.h5", out_dir=out, method=method, config=TrainConfig(**config), seed=0)


def test_missing_shard(features, tmp_path):
    shard = a_train_shard(features)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard.name}: shard listed in .*index.h5 is missing"):
        run(features, tmp_path / "run")


def test_renamed_shard(features, tmp_path):
    shard = a_train_shard(features)
    shard.rename(shard.with_name("renamed.tar"))
    with pytest.raises(FileNotFoundError, match=shard.name):
        run(features, tmp_path / "run")


def test_index_of_another_format_version(features, tmp_path):
    with h5py.File(features / "index.h5", "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ValueError, match="index.h5: index format version 99"):
        run(features, tmp_path / "run")


def test_shard_content_does_not_match_the_index(features, tmp_path):
    shard = a_train_shard(features)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, other content
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{shard.name}: SHA-256 differs"):
        run(features, tmp_path / "run")
    config = {**TINY, "verify_shards": "size"}  # the cheap check passes this one by design
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(ValueError, match=f"{shard.name}: .* bytes, .*index.h5 expects"):
        run(features, tmp_path / "run", config)


def test_scores_file_of_another_feature_set_is_refused_on_resume(features, tmp_path):
    out = tmp_path / "run"
    config = {**CONFIG, "epochs": 5}  # killed in a remix epoch (scores.h5 exists) with another remix epoch to go
    kill_at(launch(features / "index.h5", out, "remix", 1, config=config), out, 5)
    (default_work_dir(out) / "scores.h5").unlink()
    ScoresFile(default_work_dir(out) / "scores.h5", modalities=["audio", "video"], num_samples=7, fingerprint="another")
    with pytest.raises(ValueError, match="scores.h5: scores of another dataset"):
        run(features, out, config)


def test_model_of_another_feature_set_is_refused_by_evaluate(features, tmp_path):
    run(features, tmp_path / "m" / "train", method="baseline")
    with h5py.File(features / "index.h5", "a") as f:  # the index now describes another extraction
        hashes = f["shard_sha256"].asstr()[:]
        hashes[0] = "0" * 64
        del f["shard_sha256"]
        f.create_dataset("shard_sha256", data=np.array(hashes, dtype=h5py.string_dtype()))
    ckpt = torch.load(tmp_path / "m" / "train" / "model.pt", weights_only=False)
    ckpt["config"]["verify_shards"] = "size"  # get past the shard check, to reach the model's own check
    torch.save(ckpt, tmp_path / "m" / "train" / "model.pt")
    with pytest.raises(ValueError, match="model.pt was trained on another feature set"):
        evaluate(index_path=features / "index.h5", run_dir=tmp_path / "m")


@pytest.mark.parametrize("params,message", [
    ({"lrr": 0.1}, r"train: unknown key\(s\) \['lrr'\]"),
    ({"lr": "fast"}, "train.lr: expected float, got str 'fast'"),
    ({"epochs": 2.5}, "train.epochs: expected int, got float"),
    ({"mask": "pixels"}, r"train.mask: must be one of feature \| input, got 'pixels'"),
    ({"nproc": 0}, "train.nproc: must be >= 1, got 0"),
    ({"lr": 0}, "train.lr: must be > 0, got 0"),
    ({"skip_masked": 1}, "train.skip_masked: expected bool, got int 1"),
    ({"warmup_epochs": 20}, r"train.warmup_epochs: must be <= epochs \(16\), got 20"),
    ({"method_params": {"pmr": {"momentum": 1}}}, r"train.method_params.pmr.momentum: must be < 1, got 1"),
    ({"method_params": {"pmrr": {}}}, r"train.method_params: unknown method\(s\) \['pmrr'\]"),
    ({"eval_resize": "stretch"}, r"train.eval_resize: must be one of crop \| squash, got 'stretch'"),
    ({"bn_init": "zeros"}, r"train.bn_init: must be one of ones \| normal, got 'zeros'"),
    ({"bn_split": 0}, "train.bn_split: must be >= 1, got 0"),
    ({"bn_split": 2, "fusion": "mmtm"}, "train.bn_split: the mmtm fusion runs its encoders stage by stage"),
])
def test_bad_train_params(params, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_params(params)


def test_an_empty_modality_subset_is_skipped_and_logged(features, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(remix, "assign_weakest", lambda kl: np.zeros(len(kl), np.int64))  # nobody gets video
    with caplog.at_level(logging.INFO, logger="train.methods.remix"):
        summary = run(features, tmp_path / "run")
    assert "epoch 1: no sample is assigned to video: its subset is skipped" in caplog.text
    row = summary["history"][1]
    assert row["phase"] == "remix" and row["assigned_video"] == 0 and row["assigned_audio"] == summary["train_samples"]
