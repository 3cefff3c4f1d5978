"""PMR (train/methods/pmr.py): prototypes are the class means (eval mode, momentum blend), the loss equals a
hand computation, the eq. 11 weights, K = 3, resume state, and tiny real training through the trainer.

Shapes: B batch, K modalities, C classes, D feature dim, N samples.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.shards import IndexReader
from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train.evaluate import evaluate
from train.methods import build_method
from train.methods.base import Context
from train.methods.pmr import PMR, pmr_weights, prototype_logits
from train.fusions.concat import ConcatFusion
from train.fusions.gated import GatedFusion
from train.models import AVModel
from train.config import TrainConfig
from train.trainer import train

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def pmr(mods=("a", "v"), num_classes: int = 2, **params) -> PMR:
    return build_method("pmr", TrainConfig(modalities=list(mods), sequential_order=[]), list(mods), num_classes, {"pmr": params})


def make_ctx(model: AVModel, method: PMR, loader=None, epoch: int = 0) -> Context:
    return Context(config=method.config, modalities=list(model.modalities), num_classes=model.num_classes,
                   device=torch.device("cpu"), model=model, n_train=0, train_labels=np.zeros(0, int),
                   loaders={"train_eval": loader} if loader is not None else {},
                   to_inputs=lambda b: {m: b[m] for m in model.modalities}, epoch=epoch)


def test_prototypes_are_class_means_in_eval_mode_then_blended():
    torch.manual_seed(0)
    # Dropout(0.5) first: only in eval mode are the features the plain affine map of the inputs
    model = AVModel({m: nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 2)) for m in ("a", "v")}, feature_dim=2,
                    num_classes=4, fusion=ConcatFusion).train()
    x = {m: torch.randn(6, 3) for m in ("a", "v")}  # [N = 6, 3]
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # class 3 absent
    loader = [{"a": x["a"][:4], "v": x["v"][:4], "label": labels[:4]},
              {"a": x["a"][4:], "v": x["v"][4:], "label": labels[4:]}]
    method = pmr(num_classes=4, momentum=0.25)
    ctx = make_ctx(model, method, loader)

    def means() -> np.ndarray:  # [K, C, D] by hand: numpy class means of x W^T + b
        out = np.zeros((2, 4, 2))
        for j, m in enumerate(("a", "v")):
            lin = model.encoders[m][1]
            h = x[m].numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
            for c in range(3):
                out[j, c] = h[labels.numpy() == c].mean(0)
        return out

    method.epoch_start(0, ctx)
    assert model.training  # train mode restored
    first = means()
    assert method.prototypes.shape == (2, 4, 2)
    np.testing.assert_allclose(method.prototypes.numpy(), first, rtol=1e-6, atol=1e-6)
    assert (method.prototypes[:, 3] == 0).all()  # no sample of class 3: zeros
    with torch.no_grad():  # the encoders move: the next epoch blends old and new means (eq. 12)
        for m in ("a", "v"):
            model.encoders[m][1].weight.mul_(2.0)
            model.encoders[m][1].bias.add_(1.0)
    method.epoch_start(1, ctx)
    expected = 0.25 * first + 0.75 * means()
    expected[:, 3] = 0  # an absent class keeps its previous prototype
    np.testing.assert_allclose(method.prototypes.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_prototypes_use_batch_statistics_as_training_and_leave_the_model_unchanged():
    """Issue 13: PCE compares training-mode features with the prototypes, so the prototype pass normalises with
    each batch's BatchNorm statistics (not the lagging running ones, as eval mode did), and leaves the running
    statistics, their count and the train/eval mode as they were."""
    torch.manual_seed(0)
    model = AVModel({m: nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for m in ("a", "v")}, feature_dim=2,
                    num_classes=2, fusion=ConcatFusion).train()
    x = {m: 3.0 + 2.0 * torch.randn(8, 3) for m in ("a", "v")}  # far from the fresh running stats (0, 1)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    loader = [{"a": x["a"][:4], "v": x["v"][:4], "label": labels[:4]},
              {"a": x["a"][4:], "v": x["v"][4:], "label": labels[4:]}]
    before = {k: b.clone() for k, b in model.named_buffers()}
    method = pmr(num_classes=2)
    method.epoch_start(0, make_ctx(model, method, loader))

    expected = np.zeros((2, 2, 2))  # [K, C, D] by hand: each batch normalised with its own mean and variance
    for j, m in enumerate(("a", "v")):
        lin, bn = model.encoders[m]
        feats = []
        for b in loader:
            h = b[m] @ lin.weight.detach().T + lin.bias.detach()  # [4, D]
            h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight.detach() + bn.bias.detach()
            feats.append(h)
        feats = torch.cat(feats).numpy()
        for c in range(2):
            expected[j, c] = feats[labels.numpy() == c].mean(0)
    np.testing.assert_allclose(method.prototypes.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert model.training and all(mod.training for mod in model.modules())
    for k, b in model.named_buffers():  # running statistics and num_batches_tracked untouched
        assert torch.equal(b, before[k]), k
    model.eval()  # a model in eval mode stays in eval mode
    method.epoch_start(1, make_ctx(model, method, loader))
    assert not any(mod.training for mod in model.modules())


def test_prototype_norm_running_is_the_official_eval_mode_pass():
    torch.manual_seed(0)
    model = AVModel({m: nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for m in ("a", "v")}, feature_dim=2,
                    num_classes=2, fusion=ConcatFusion).train()
    x = {m: 3.0 + 2.0 * torch.randn(8, 3) for m in ("a", "v")}
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    loader = [{"a": x["a"], "v": x["v"], "label": labels}]
    model.eval()
    with torch.no_grad():
        feats = model(x).features  # eval mode: BatchNorm on its running statistics
    model.train()
    method = pmr(num_classes=2, prototype_norm="running")
    method.epoch_start(0, make_ctx(model, method, loader))
    expected = np.stack([[feats[m][labels == c].mean(0).numpy() for c in range(2)] for m in ("a", "v")])
    np.testing.assert_allclose(method.prototypes.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert model.training
    with pytest.raises(ValueError, match="prototype_norm"):
        pmr(prototype_norm="eval")


def entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p)


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(t - max(z)) for t in z]
    return [t / sum(e) for t in e]


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_loss_by_hand(distance):
    model = AVModel({m: nn.Linear(2, 2) for m in ("a", "v")}, feature_dim=2, num_classes=2, fusion=ConcatFusion)
    with torch.no_grad():  # identity encoders: the features are the inputs
        for e in model.encoders.values():
            e.weight.copy_(torch.eye(2))
            e.bias.zero_()
    protos = {"a": [[0.0, 0.0], [1.0, 0.0]], "v": [[0.0, 0.0], [0.0, 2.0]]}  # [C, D] per modality
    feats = {"a": [[0.2, 0.0], [0.9, 0.1]], "v": [[0.0, 1.2], [0.0, 0.5]]}  # [B, D]
    y = [0, 1]
    method = pmr(alpha=1.5, mu=0.1, per_epochs=1, distance=distance)
    method.prototypes = torch.tensor([protos["a"], protos["v"]])  # [K, C, D]
    inputs = {m: torch.tensor(v) for m, v in feats.items()}
    out = model(inputs)
    yt = torch.tensor(y)

    def dist(h, c):
        d2 = sum((p - q) ** 2 for p, q in zip(h, c))
        return d2 if distance == "squared" else math.sqrt(d2)

    probs = {m: [softmax([-dist(h, c) for c in protos[m]]) for h in feats[m]] for m in ("a", "v")}
    s = {m: sum(p[t] for p, t in zip(probs[m], y)) for m in ("a", "v")}
    pce = {m: -sum(math.log(p[t]) for p, t in zip(probs[m], y)) / 2 for m in ("a", "v")}
    ent = {m: sum(entropy(p) for p in probs[m]) / 2 for m in ("a", "v")}
    rho = s["a"] / s["v"]  # eq. 8
    assert rho > 1  # audio leads: video gets the PCE, audio the PER, both weighted clip(rho - 1, 0, 1) (eq. 11)
    w = min(rho - 1, 1.0)
    assert (w < 1) == (distance == "euclidean")  # euclidean: unclipped; squared: clipped at 1
    base = (F.cross_entropy(out.fused, yt) + sum(F.cross_entropy(model.heads[m](out.features[m].detach()), yt)
                                                 for m in ("a", "v"))).item()
    with_per = base + 1.5 * w * pce["v"] - 0.1 * w * ent["a"]  # eqs. 10 and 13
    for epoch, expected in ((0, with_per), (1, base + 1.5 * w * pce["v"])):  # PER only in epoch 0
        loss = method.loss(model, out, yt, torch.full_like(yt, -1), make_ctx(model, method, epoch=epoch))
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert method.epoch_end(1, make_ctx(model, method)) == pytest.approx(
        {"pmr_ratio_a": rho, "pmr_ratio_v": 1 / rho, "pmr_pce_weight_a": 0.0, "pmr_pce_weight_v": w,
         "pmr_per_weight_a": w / 2, "pmr_per_weight_v": 0.0}, rel=1e-6)  # PER in 1 of the 2 steps
    # the gradient reaches the encoders, the prototypes are constants
    method.loss(model, model(inputs), yt, torch.full_like(yt, -1), make_ctx(model, method)).backward()
    assert model.encoders["v"].weight.grad.abs().sum() > 0 and not method.prototypes.requires_grad


def test_weights_eq11_and_three_modalities():
    rho, pce, per = pmr_weights(torch.tensor([1.2, 1.0], dtype=torch.float64))  # rho = 1.2 >= 1
    assert rho.tolist() == pytest.approx([1.2, 1 / 1.2])
    assert pce.tolist() == pytest.approx([0.0, 0.2]) and per.tolist() == pytest.approx([0.2, 0.0])
    rho, pce, per = pmr_weights(torch.tensor([1.0, 4.0], dtype=torch.float64))  # rho = 0.25: clipped at 1
    assert pce.tolist() == pytest.approx([1.0, 0.0]) and per.tolist() == pytest.approx([0.0, 1.0])
    rho, pce, per = pmr_weights(torch.tensor([3.0, 2.0, 1.2], dtype=torch.float64))  # each vs the others' mean
    assert rho.tolist() == pytest.approx([3 / 1.6, 2 / 2.1, 1.2 / 2.5])
    assert pce.tolist() == pytest.approx([0.0, 2.1 / 2 - 1, 1.0]) and per.tolist() == pytest.approx([3 / 1.6 - 1, 0, 0])
    torch.manual_seed(0)
    model = AVModel({m: nn.Linear(3, 4) for m in ("a", "v", "w")}, feature_dim=4, num_classes=3, fusion=GatedFusion)
    method = pmr(("a", "v", "w"), num_classes=3)
    method.prototypes = torch.randn(3, 3, 4)
    y = torch.tensor([0, 1, 2, 1])
    loss = method.loss(model, model({m: torch.randn(4, 3) for m in ("a", "v", "w")}), y, torch.full_like(y, -1),
                       make_ctx(model, method))
    assert torch.isfinite(loss) and set(method.epoch_end(0, make_ctx(model, method))) == {
        f"pmr_{k}_{m}" for k in ("ratio", "pce_weight", "per_weight") for m in ("a", "v", "w")}


def test_logits_are_negative_distances():
    h, c = torch.tensor([[3.0, 4.0]], requires_grad=True), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    logits = prototype_logits(h, c)  # [B = 1, C = 2]
    assert logits[0].tolist() == pytest.approx([-5.0, 0.0], abs=1e-5)
    assert prototype_logits(h, c, "squared")[0].tolist() == [-25.0, 0.0]
    logits.sum().backward()  # h sits on a prototype: still a finite gradient (d -5 / dh only)
    assert h.grad[0].tolist() == pytest.approx([-0.6, -0.8])


def test_params_checked_state_round_trip_and_no_prototypes():
    with pytest.raises(ValueError, match="distance"):
        pmr(distance="cosine")
    with pytest.raises(ValueError, match="momentum"):
        pmr(momentum=1.0)
    method = pmr()
    model = AVModel({m: nn.Linear(2, 2) for m in ("a", "v")}, feature_dim=2, num_classes=2, fusion=ConcatFusion)
    y = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match="no prototypes"):
        method.loss(model, model({m: torch.randn(2, 2) for m in ("a", "v")}), y, y, make_ctx(model, method))
    method.prototypes = torch.randn(2, 2, 2)
    method.stats["steps"] = 3
    fresh = pmr()
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.prototypes, method.prototypes) and fresh.stats == method.stats
    empty = pmr()
    empty.load_state_dict(pmr().state_dict())
    assert empty.prototypes is None


def test_trains_and_evaluates(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, method_params={"pmr": {"alpha": 1.0, "mu": 0.01, "per_epochs": 2}})
    seen = []  # the prototypes of every epoch start
    real = PMR.epoch_start
    monkeypatch.setattr(PMR, "epoch_start", lambda self, epoch, ctx: (real(self, epoch, ctx),
                                                                      seen.append(self.prototypes.clone()))[0])
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "pmr" / "train", method="pmr",
                    config=cfg, seed=0)
    index = IndexReader(features / "index.h5")
    present = np.isin(np.arange(len(index.class_names)), index.label[index.indices("train")])  # [C]
    assert len(seen) == 3 and all(p.shape == (2, len(present), 32) for p in seen)  # [K, C, D = 8 * width]
    for p in seen:  # classes without a training sample keep zero prototypes, the others are class means
        assert (p[:, ~present] == 0).all() and (p[:, present] != 0).any(-1).all()
    assert not torch.equal(seen[0], seen[1])  # recomputed after the encoders moved
    rows = summary["history"]
    for row in rows:
        ratio = row["pmr_ratio_audio"], row["pmr_ratio_video"]
        assert all(r > 0 for r in ratio) and np.isfinite(row["loss"])
        assert 0 <= row["pmr_pce_weight_audio"] <= 1 and 0 <= row["pmr_pce_weight_video"] <= 1
    assert rows[2]["pmr_per_weight_audio"] == rows[2]["pmr_per_weight_video"] == 0.0  # PER in epochs 0, 1 only
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "pmr")
    assert metrics["method"] == "pmr" and metrics["epoch"] == summary["best"]["epoch"]
    assert json.loads((tmp_path / "pmr" / "metrics.json").read_text()) == metrics


def test_exact_resume_mid_epoch(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    """Killed in the middle of epoch 1 (after its prototypes were computed) and resumed: the same run."""
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, method_params={"pmr": {"mu": 0.01, "per_epochs": 2}})
    starts = []

    def count_epoch_starts(_run_dir):  # from here on: the epochs whose prototypes the rerun computes
        real = PMR.epoch_start
        monkeypatch.setattr(PMR, "epoch_start",
                            lambda self, epoch, ctx: (starts.append(epoch), real(self, epoch, ctx))[1])

    # stopped at the second step of epoch 1: its state was saved after the first
    interrupted_then_resumed(features, tmp_path, "pmr", PMR, cfg, 3, monkeypatch, before_resume=count_epoch_starts)
    assert starts == [2]  # epoch 1 was resumed with the saved prototypes, not recomputed