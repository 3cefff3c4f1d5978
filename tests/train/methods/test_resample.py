"""Resample: Shapley contributions by hand, the copies rule, the sampler's repeats, per-copy augmentation, tiny runs."""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train.methods import build_method
from train.methods.resample import (Resample, ResampleRemix, copies_from_contribution, sample_contributions,
                                    shapley)
from train.fusions.concat import ConcatFusion
from train.models import AVModel
from train.sampler import RemixBatchSampler
from train.config import TrainConfig
from train.methods.remix import Remixing

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


# -- valuation ---------------------------------------------------------------------------------

def _toy_model() -> AVModel:
    """Identity encoders (D = 2), 2 classes, concat fusion: logits(S) = (0, 1) + sum_{m in S} x_m."""
    model = AVModel({"audio": nn.Identity(), "video": nn.Identity()}, feature_dim=2, num_classes=2, fusion=ConcatFusion)
    with torch.no_grad():
        model.fusion.fc.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
        model.fusion.fc.bias.copy_(torch.tensor([0.0, 1.0]))
    return model.train()


# sample: x_audio, x_video, label; v(a), v(v), v(av) -> phi_audio, phi_video (K = 2: phi_a = (v(a) + v(av) - v(v)) / 2)
TOY = [((3, 0), (0, 0.5), 0),  # v = 1, 0, 1 -> (1, 0)
       ((1.5, 0.8), (1.5, 0.8), 0),  # v = 0, 0, 1 -> (0.5, 0.5): only together
       ((0, 0), (3, 0), 1),  # v = 1, 0, 0 -> (0.5, -0.5): video spoils the right audio answer
       ((0, 2), (0, 2), 0)]  # v = 0, 0, 0 -> (0, 0)
TOY_PHI = [[1.0, 0.0], [0.5, 0.5], [0.5, -0.5], [0.0, 0.0]]


def test_shapley_contributions_on_a_toy_model():
    model = _toy_model()
    batches = []
    for rows in ([2, 0], [3, 1]):  # out of order: results are placed by batch["index"]
        batches.append({"audio": torch.tensor([TOY[i][0] for i in rows], dtype=torch.float32),
                        "video": torch.tensor([TOY[i][1] for i in rows], dtype=torch.float32),
                        "label": torch.tensor([TOY[i][2] for i in rows]), "index": torch.tensor(rows)})
    phi = sample_contributions(model, batches, lambda b: {m: b[m] for m in ("audio", "video")},
                               torch.device("cpu"), n=4)
    assert phi.tolist() == TOY_PHI
    assert model.training  # restored
    # the official code's rule for K = 2: 0 / 1 / 2 / 3 extra copies for phi_min = 1 / 0.5 / 0 / -0.5
    assert copies_from_contribution(phi, scale=2.0, max_extra=3).tolist() == [3, 2, 4, 3]


def test_shapley_three_modalities_by_hand():
    # bit masks over (a, b, c): a dictator game (v = 1 iff a in S) and a majority game (v = 1 iff |S| >= 2)
    dictator = [1.0 if s & 1 else 0.0 for s in range(8)]
    majority = [1.0 if bin(s).count("1") >= 2 else 0.0 for s in range(8)]
    # a's marginals in the majority game: S = {} 0, {b} 1, {c} 1, {b, c} 0 -> 1/6 + 1/6 = 1/3
    assert shapley(np.array([dictator, majority])) == pytest.approx(np.array([[1, 0, 0], [1 / 3] * 3]))
    # only {a, b} right: a's marginals {b}: +1 (weight 1! 1! / 3! = 1/6), others 0 -> 1/6 (b alike);
    # c's: {a, b}: v(abc) - v(ab) = -1 (weight 2! 0! / 3! = 1/3) -> -1/3
    only_ab = [1.0 if s == 3 else 0.0 for s in range(8)]
    assert shapley(np.array([only_ab])) == pytest.approx(np.array([[1 / 6, 1 / 6, -1 / 3]]))
    rng = np.random.default_rng(0)
    v = rng.integers(0, 2, (20, 8)).astype(float)
    v[:, 0] = 0
    assert shapley(v).sum(1) == pytest.approx(v[:, 7])  # efficiency: the values add up to v(all)
    with pytest.raises(ValueError, match="2\\^K"):
        shapley(np.zeros((2, 6)))


def test_copies_rule():
    phi = np.array([[1.0, 0.0], [0.5, 0.9], [0.5, -0.5], [-1.0, 1.0], [1 / 3, 1.0], [1 / 6, 1.0], [0.75, 1.0]])
    # shortfall 1 - phi_min: 1, 0.5, 1.5, 2, 2/3, 5/6, 0.25; x2: 2, 1, 3, 4, 1.33, 1.67, 0.5 (halves round up)
    assert copies_from_contribution(phi, 2.0, 3).tolist() == [3, 2, 4, 4, 2, 3, 2]
    assert copies_from_contribution(phi, 2.0, 1).tolist() == [2, 2, 2, 2, 2, 2, 2]
    assert copies_from_contribution(phi, 0.0, 3).tolist() == [1] * 7
    assert copies_from_contribution(np.ones((3, 2)), 5.0, 3).tolist() == [1, 1, 1]  # full contribution: once


