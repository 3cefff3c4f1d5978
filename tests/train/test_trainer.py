"""Training for real on tiny generated data (CPU): warm-up and remix epochs, scores file, metrics."""
import csv
import json

import numpy as np
import pytest
import torch

from pipeline.shards import IndexReader
from tests.train.test_data import extracted_features
from train.evaluate import evaluate, macro_f1
from train.fusions import build_model
from train.checkpoint import dataset_fingerprint
from train.config import TrainConfig
from train.inference import imbalance_ratio
from train.methods import build_method, remix
from train.methods.remix import ScoresFile
from train.trainer import frozen_norm_stats, keep_mask, train

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


@pytest.mark.parametrize("mask", ["input", "feature"])
def test_remix_trains_and_scores_every_epoch(cremad_raw, tmp_path_factory, tmp_path, mask):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, mask=mask)
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "remix" / "train", method="remix",
                    config=cfg, seed=0)
    n_train = summary["train_samples"]
    scores = ScoresFile(tmp_path / "remix" / "train" / "scores.h5", modalities=cfg.modalities,
                        num_samples=n_train, fingerprint=_fingerprint(features))
    assert scores.epochs() == [1, 2]  # every epoch after the warm-up
    for epoch in scores.epochs():
        kl, assign = scores.read(epoch)
        assert kl.shape == (n_train, 2) and (kl >= 0).all()
        assert np.array_equal(assign, kl.argmin(1))
        row = summary["history"][epoch]
        counts = [row["assigned_audio"], row["assigned_video"]]
        assert counts == np.bincount(assign, minlength=2).tolist() and sum(counts) == n_train
    assert [h["phase"] for h in summary["history"]] == ["warmup", "remix", "remix"]
    best = summary["best"]
    assert best["val_fused"] == max(h["val_fused"] for h in summary["history"])  # selected on val, all epochs

    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "remix")
    on_disk = json.loads((tmp_path / "remix" / "metrics.json").read_text())
    assert on_disk == metrics and metrics["epoch"] == best["epoch"] and metrics["split"] == "test"
    assert {"acc_fused", "acc_audio", "acc_video", "macro_f1", "imbalance_ratio"} <= metrics.keys()
    assert (tmp_path / "remix" / "eval" / "plots" / "sklearn" / "confusion_matrix.json").exists()
    with open(tmp_path / "remix" / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # one row per test clip, in index order: what paired bootstraps read
    test_keys = IndexReader(features / "index.h5")
    assert [r["key"] for r in rows] == [str(test_keys.keys[i]) for i in test_keys.indices("test")]
    for col in ("fused", "audio", "video"):
        assert np.mean([r[col] == r["label"] for r in rows]) == pytest.approx(metrics[f"acc_{col}"])


@pytest.mark.parametrize("scoring,passes", [("pass", 2), ("online", 0)])
def test_online_scoring_needs_no_scoring_pass(cremad_raw, tmp_path_factory, tmp_path, monkeypatch, scoring, passes):
    from train import trainer
    features = extracted_features(cremad_raw, tmp_path_factory)
    calls = []
    real = trainer.predict
    spy = lambda model, loader, *a, **kw: calls.append(loader) or real(model, loader, *a, **kw)  # noqa: E731
    monkeypatch.setattr(trainer, "predict", spy)  # validation
    monkeypatch.setattr(remix, "predict", spy)  # the scoring passes
    cfg = TrainConfig(**TINY, mask="feature", scoring=scoring)
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "r", method="remix", config=cfg, seed=0)
    assert len(calls) == cfg.epochs + passes  # one validation pass per epoch, plus the scoring passes
    scores = ScoresFile(tmp_path / "r" / "scores.h5", modalities=cfg.modalities, num_samples=summary["train_samples"],
                        fingerprint=_fingerprint(features))
    assert scores.epochs() == [1, 2]
    for epoch in scores.epochs():
        kl, assign = scores.read(epoch)
        assert np.isfinite(kl).all() and np.array_equal(assign, kl.argmin(1))


def test_baseline_never_scores(cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "b", method="baseline",
                    config=TrainConfig(**TINY), seed=0)
    assert all(h["phase"] == "warmup" for h in summary["history"]) and not (tmp_path / "b" / "scores.h5").exists()


