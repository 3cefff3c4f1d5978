"""G-Blend: the OGR weight formula by hand, the blended loss, validation (never test) measurements, a tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train.data import ShardDataset
from train.methods import build_method
from train.methods import gblend
from train.methods.gblend import GBlend, blend_weights
from train.fusions import build_model
from train.config import TrainConfig

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def test_blend_weights_by_hand():
    # branches: fused, audio, video. G = val_start - val_end; O = gap_end - gap_start; w ∝ G / O²
    w, g, o = blend_weights(start_val=[1.0, 1.0, 1.0], start_train=[1.0, 1.0, 1.0],
                            end_val=[0.6, 0.8, 0.9], end_train=[0.4, 0.7, 0.7], min_overfit=0.01)
    assert g == pytest.approx([0.4, 0.2, 0.1]) and o == pytest.approx([0.2, 0.1, 0.2])
    # raw G / O²: 0.4 / 0.04 = 10, 0.2 / 0.01 = 20, 0.1 / 0.04 = 2.5; sum 32.5
    assert w == pytest.approx([10 / 32.5, 20 / 32.5, 2.5 / 32.5])

    # guards: O = 0 counts as min_overfit (0.01), negative G gives weight 0
    w, g, o = blend_weights(start_val=[1.0, 1.2, 1.1], start_train=[0.9, 1.1, 1.05],
                            end_val=[0.8, 1.1, 1.2], end_train=[0.5, 1.0, 0.9], min_overfit=0.01)
    assert g == pytest.approx([0.2, 0.1, -0.1]) and o == pytest.approx([0.2, 0.0, 0.25], abs=1e-12)
    # raw: 0.2 / 0.04 = 5, 0.1 / 0.0001 = 1000, 0
    assert w == pytest.approx([5 / 1005, 1000 / 1005, 0.0])
    w, _, _ = blend_weights([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.5, 1.2], [0.2, 0.2, 0.2], min_overfit=0.01)
    assert w == pytest.approx([1 / 3] * 3)  # nothing generalised: uniform


def _toy():
    torch.manual_seed(0)
    model = build_model(["audio", "video"], 3, width=4).eval()
    inputs = {"audio": torch.randn(4, 1, 16, 24), "video": torch.randn(4, 2, 3, 24, 24)}
    return model, inputs, torch.tensor([0, 1, 2, 0])


def test_loss_blends_fused_and_heads_on_real_features():
    model, inputs, y = _toy()
    method = GBlend(TrainConfig(), ["audio", "video"], 3)
    method.weights = np.array([0.5, 0.3, 0.2])
    out = model(inputs)
    loss = method.loss(model, out, y, torch.full((4,), -1), None)
    want = 0.5 * F.cross_entropy(out.fused, y) + 0.3 * F.cross_entropy(out.unimodal["audio"], y) \
        + 0.2 * F.cross_entropy(out.unimodal["video"], y)
    assert torch.allclose(loss, want)
    method.weights = np.array([0.0, 1.0, 0.0])  # the audio head alone: it moves the audio encoder only
    model.zero_grad()
    method.loss(model, model(inputs), y, torch.full((4,), -1), None).backward()
    assert all(p.grad.abs().sum() > 0 for p in model.encoders["audio"].parameters() if p.grad is not None)
    assert model.encoders["audio"].trunk.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoders["video"].parameters())


def test_params_state_and_registry():
    cfg = TrainConfig(methods=["gblend"], method_params={"gblend": {"super_epoch": 3}})
    method = build_method("gblend", cfg, ["audio", "video"], 3, cfg.method_params)
    assert isinstance(method, GBlend) and method.params.super_epoch == 3
    assert method.weights == pytest.approx([1 / 3] * 3)  # uniform until the first super-epoch ends
    with pytest.raises(ValueError, match="super_epoch"):
        build_method("gblend", cfg, ["audio", "video"], 3, {"gblend": {"super_epoch": 0}})
    method.weights = np.array([0.2, 0.3, 0.5])
    method.start = {"val": np.array([1.0, 2.0, 3.0]), "train": np.array([0.5, 1.0, 1.5])}
    other = GBlend(cfg, ["audio", "video"], 3)
    other.load_state_dict(method.state_dict())
    assert other.weights.tolist() == [0.2, 0.3, 0.5] and other.start["train"].tolist() == [0.5, 1.0, 1.5]
    assert other.epoch_end(0, None) == {"gblend_w_fused": 0.2, "gblend_w_audio": 0.3, "gblend_w_video": 0.5}


def test_tiny_training_measures_on_val_and_train_eval(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    from train.evaluate import evaluate
    from train.trainer import train

    features = extracted_features(cremad_raw, tmp_path_factory)
    calls, splits_read = [], set()
    real_losses, real_getitem = gblend.branch_losses, ShardDataset.__getitem__

    def recording_losses(model, loader, *a, **kw):
        result = real_losses(model, loader, *a, **kw)
        calls.append((loader.dataset.split, loader.dataset.train, result))
        return result

    def recording_getitem(self, item):
        splits_read.add(self.split)
        return real_getitem(self, item)

    monkeypatch.setattr(gblend, "branch_losses", recording_losses)
    monkeypatch.setattr(ShardDataset, "__getitem__", recording_getitem)
    cfg = TrainConfig(**TINY, methods=["gblend"], method_params={"gblend": {"super_epoch": 1}})
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "g" / "train", method="gblend",
                    config=cfg, seed=0)
    assert splits_read == {"train", "val"}  # test is never read while training
    # one measurement per super-epoch boundary (epochs 0, 1, 2): validation, then train without augmentation
    assert [(s, t) for s, t, _ in calls] == [("val", False), ("train", False)] * 3
    hist = summary["history"]
    weights = [[h[f"gblend_w_{b}"] for b in ("fused", "audio", "video")] for h in hist]
    assert weights[0] == pytest.approx([1 / 3] * 3)  # the first super-epoch: uniform
    for e in (1, 2):  # from the measurements at the super-epoch's start and end
        (_, _, v0), (_, _, t0), (_, _, v1), (_, _, t1) = calls[2 * (e - 1): 2 * e + 2]
        want, _, _ = blend_weights(v0, t0, v1, t1, 0.01)
        assert weights[e] == pytest.approx(want.tolist()) and sum(weights[e]) == pytest.approx(1.0)
    assert all(np.isfinite(l["loss"]) for l in hist)

    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "g")
    assert metrics["split"] == "test" and metrics["method"] == "gblend" and 0 <= metrics["acc_fused"] <= 1
    assert json.loads((tmp_path / "g" / "metrics.json").read_text()) == metrics


def test_exact_resume_inside_a_super_epoch(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, methods=["gblend"], method_params={"gblend": {"super_epoch": 2}})
    clean = interrupted_then_resumed(features, tmp_path, "gblend", GBlend, cfg, 3, monkeypatch)
    steps = [json.loads(ln) for ln in (tmp_path / "clean" / "steps-rank0.jsonl").read_text().splitlines()]
    assert steps[3]["epoch"] == 1  # stopped inside the first super-epoch, after the epoch-0 measurement
    w = [[h[f"gblend_w_{b}"] for b in ("fused", "audio", "video")] for h in clean["history"]]
    assert w[0] == w[1] == pytest.approx([1 / 3] * 3) and w[2] != w[1]  # re-weighted at epoch 2 only