def test_params_and_registry():
    cfg = TrainConfig(methods=["resample", "resample_remix"])
    a = build_method("resample", cfg, ["audio", "video"], 3, {"resample": {"max_extra": 2}})
    b = build_method("resample_remix", cfg, ["audio", "video"], 3, {})
    assert isinstance(a, Resample) and not isinstance(a, Remixing) and a.params.max_extra == 2 and a.params.scale == 2.0
    assert isinstance(b, ResampleRemix) and isinstance(b, Remixing)
    with pytest.raises(ValueError, match="max_extra"):
        build_method("resample", cfg, ["audio", "video"], 3, {"resample": {"max_extra": -1}})
    a.copies, a.contrib = np.array([1, 3, 2, 2]), np.zeros((4, 2))
    assert a.epoch_end(1, None) == {"expansion": 2.0, "resampled": 0.75}
    c = Resample(cfg, ["audio", "video"], 3)
    c.load_state_dict(a.state_dict())
    assert c.copies.tolist() == [1, 3, 2, 2] and c.plan(1, None).copies.tolist() == [1, 3, 2, 2]
    assert Resample(cfg, ["audio", "video"], 3).epoch_end(0, None) == {"expansion": 1.0, "resampled": 0.0}


# -- sampler -----------------------------------------------------------------------------------

