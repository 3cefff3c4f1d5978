"""ShardDataset / make_loader / estimate_mel_stats on a tiny extracted CREMA-D-layout set."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import train.data as D
from pipeline.datasets import prepare_dataset
from pipeline.extract import extract
from pipeline.features import FeatureConfig
from pipeline.manifest import write_classes, write_manifest
from pipeline.shards import IndexReader
from train.data import ShardDataset, estimate_mel_stats, make_loader
from train.sampler import RemixBatchSampler

CFG = FeatureConfig(num_frames=2, short_side=32, n_mels=32, n_fft=256, hop_length=128, duration=1.5)
SPLIT = dict(split_file=None, ratios=[0.5, 0.25, 0.25], val_fraction=0.2, group_disjoint=False, seed=0)
SIZE = 24  # frame_size: smaller than the stored short side, so the crop matters
_FEATURES: dict[str, Path] = {}


def extracted_features(cremad_raw: Path, tmp_path_factory) -> Path:
    """Extract the tiny CREMA-D tree once per session (shards of 2 clips); return the features folder."""
    key = str(cremad_raw)
    if key not in _FEATURES:
        root = tmp_path_factory.mktemp("train_features")
        records, classes = prepare_dataset(dataset="cremad", root=str(cremad_raw), **SPLIT)
        write_manifest(root / "manifest.csv", records)
        write_classes(root / "classes.txt", classes)
        extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=root / "features",
                config=CFG, shard_size=2, workers=1, max_reject_fraction=0.5)
        _FEATURES[key] = root / "features"
    return _FEATURES[key]


@pytest.fixture
def index(cremad_raw, tmp_path_factory) -> IndexReader:
    return IndexReader(extracted_features(cremad_raw, tmp_path_factory) / "index.h5")


def raw_mel(index: IndexReader, row: int) -> np.ndarray:
    return np.load(io.BytesIO(index.read_member(row, "mel.npy")))


def unnormalize(frames: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(D.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(D.IMAGENET_STD).view(3, 1, 1)
    return frames * std + mean


def test_items_shapes_dtypes_and_normalisation(index):
    mean, std = estimate_mel_stats(index, "train")
    rows = index.indices("train")
    assert rows.size >= 4 and len(np.unique(index.shard[rows])) >= 2
    for train in (True, False):
        ds = ShardDataset(index, "train", train=train, frame_size=SIZE, mel_mean=mean, mel_std=std)
        assert len(ds) == rows.size
        assert np.array_equal(ds.shard_ids(), index.shard[rows]) and np.array_equal(ds.labels(), index.label[rows])
        item = ds[(1, 0)]
        assert set(item) == {"mel", "frames", "label", "index", "modality"}
        assert item["mel"].dtype == torch.float32 and item["mel"].shape == (1, *CFG.mel_shape)
        assert item["frames"].dtype == torch.float32 and item["frames"].shape == (CFG.num_frames, 3, SIZE, SIZE)
        assert (item["label"], item["index"], item["modality"]) == (int(index.label[rows[1]]), 1, 0)
        expected_mel = (raw_mel(index, int(rows[1])).astype(np.float32) - mean) / std
        np.testing.assert_allclose(item["mel"][0].numpy(), expected_mel, rtol=1e-5, atol=1e-5)
        pixels = unnormalize(item["frames"])
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4 and pixels.std() > 0.01
    # the normalised mels of the training split have about zero mean and unit variance
    ds = ShardDataset(index, "train", train=False, frame_size=SIZE, mel_mean=mean, mel_std=std)
    mels = torch.stack([ds[i]["mel"] for i in range(len(ds))])
    assert abs(mels.mean().item()) < 1e-3 and abs(mels.std().item() - 1) < 1e-2


def test_eval_items_are_deterministic_and_match_a_reference_transform(index):
    ds = ShardDataset(index, "val", train=False, frame_size=SIZE)
    a, b = ds[0], ds[0]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["mel"], b["mel"])
    assert ds[0]["modality"] == -1  # a plain int index is multimodal
    # reference: PIL decode, resize short side, center crop, ToTensor, Normalize
    ref = v2.Compose([v2.PILToTensor(), v2.Resize(SIZE, antialias=True), v2.CenterCrop(SIZE),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(D.IMAGENET_MEAN, D.IMAGENET_STD)])
    row = int(ds.rows[0])
    for t, member in enumerate(ds.frame_members):
        img = Image.open(io.BytesIO(index.read_member(row, member))).convert("RGB")
        diff = (ref(img) - a["frames"][t]).abs()
        assert diff.mean() < 0.05, (member, diff.mean())  # decoders differ by rounding only


def test_eval_squash_resizes_the_whole_frame_like_the_official_resize(index):
    ds = ShardDataset(index, "val", train=False, frame_size=SIZE, eval_resize="squash")
    crop = ShardDataset(index, "val", train=False, frame_size=SIZE)
    # reference: the official eval transform, Resize((S, S)) of the whole frame (aspect lost), ToTensor, Normalize
    ref = v2.Compose([v2.PILToTensor(), v2.Resize((SIZE, SIZE), antialias=True),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(D.IMAGENET_MEAN, D.IMAGENET_STD)])
    row = int(ds.rows[0])
    img = Image.open(io.BytesIO(index.read_member(row, ds.frame_members[0]))).convert("RGB")
    assert img.width != img.height  # a non-square frame, so crop and squash must differ
    got = ds[0]["frames"][0]
    assert (ref(img) - got).abs().mean() < 0.05
    assert (crop[0]["frames"][0] - got).abs().mean() > 0.05
    with pytest.raises(ValueError, match="eval_resize"):
        ShardDataset(index, "val", train=False, frame_size=SIZE, eval_resize="stretch")


def test_train_items_are_random_but_a_function_of_seed_epoch_and_sample(index):
    ds = ShardDataset(index, "train", train=True, frame_size=SIZE, seed=3)
    a = ds[(2, -1, 5)]["frames"]
    torch.manual_seed(123)  # the global RNG plays no part: a resumed run or another worker draws the same
    assert torch.equal(a, ds[(2, -1, 5)]["frames"])
    assert torch.equal(a, ShardDataset(index, "train", train=True, frame_size=SIZE, seed=3)[(2, 0, 5)]["frames"])
    others = [ds[(2, -1, e)]["frames"] for e in range(6, 10)]  # other epochs: other crops
    assert any(not torch.equal(a, o) for o in others)
    other_seed = ShardDataset(index, "train", train=True, frame_size=SIZE, seed=4)
    assert any(not torch.equal(ds[(2, -1, e)]["frames"], other_seed[(2, -1, e)]["frames"]) for e in range(4))
    assert torch.equal(ds[2]["mel"], ShardDataset(index, "train", train=False, frame_size=SIZE)[2]["mel"])


def test_same_crop_and_flip_for_all_frames(index, monkeypatch):
    ds = ShardDataset(index, "train", train=True, frame_size=SIZE)
    frames = ds.decode_frames(index.read_sample(int(ds.rows[0])))  # uint8 [T, 3, H, W]
    assert frames.dtype == torch.uint8 and frames.shape[:2] == (CFG.num_frames, 3)
    assert min(frames.shape[-2:]) == CFG.short_side
    same = frames[:1].expand(4, -1, -1, -1).contiguous()  # one frame, 4 times
    torch.manual_seed(1)
    for _ in range(10):
        out = ds.transform_frames(same)
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))  # one crop and flip per clip
    # with the crop fixed to the whole frame, only the flip varies: both occur, per clip
    monkeypatch.setattr(D, "random_resized_crop_params", lambda h, w, **kw: (0, 0, h, w))
    whole = D.normalize_frames(D.TF.resize(frames, [SIZE, SIZE], antialias=True))
    flipped = D.TF.horizontal_flip(whole)
    kinds = set()
    for _ in range(20):
        out = ds.transform_frames(frames)
        if torch.equal(out, whole):
            kinds.add("plain")
        elif torch.equal(out, flipped):
            kinds.add("flipped")
        else:
            raise AssertionError("frames of one clip were not flipped together")
    assert kinds == {"plain", "flipped"}


def test_random_resized_crop_params_bounds():
    g = torch.Generator().manual_seed(0)
    for h, w in [(32, 48), (48, 32), (10, 200)]:
        for _ in range(50):
            top, left, ch, cw = D.random_resized_crop_params(h, w, generator=g)
            assert 0 <= top and 0 <= left and top + ch <= h and left + cw <= w and ch > 0 and cw > 0


def test_loader_gives_same_batches_with_and_without_workers(index):
    ds = ShardDataset(index, "train", train=False, frame_size=SIZE)
    sampler = RemixBatchSampler(ds.shard_ids(), batch_size=2, drop_last=False, seed=0)
    sampler.set_assignment(np.arange(len(ds)) % 2, 2)
    sampler.set_epoch(1)
    expected = list(sampler)
    runs = []
    for w in (0, 2):
        loader = make_loader(ds, sampler, workers=w)
        assert loader.persistent_workers == (w > 0) and loader.pin_memory == torch.cuda.is_available()
        runs.append(list(loader))
        del loader
    for b0, b1, items in zip(*runs, expected, strict=True):
        assert b0.keys() == b1.keys() == {"mel", "frames", "label", "index", "modality"}
        for k in b0:
            assert torch.equal(b0[k], b1[k]), k
        assert b0["index"].tolist() == [i for i, *_ in items]
        assert b0["modality"].tolist() == [m for _, m, *_ in items] and len(set(b0["modality"].tolist())) == 1
        assert b0["frames"].shape == (len(items), CFG.num_frames, 3, SIZE, SIZE)
        assert b0["mel"].shape == (len(items), 1, *CFG.mel_shape) and b0["label"].dtype == torch.int64
        assert b0["label"].tolist() == ds.labels()[b0["index"].numpy()].tolist()


def test_estimate_mel_stats(index):
    rows = index.indices("train")
    all_mels = np.stack([raw_mel(index, int(r)).astype(np.float64) for r in rows])
    mean, std = estimate_mel_stats(index, "train")
    assert mean == pytest.approx(all_mels.mean(), rel=1e-6) and std == pytest.approx(all_mels.std(), rel=1e-5)
    sub = estimate_mel_stats(index, "train", max_samples=2)
    assert sub == estimate_mel_stats(index, "train", max_samples=2)  # deterministic
    picked = all_mels[[0, rows.size - 1]]  # evenly spaced: the first and the last
    assert sub[0] == pytest.approx(picked.mean(), rel=1e-6) and sub[1] == pytest.approx(picked.std(), rel=1e-5)


def test_bad_arguments(index):
    with pytest.raises(ValueError, match="split"):
        ShardDataset(index, "dev", train=False, frame_size=SIZE)
    with pytest.raises(ValueError, match="mel_std"):
        ShardDataset(index, "train", train=False, frame_size=SIZE, mel_std=0)
    ds = ShardDataset(index, "train", train=False, frame_size=SIZE)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(ValueError, match="workers"):
        make_loader(ds, [], workers=-1)


@pytest.mark.parametrize("stored", [2, 3, 4, 7, 10])
def test_choose_frames_is_the_official_two_segment_sampling(stored):
    """n = 2 segments of T // 2 frames: eval takes each segment's middle, training any frame of each segment
    (the official dataloader's ``randint(i * seg, min((i + 1) * seg - 1, T - 1))``), every one of them in time."""
    seg = stored // 2
    assert D.choose_frames(stored, 2, None) == [min(i * seg + seg // 2, stored - 1) for i in range(2)]
    gen = torch.Generator().manual_seed(0)
    drawn = [D.choose_frames(stored, 2, gen) for _ in range(300)]
    for i in range(2):
        allowed = set(range(i * seg, min((i + 1) * seg - 1, stored - 1) + 1))
        assert {d[i] for d in drawn} == allowed
    assert D.choose_frames(stored, 0, gen) == list(range(stored))
    with pytest.raises(ValueError, match="clip_frames"):
        D.choose_frames(1, 2, None)


def test_per_frame_crops_differ_between_frames_and_clip_crops_do_not():
    frames = torch.arange(2 * 3 * 40 * 40, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 40, 40)
    frames[1] = frames[0]  # two identical frames: only the crop can make them differ
    clip = D.train_frames(frames, 16, torch.Generator().manual_seed(1))
    assert torch.equal(clip[0], clip[1])
    per_frame = D.train_frames(frames, 16, torch.Generator().manual_seed(1), per_frame=True, scale_min=0.08)
    assert not torch.equal(per_frame[0], per_frame[1])
