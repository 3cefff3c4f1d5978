"""The byte-batch path (train/gpu_batch.py) against the per-sample reader, for JPEG and raw frames, on the CPU
(and on CUDA where there is one)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets import prepare_dataset
from pipeline.extract import extract
from pipeline.manifest import write_classes, write_manifest
from pipeline.shards import IndexReader
from tests.train.test_data import CFG, SIZE, SPLIT
from train.checkpoint import dataset_fingerprint
from train.data import ShardDataset, make_loader
from train.gpu_batch import (
    BatchDecoder,
    ShardBytesDataset,
    collate_payloads,
    decode_batch,
    make_bytes_loader,
    prefetch,
)
from train.sampler import RemixBatchSampler

CODECS = ("jpeg", "raw")
KEYS = {"mel", "frames", "label", "index", "modality"}


@pytest.fixture(scope="module")
def indexes(cremad_raw, tmp_path_factory) -> dict[str, IndexReader]:
    """The tiny CREMA-D tree extracted once per codec (shards of 2 clips)."""
    root = tmp_path_factory.mktemp("gpu_batch")
    records, classes = prepare_dataset(dataset="cremad", root=str(cremad_raw), **SPLIT)
    write_manifest(root / "manifest.csv", records)
    write_classes(root / "classes.txt", classes)
    out = {}
    for codec in CODECS:
        extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=root / codec,
                config=dataclasses.replace(CFG, frame_codec=codec), shard_size=2, workers=1, max_reject_fraction=0.5)
        out[codec] = IndexReader(Path(root / codec / "index.h5"))
    return out


def datasets(index: IndexReader, train: bool, seed: int = 3) -> tuple[ShardDataset, ShardBytesDataset]:
    kw = dict(train=train, frame_size=SIZE, mel_mean=-2.0, mel_std=3.0, seed=seed)
    return ShardDataset(index, "train", **kw), ShardBytesDataset(index, "train", **kw)


def items(n: int) -> list[tuple[int, int, int, int]]:
    """(i, m, epoch, copy) items with several epochs and a Resample copy."""
    return [(i, i % 2, 1 + i % 3, int(i == 1)) for i in range(n)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("train", [False, True])
def test_decode_batch_gives_the_per_sample_frames_bit_for_bit_on_cpu(indexes, codec, train):
    per_sample, byte_ds = datasets(indexes[codec], train)
    keys = items(len(per_sample))
    batch = decode_batch(collate_payloads([byte_ds[k] for k in keys]), BatchDecoder.of(byte_ds), "cpu")
    expected = torch.utils.data.default_collate([per_sample[k] for k in keys])
    assert batch.keys() == KEYS
    for k in KEYS:
        assert batch[k].dtype == expected[k].dtype and torch.equal(batch[k], expected[k]), k
    assert batch["frames"].shape == (len(keys), CFG.num_frames, 3, SIZE, SIZE)


def test_jpeg_and_raw_frames_agree_within_jpeg_tolerance(indexes):
    jpg, raw = (ShardDataset(indexes[c], "val", train=False, frame_size=SIZE) for c in CODECS)
    assert (jpg.frame_codec, raw.frame_codec) == CODECS
    for i in range(len(jpg)):
        a, b = jpg[i], raw[i]
        assert torch.equal(a["mel"], b["mel"]) and a["label"] == b["label"]
        diff = (a["frames"] - b["frames"]).abs()  # normalised units: 1 level of 255 is ~0.018
        assert diff.mean() < 0.1, (i, diff.mean())


def test_codec_changes_the_fingerprint(indexes):
    assert dataset_fingerprint(indexes["jpeg"]) != dataset_fingerprint(indexes["raw"])


def test_collated_batch_packs_frames_in_two_tensors(indexes):
    _, byte_ds = datasets(indexes["jpeg"], train=False)
    batch = collate_payloads([byte_ds[k] for k in items(3)])
    n = 3 * CFG.num_frames
    assert batch["frame_data"].dtype == torch.uint8 and batch["frame_offsets"].shape == (n + 1,)
    assert batch["frame_offsets"][-1] == batch["frame_data"].numel() and batch["num_frames"].tolist() == [2, 2, 2]
    first = batch["frame_data"][: batch["frame_offsets"][1]]
    assert bytes(first.numpy()[:2]) == b"\xff\xd8"  # a JPEG start-of-image marker: not decoded in the worker
    _, raw_ds = datasets(indexes["raw"], train=False)
    raw = collate_payloads([raw_ds[k] for k in items(3)])
    h, w, c = raw["frame_shapes"][0].tolist()
    assert c == 3 and min(h, w) == CFG.short_side and raw["frame_offsets"][1] == h * w * 3


@pytest.mark.parametrize("codec", CODECS)
def test_loader_with_workers_and_prefetch_match_the_per_sample_loader(indexes, codec):
    per_sample, byte_ds = datasets(indexes[codec], train=True)
    sampler = RemixBatchSampler(per_sample.shard_ids(), batch_size=2, drop_last=False, seed=0)
    sampler.set_assignment(np.arange(len(per_sample)) % 2, 2)
    sampler.set_epoch(2)
    expected = list(make_loader(per_sample, sampler, workers=0))
    loader = make_bytes_loader(byte_ds, sampler, workers=2)
    assert loader.num_workers == 2 and loader.pin_memory == torch.cuda.is_available()
    got = list(prefetch(loader, BatchDecoder.of(byte_ds), "cpu"))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for k in KEYS:
            assert torch.equal(a[k], b[k]), k


def test_prefetch_on_cpu_decodes_in_turn():
    calls = []

    def decode(batch, device):
        calls.append(batch)
        return {"x": torch.tensor([batch])}

    it = prefetch(iter(range(3)), decode, "cpu")
    assert next(it)["x"].item() == 0 and calls == [0]  # nothing decoded ahead without CUDA
    assert [b["x"].item() for b in it] == [1, 2]
    assert list(prefetch(iter([]), decode, "cpu")) == []


def test_bad_arguments(indexes):
    _, byte_ds = datasets(indexes["jpeg"], train=False)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        make_bytes_loader(byte_ds, [[0]], workers=-1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            decode_batch(collate_payloads([byte_ds[0]]), BatchDecoder.of(byte_ds), "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("train", [False, True])
def test_cuda_decode_and_prefetch_match_the_cpu_within_decoder_tolerance(indexes, codec, train):
    _, byte_ds = datasets(indexes[codec], train)
    batches = [collate_payloads([byte_ds[k] for k in items(len(byte_ds))[j::2]]) for j in range(2)]
    decoder = BatchDecoder.of(byte_ds)
    cpu = [decode_batch(b, decoder, "cpu") for b in batches]
    gpu = list(prefetch(batches, decoder, "cuda"))
    for c, g in zip(cpu, gpu):
        assert g["frames"].is_cuda and g["mel"].is_cuda and torch.equal(g["mel"].cpu(), c["mel"])
        diff = (g["frames"].cpu() - c["frames"]).abs()
        assert diff.mean() < 0.05, diff.mean()  # nvJPEG and libjpeg differ by rounding; resize by float/uint8 path