def _encoder_grads(method: str, m_code: list[int], **config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(["audio", "video"], 3, width=4, fusion="concat").eval()
    inputs = {"audio": torch.randn(4, 1, 16, 24), "video": torch.randn(4, 2, 3, 24, 24)}
    out = model(inputs)
    cfg = TrainConfig(**config)
    loss = build_method(method, cfg, cfg.modalities, 3).loss(model, out, torch.tensor([0, 1, 2, 0]),
                                                             torch.tensor(m_code), None)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_baseline_heads_are_probes_that_never_move_the_encoders():
    fused_only = _encoder_grads("baseline", [-1] * 4, baseline_loss="fused")
    eq1 = _encoder_grads("baseline", [-1] * 4, baseline_loss="eq1")
    torch.manual_seed(0)  # L_fused alone, for reference
    model = build_model(["audio", "video"], 3, width=4, fusion="concat").eval()
    out = model({"audio": torch.randn(4, 1, 16, 24), "video": torch.randn(4, 2, 3, 24, 24)})
    torch.nn.functional.cross_entropy(out.fused, torch.tensor([0, 1, 2, 0])).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoders."):  # encoders: exactly the fused loss's gradient
            assert torch.allclose(fused_only[name], p.grad, atol=1e-7), name
            assert not torch.allclose(eq1[name], p.grad, atol=1e-6) or p.grad.abs().max() == 0, name
    assert all(fused_only[f"heads.{m}.weight"].abs().sum() > 0 for m in ("audio", "video"))  # the probes learn


@pytest.mark.parametrize("method", ["ogm_ge", "resample"])
def test_baseline_loss_sets_the_baseline_only(method):
    """``train.baseline_loss`` (eq. 1, the official baseline) never changes a comparison method's base loss (L_fused
    with probes, as their official code): the gradients are the same under either value (PMR: test_pmr's loss by
    hand; Greedy shares the same Method.loss)."""
    fused = _encoder_grads(method, [-1] * 4, baseline_loss="fused")
    eq1 = _encoder_grads(method, [-1] * 4, baseline_loss="eq1")
    assert fused.keys() == eq1.keys() and all(torch.equal(fused[k], eq1[k]) for k in fused)
    base = _encoder_grads("baseline", [-1] * 4, baseline_loss="eq1")
    assert any(not torch.equal(base[k], eq1[k]) for k in eq1 if k.startswith("encoders."))


def test_remix_loss_adds_only_the_assigned_modality():
    grads = _encoder_grads("remix", [0, 0, 0, 0])  # all audio: the video head gets no gradient
    assert "heads.video.weight" not in grads and grads["heads.audio.weight"].abs().sum() > 0


def test_keep_mask():
    keep = keep_mask(torch.tensor([-1, 0, 1, 2]), 3)
    assert keep.tolist() == [[True, True, True], [True, False, False], [False, True, False], [False, False, True]]


def test_masked_encoder_keeps_its_batchnorm_statistics():
    model = build_model(["audio", "video"], 3, width=4, fusion="concat").train()
    before = {k: v.clone() for k, v in model.encoders["video"].state_dict().items() if "running" in k}
    inputs = {"audio": torch.randn(2, 1, 16, 24), "video": torch.randn(2, 2, 3, 24, 24)}
    keep = torch.tensor([[True, False], [True, False]])
    with frozen_norm_stats(model, ["video"]):
        model(inputs, keep=keep, mask="input").fused.sum().backward()
    after = model.encoders["video"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.encoders["video"].training  # restored
    assert any(p.grad is not None for p in model.encoders["video"].parameters())  # gradients still flow


def test_metric_helpers():
    y, p = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    # per class F1: c0 2*1/(2+2)=0.5, c1 2*2/(3+2)=0.8, c2 0
    assert macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert imbalance_ratio({"audio": 0.9, "video": 0.5}, ["audio", "video"], 4) == pytest.approx(0.65 / 0.25)
    assert imbalance_ratio({"audio": 0.9, "video": 0.2}, ["audio", "video"], 4) == float("inf")


def _fingerprint(features):
    return dataset_fingerprint(IndexReader(features / "index.h5"))


@pytest.mark.parametrize("mask,skip,grad", [("feature", False, "none"), ("input", False, "none"),
                                            ("input", True, "none"), ("feature", False, "zero")])
def test_an_encoder_masked_for_the_whole_step_is_not_moved(cremad_raw, tmp_path_factory, tmp_path, monkeypatch,
                                                           mask, skip, grad):
    """Remix epochs of pure audio batches: with ``masked_grad: none`` the video encoder keeps its weights (no
    gradient, no momentum, no decay); with ``zero`` (official) the optimizer still moves it."""
    from train import trainer
    features = extracted_features(cremad_raw, tmp_path_factory)
    monkeypatch.setattr(remix, "assign_weakest", lambda kl: np.zeros(len(kl), np.int64))  # every sample: audio
    snapshots = []
    real_predict = trainer.predict

    def spy(model, loader, *a, **kw):  # called once per epoch for validation: snapshot the encoders then
        snapshots.append({m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in ("audio", "video")})
        return real_predict(model, loader, *a, **kw)

    monkeypatch.setattr(trainer, "predict", spy)
    cfg = TrainConfig(**{**TINY, "scoring": "online"}, mask=mask, skip_masked=skip, masked_grad=grad)
    train(index_path=features / "index.h5", out_dir=tmp_path / "r", method="remix", config=cfg, seed=0)
    after_warmup, end = snapshots[0], snapshots[-1]
    moved = [not torch.equal(a, b) for a, b in zip(after_warmup["video"], end["video"])]
    if grad == "none":
        assert not any(moved)  # no gradient: the optimizer skips it
    else:  # a zero gradient (the official code's): AdamW's decay and the warm-up's moments still move it
        assert any(moved)
    assert any(not torch.equal(a, b) for a, b in zip(after_warmup["audio"], end["audio"]))  # trained


def test_log_test_acc_logs_test_every_epoch_and_never_selects_on_it(cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "r" / "train", method="baseline",
                    config=TrainConfig(**TINY, log_test_acc=True), seed=0)
    history = summary["history"]
    assert all({"test_fused", "test_audio", "test_video"} <= row.keys() for row in history)
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "r")
    best = summary["best"]["epoch"]
    assert summary["best"]["val_fused"] == max(row["val_fused"] for row in history)  # selected on validation
    assert history[best]["test_fused"] == pytest.approx(metrics["acc_fused"])  # the same model, the same test set
    plain = train(index_path=features / "index.h5", out_dir=tmp_path / "p", method="baseline",
                  config=TrainConfig(**TINY), seed=0)
    assert [r["val_fused"] for r in plain["history"]] == [r["val_fused"] for r in history]  # changes no training