def _shard(n: int = 120) -> np.ndarray:
    return np.repeat(np.arange(12), n // 12)[np.random.default_rng(0).permutation(n)]


def test_sampler_repeats_each_sample_copies_times():
    shard = _shard()
    a = np.random.default_rng(1).integers(0, 3, 120)
    copies = np.random.default_rng(2).integers(0, 4, 120)  # 0: left out this epoch
    s = RemixBatchSampler(shard, batch_size=7, drop_last=False, seed=3)
    s.set_assignment(a, 3)
    s.set_repeats(copies)
    s.set_epoch(2)
    batches = list(s)
    items = [it for b in batches for it in b]
    assert len(items) == copies.sum() and all(len(it) == 4 for it in items)
    seen = Counter(i for i, *_ in items)
    assert all(seen[i] == copies[i] for i in range(120))  # each sample exactly copies[i] times
    numbers = {}
    for i, m, epoch, c in items:
        assert m == a[i] and epoch == 2  # a copy carries its sample's modality
        numbers.setdefault(i, []).append(c)
    assert all(sorted(v) == list(range(copies[i])) for i, v in numbers.items())  # copies numbered 0, 1, ...
    assert all(len({m for _, m, *_ in b}) == 1 for b in batches)  # still modality-pure
    st = s.stats()
    assert [st[m]["samples"] for m in range(3)] == [int(copies[a == m].sum()) for m in range(3)]
    # shard-local: the epoch order is one contiguous run per shard (copies included)
    runs = shard[s.epoch_order()]
    assert len(runs) == copies.sum() and sum(1 for x, y in zip(runs, runs[1:]) if x != y) == 11
    # deterministic for (seed, epoch); another epoch, another order of the same multiset
    t = RemixBatchSampler(shard, batch_size=7, drop_last=False, seed=3)
    t.set_assignment(a, 3)
    t.set_repeats(copies.copy())
    t.set_epoch(2)
    assert list(t) == batches
    t.set_epoch(3)
    assert list(t) != batches and sorted(it[:2] for b in t for it in b) == sorted(it[:2] for it in items)
    copies[:] = 1  # the sampler keeps its own copy
    assert list(s) == batches


def test_sampler_repeats_under_ddp_and_bad_input():
    shard = _shard()
    copies = np.random.default_rng(4).integers(1, 4, 120)
    ranks = []
    for r in range(2):
        s = RemixBatchSampler(shard, batch_size=9, drop_last=False, seed=0, rank=r, world_size=2)
        s.set_repeats(copies)
        s.set_epoch(1, start=2)
        ranks.append(list(s))
    glob = s.global_batches()[2:]  # resumed at global batch 2
    assert len(ranks[0]) == len(ranks[1]) == len(glob) > 0
    for b0, b1, g in zip(*ranks, glob):
        assert [it[:2] for it in b0 + b1] == g  # contiguous slices of the same global batch
    with pytest.raises(ValueError, match="shape"):
        s.set_repeats(np.ones(5, np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        s.set_repeats(np.full(120, -1))
    with pytest.raises(ValueError, match="integers"):
        s.set_repeats(np.full(120, 1.5))


# the plans of the sampler BEFORE repeats existed (recorded from that code): repeats=None must not change them
OLD_PLANS_SHA256 = "df3c063aed7432189b8803607ffa77d2520b27197495498107fca0dfb00b1883"


def _plans_digest(prepare=lambda s: None) -> str:
    h = hashlib.sha256()
    shard = _shard()
    a = np.random.default_rng(1).integers(0, 3, 120)
    for assign in (None, a):
        for order in ("interleaved", "sequential"):
            for pure in (True, False):
                for drop_last in (False, True):
                    for ws in (1, 2):
                        for rank in range(ws):
                            s = RemixBatchSampler(shard, batch_size=7, drop_last=drop_last, seed=3, order=order,
                                                  pure=pure, rank=rank, world_size=ws)
                            s.set_assignment(assign, 3)
                            prepare(s)
                            for e in (0, 5):
                                s.set_epoch(e, start=1 if e else 0)
                                h.update(repr(list(s)).encode())
                                h.update(repr(s.global_batches()).encode())
                                h.update(repr(s.stats()).encode())
                                h.update(repr(len(s)).encode())
                                h.update(s.epoch_order().tobytes())
    return h.hexdigest()


def test_no_repeats_is_the_old_plan_exactly():
    assert _plans_digest() == OLD_PLANS_SHA256

    def set_and_clear(s):
        s.set_repeats(np.full(120, 2))
        list(s)  # a cached plan with repeats must not survive
        s.set_repeats(None)
        assert s.repeats is None

    assert _plans_digest(set_and_clear) == OLD_PLANS_SHA256
    # all-ones copies: the same plan, every item tagged copy 0
    s = RemixBatchSampler(_shard(), batch_size=7, drop_last=False, seed=3)
    plain = list(s)
    s.set_repeats(np.ones(120, np.int64))
    assert [[it[:3] for it in b] for b in s] == plain and {it[3] for b in s for it in b} == {0}


def test_copies_draw_their_own_augmentation(cremad_raw, tmp_path_factory):
    from pipeline.shards import IndexReader
    from train.data import ShardDataset

    index = IndexReader(extracted_features(cremad_raw, tmp_path_factory) / "index.h5")
    ds = ShardDataset(index, "train", train=True, frame_size=24, seed=0)
    plain = ds[(0, -1, 2)]
    assert torch.equal(ds[(0, -1, 2, 0)]["frames"], plain["frames"])  # copy 0 = the plain item
    assert torch.equal(ds[(0, -1, 2, 1)]["frames"], ds[(0, -1, 2, 1)]["frames"])  # deterministic
    assert not torch.equal(ds[(0, -1, 2, 1)]["frames"], plain["frames"])
    assert not torch.equal(ds[(0, -1, 2, 1)]["frames"], ds[(0, -1, 2, 2)]["frames"])
    assert torch.equal(ds[(0, -1, 2, 1)]["mel"], plain["mel"]) and ds[(0, -1, 2, 1)].keys() == plain.keys()


# -- tiny real training ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["resample", "resample_remix"])
def test_tiny_training(cremad_raw, tmp_path_factory, tmp_path, method):
    from train.evaluate import evaluate
    from train.trainer import train

    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, methods=[method])
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / method / "train", method=method,
                    config=cfg, seed=0)
    n, hist = summary["train_samples"], summary["history"]
    assert hist[0]["expansion"] == 1.0 and hist[0]["resampled"] == 0.0  # warm-up: each sample once
    steps = [json.loads(ln) for ln in (tmp_path / method / "train" / "steps-rank0.jsonl").read_text().splitlines()]
    assert max(h["expansion"] for h in hist[1:]) > 1  # the tiny model is weak: samples get copies
    for h in hist:
        assert 1.0 <= h["expansion"] <= 4.0
        done = sum(s["samples"] for s in steps if s["epoch"] == h["epoch"])
        assert done == round(h["expansion"] * n)  # the epoch trained sum(copies) samples
    if method == "resample_remix":
        assert [h["phase"] for h in hist] == ["warmup", "remix", "remix"]
        for h in hist[1:]:
            assert h["assigned_audio"] + h["assigned_video"] == n  # an assignment per sample, not per copy
        assert all(len(s["modality"]) == 1 for s in steps)  # modality-pure batches, copies included
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / method)
    assert metrics["split"] == "test" and metrics["method"] == method and 0 <= metrics["acc_fused"] <= 1


def test_exact_resume_inside_a_resampled_epoch(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    features = extracted_features(cremad_raw, tmp_path_factory)
    clean = interrupted_then_resumed(features, tmp_path, "resample", Resample, TrainConfig(**TINY), 8, monkeypatch)
    steps = [json.loads(ln) for ln in (tmp_path / "clean" / "steps-rank0.jsonl").read_text().splitlines()]
    assert steps[8]["epoch"] == 2 and clean["history"][2]["expansion"] > 1  # stopped inside a re-sampled epoch
