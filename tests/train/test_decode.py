"""train.decode: batch (workers read bytes, the main process decodes each batch; train/gpu_batch.py) trains and
evaluates, on the CPU, bit for bit as decode: sample (workers decode each sample)."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.shards import IndexReader
from tests.train.test_data import extracted_features
from tests.train.test_resume import assert_same_run
from train import loaders
from train.config import TrainConfig
from train.evaluate import evaluate
from train.gpu_batch import DecodedLoader, ShardBytesDataset
from train.trainer import train

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, guard="none")


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_decode_trains_and_evaluates_bitwise_as_sample_decode(cremad_raw, tmp_path_factory, tmp_path, workers):
    index = extracted_features(cremad_raw, tmp_path_factory) / "index.h5"
    runs = {}
    for decode in ("sample", "batch"):
        cfg = TrainConfig(**TINY, workers=workers, decode=decode)
        train(index_path=index, out_dir=tmp_path / decode / "train", method="remix", config=cfg, seed=0)
        runs[decode] = evaluate(index_path=index, run_dir=tmp_path / decode)  # reads decode from the checkpoint
    assert_same_run(tmp_path / "sample" / "train", tmp_path / "batch" / "train")  # weights, scores, log, steps
    assert runs["sample"] == runs["batch"]
    preds = [(tmp_path / d / "eval" / "predictions.csv").read_text() for d in ("sample", "batch")]
    assert preds[0] == preds[1]
    log = json.loads((tmp_path / "batch" / "train" / "log.json").read_text())
    assert [h["phase"] for h in log["history"]] == ["warmup", "remix", "remix"]  # the scoring pass ran on bytes


def test_decode_picks_the_dataset_and_the_loader(cremad_raw, tmp_path_factory):
    index = IndexReader(extracted_features(cremad_raw, tmp_path_factory) / "index.h5")
    kw = dict(train=False, frame_size=24)
    ds = loaders.dataset(index, "val", "batch", **kw)
    assert isinstance(ds, ShardBytesDataset)
    assert not isinstance(loaders.dataset(index, "val", "sample", **kw), ShardBytesDataset)
    loader = loaders.whole_split_loader(ds, batch_size=2, workers=0, num_modalities=2, device="cpu")
    assert isinstance(loader, DecodedLoader) and len(loader) == len(loader.loader)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(ds) and batches[0]["frames"].shape[-1] == 24
    for bad in (lambda: loaders.dataset(index, "val", "nvdec", **kw), lambda: TrainConfig(decode="nvdec")):
        with pytest.raises(ValueError, match=re.escape("train.decode: must be one of sample | batch, got 'nvdec'")):
            bad()
