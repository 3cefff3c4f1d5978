"""OGM-GE (train/methods/ogm_ge.py): hand-computed scores, ratios and coefficients on a fixed-weight toy model,
exact gradient scaling, GE noise statistics, K = 3, resume state, and tiny real training through the trainer.

Shapes: B batch, K modalities, C classes, D feature dim.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train.evaluate import evaluate
from train.methods import build_method
from train.methods.base import Context
from train.methods.ogm_ge import OGMGE, coefficients, discrepancy_ratio, modality_logits
from train.fusions import registry
from train.fusions.concat import ConcatFusion
from train.fusions.gated import GatedFusion
from train.models import AVModel
from train.config import TrainConfig
from train.trainer import train

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def make_ctx(model: AVModel, cfg: TrainConfig, *, epoch: int = 0, global_step: int = 0) -> Context:
    return Context(config=cfg, modalities=list(model.modalities), num_classes=model.num_classes,
                   device=torch.device("cpu"), model=model, n_train=0, train_labels=np.zeros(0, int),
                   epoch=epoch, global_step=global_step)


def fixed_toy(fusion: str = "concat") -> tuple[AVModel, dict[str, torch.Tensor], torch.Tensor]:
    """K = 2 (a, v), D = 1, C = 2, identity encoders; the concat head W = [[2, -1], [0, 1]], b = [0.4, -0.2]."""
    encoders = {m: nn.Linear(1, 1, bias=False) for m in ("a", "v")}
    model = AVModel(encoders, feature_dim=1, num_classes=2, fusion=registry()[fusion])
    with torch.no_grad():
        for e in encoders.values():
            e.weight.fill_(1.0)
        if fusion == "concat":
            model.fusion.fc.weight.copy_(torch.tensor([[2.0, -1.0], [0.0, 1.0]]))
            model.fusion.fc.bias.copy_(torch.tensor([0.4, -0.2]))
    inputs = {"a": torch.tensor([[1.0], [0.5]]), "v": torch.tensor([[-1.0], [2.0]])}  # [B=2, 1]
    return model, inputs, torch.tensor([0, 1])


def ogm(mods, **params) -> OGMGE:
    cfg = TrainConfig(modalities=list(mods), sequential_order=[])
    return build_method("ogm_ge", cfg, list(mods), 2, {"ogm_ge": params})


def test_scores_ratio_and_coefficient_by_hand():
    model, inputs, y = fixed_toy()
    method = ogm(["a", "v"], alpha=0.8)
    scores, rho, k = method.step_coefficients(model, model(inputs), y, make_ctx(model, method.config))
    # out_a = [2 h_a + 0.2, -0.1], out_v = [-h_v + 0.2, h_v - 0.1]; softmax of two logits = sigmoid of their difference
    s_a = sigmoid(2.2 - -0.1) + sigmoid(-0.1 - 1.2)  # h_a = 1 (y = 0), h_a = 0.5 (y = 1)
    s_v = sigmoid(1.2 - -1.1) + sigmoid(1.9 - -1.8)  # h_v = -1 (y = 0), h_v = 2 (y = 1)
    rho_v = s_v / s_a
    assert scores.tolist() == pytest.approx([s_a, s_v], abs=1e-6)
    assert rho.tolist() == pytest.approx([1 / rho_v, rho_v], rel=1e-6)
    assert rho_v > 1  # video dominates: only its encoder is slowed, by paper eq. 10
    assert k.tolist() == pytest.approx([1.0, 1 - math.tanh(0.8 * rho_v)], rel=1e-6)
    shift = coefficients(rho, 0.8, "tanh_shift")
    inverse = coefficients(rho, 0.8, "inverse")
    assert shift.tolist() == pytest.approx([1.0, 1 - math.tanh(0.8 * (rho_v - 1))], rel=1e-6)
    assert inverse.tolist() == pytest.approx([1.0, 1 / (1 + 0.8 * (rho_v - 1))], rel=1e-6)
    assert coefficients(rho, 1.0, "inverse")[1].item() == pytest.approx(1 / rho_v, rel=1e-6)  # alpha 1: 1 / rho


@pytest.mark.parametrize("fusion", ["concat", "sum", "decision"])
def test_additive_fusions_split_exactly(fusion):
    torch.manual_seed(0)
    model = AVModel({m: nn.Linear(3, 4) for m in ("a", "v", "w")}, feature_dim=4, num_classes=5, fusion=registry()[fusion])
    out = model({m: torch.randn(6, 3) for m in ("a", "v", "w")})
    shares = modality_logits(model, out.features)
    assert torch.allclose(sum(shares.values()), out.fused, atol=1e-5)  # the shares add up to the fused logits
    if fusion == "sum":
        assert torch.allclose(shares["v"], model.fusion.fc["v"](out.features["v"]))


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_other_fusions_zero_the_other_modalities(fusion):
    torch.manual_seed(0)
    model = AVModel({m: nn.Linear(3, 4) for m in ("a", "v")}, feature_dim=4, num_classes=5, fusion=registry()[fusion])
    x = {m: torch.randn(6, 3) for m in ("a", "v")}
    shares = modality_logits(model, model(x).features)
    for m in ("a", "v"):
        assert torch.allclose(shares[m], model.predict_dropout(x, m), atol=1e-6)


def grads(model: AVModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def backward(method: OGMGE, model: AVModel, inputs, y, ctx):
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    method.loss(model, out, y, torch.full_like(y, -1), ctx).backward()
    return out


def test_gradients_scaled_exactly_by_k_without_ge():
    model, inputs, y = fixed_toy()
    method = ogm(["a", "v"], alpha=0.8, ge=False)
    ctx = make_ctx(model, method.config)
    out = backward(method, model, inputs, y, ctx)
    before = grads(model)
    _, rho, k = method.step_coefficients(model, out, y, ctx)
    method.modulate_gradients(model, out, y, None, ctx)
    after = grads(model)
    assert after.keys() == before.keys()
    assert 0 < k[1] < 1 and k[0] == 1
    for name, g in before.items():
        if name.startswith("encoders.v."):
            assert torch.equal(after[name], g * k[1].float()) and not torch.equal(after[name], g)
        else:  # the weaker encoder, the heads and the fusion head keep their gradients
            assert torch.equal(after[name], g), name
    assert method.epoch_end(0, ctx) == pytest.approx({"ogm_coeff_a": 1.0, "ogm_coeff_v": k[1].item(),
                                                      "ogm_ratio_a": rho[0].item(), "ogm_ratio_v": rho[1].item()})


def wide_toy(mods=("a", "v"), seed: int = 0) -> tuple[AVModel, dict[str, torch.Tensor], torch.Tensor]:
    """Encoders Linear(50, 20): 1000 weights each; C = 3, B = 16 random samples."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AVModel({m: nn.Linear(50, 20) for m in mods}, feature_dim=20, num_classes=3, fusion=ConcatFusion)
    inputs = {m: torch.randn(16, 50, generator=g) for m in mods}
    return model, inputs, torch.randint(0, 3, (16,), generator=g)


def test_ge_noise_has_the_gradient_std_and_is_reproducible():
    model, inputs, y = wide_toy()
    method = ogm(["a", "v"], alpha=0.8, ge=True)
    method.seed = 123
    ctx = make_ctx(model, method.config, global_step=7)
    out = backward(method, model, inputs, y, ctx)
    before = grads(model)
    _, _, k = method.step_coefficients(model, out, y, ctx)
    assert (k < 1).sum() == 1  # one modality dominates
    method.modulate_gradients(model, out, y, None, ctx)
    first = grads(model)
    for j, m in enumerate(("a", "v")):  # every encoder gets noise, the dominant one after scaling by k
        for name in (f"encoders.{m}.weight", f"encoders.{m}.bias"):
            g = before[name]
            noise = first[name] - g * k[j].float()
            n = noise.numel()
            assert noise.std().item() == pytest.approx(g.std().item(), rel=0.1 if n >= 1000 else 0.5)
            assert abs(noise.mean().item()) < 4 * g.std().item() / math.sqrt(n)
    for name in ("heads.a.weight", "fusion.fc.weight", "fusion.fc.bias"):
        assert torch.equal(first[name], before[name])
    # the same seed and step: the same noise; another step: other noise
    for step, same in ((7, True), (8, False)):
        for n, p in model.named_parameters():
            p.grad = before[n].clone()
        method.modulate_gradients(model, out, y, None, make_ctx(model, method.config, global_step=step))
        again = grads(model)
        assert torch.equal(again["encoders.a.weight"], first["encoders.a.weight"]) == same


def test_inactive_window_leaves_gradients_untouched():
    model, inputs, y = wide_toy()
    method = ogm(["a", "v"], ge=True, start_epoch=1, end_epoch=3)
    for epoch, active in ((0, False), (1, True), (2, True), (3, False)):
        ctx = make_ctx(model, method.config, epoch=epoch)
        method.epoch_start(epoch, ctx)
        out = backward(method, model, inputs, y, ctx)
        before = grads(model)
        method.modulate_gradients(model, out, y, None, ctx)
        unchanged = all(torch.equal(g, grads(model)[n]) for n, g in before.items())
        assert unchanged == (not active), epoch
        row = method.epoch_end(epoch, ctx)
        assert (min(row["ogm_coeff_a"], row["ogm_coeff_v"]) < 1) == active  # the applied coefficient, 1 outside


def test_conv_only_leaves_linear_encoders_alone():
    model, inputs, y = wide_toy()
    method = ogm(["a", "v"], ge=True, params="conv")
    ctx = make_ctx(model, method.config)
    out = backward(method, model, inputs, y, ctx)
    before = grads(model)
    method.modulate_gradients(model, out, y, None, ctx)
    assert all(torch.equal(g, grads(model)[n]) for n, g in before.items())  # no 4-D weight in this model


def test_three_modalities():
    scores = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    rho = discrepancy_ratio(scores)  # each against the mean of the other two
    assert rho.tolist() == pytest.approx([3 / 1.5, 2 / 2, 1 / 2.5])
    assert coefficients(rho, 0.5, "tanh").tolist() == pytest.approx([1 - math.tanh(0.5 * 2.0), 1.0, 1.0])
    model, inputs, y = wide_toy(("a", "v", "w"), seed=1)
    method = ogm(["a", "v", "w"], alpha=0.5, ge=False)
    ctx = make_ctx(model, method.config)
    out = backward(method, model, inputs, y, ctx)
    before = grads(model)
    scores, rho, k = method.step_coefficients(model, out, y, ctx)
    others = [(scores.sum() - scores[j]) / 2 for j in range(3)]
    assert rho.tolist() == pytest.approx([(scores[j] / others[j]).item() for j in range(3)])
    assert (k < 1).any()
    method.modulate_gradients(model, out, y, None, ctx)
    for j, m in enumerate(("a", "v", "w")):
        assert torch.equal(grads(model)[f"encoders.{m}.weight"], before[f"encoders.{m}.weight"] * k[j].float())


def test_params_checked_and_state_round_trip():
    with pytest.raises(ValueError, match="coeff"):
        ogm(["a", "v"], coeff="bogus")
    with pytest.raises(ValueError, match="unknown key"):
        ogm(["a", "v"], beta=1.0)
    with pytest.raises(ValueError, match="start_epoch"):
        ogm(["a", "v"], start_epoch=4, end_epoch=2)
    model, inputs, y = wide_toy()
    method = ogm(["a", "v"])
    method.seed = 99
    ctx = make_ctx(model, method.config)
    method.modulate_gradients(model, backward(method, model, inputs, y, ctx), y, None, ctx)
    fresh = ogm(["a", "v"])
    fresh.load_state_dict(method.state_dict())
    assert fresh.seed == 99 and fresh.epoch_end(0, ctx) == method.epoch_end(0, ctx)


def test_trains_and_evaluates(cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, method_params={"ogm_ge": {"alpha": 0.8, "end_epoch": 2}})
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "ogm" / "train", method="ogm_ge",
                    config=cfg, seed=0)
    rows = summary["history"]
    assert len(rows) == 3
    for row in rows[:2]:  # modulated: one modality's mean coefficient below 1 (K = 2: the dominant one each step)
        assert 0 < min(row["ogm_coeff_audio"], row["ogm_coeff_video"]) < 1
        assert max(row["ogm_coeff_audio"], row["ogm_coeff_video"]) <= 1
    assert rows[2]["ogm_coeff_audio"] == rows[2]["ogm_coeff_video"] == 1.0  # epoch 2 is outside the window
    assert all(np.isfinite(r["loss"]) and r["ogm_ratio_audio"] > 0 for r in rows)
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "ogm")
    assert metrics["method"] == "ogm_ge" and metrics["epoch"] == summary["best"]["epoch"]
    assert json.loads((tmp_path / "ogm" / "metrics.json").read_text()) == metrics
    assert 0 <= metrics["acc_fused"] <= 1


def test_exact_resume_mid_epoch(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    """Killed in the middle of epoch 1 and resumed: the same run (GE noise, coefficient means and all).
    Seed 3: the noise seed (the run's torch seed) differs from the method's default 0."""
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, method_params={"ogm_ge": {"alpha": 0.8}})
    # stopped at the second step of epoch 1: its state was saved after the first
    whole = interrupted_then_resumed(features, tmp_path, "ogm_ge", OGMGE, cfg, 3, monkeypatch, seed=3)
    assert whole["history"][1]["ogm_coeff_audio"] != 1.0 or whole["history"][1]["ogm_coeff_video"] != 1.0


def test_head_without_shares_fails_at_build():
    class Hidden(nn.Module):  # a fused head without modality_shares (not one of train.fusions' heads)
        def forward(self, feats):
            return sum(feats.values())

    model = AVModel({m: nn.Linear(3, 2) for m in ("a", "v")}, feature_dim=2, num_classes=2, fusion=ConcatFusion)
    model.fusion = Hidden()
    with pytest.raises(ValueError, match="no per-modality share of the Hidden head"):
        ogm(["a", "v"]).prepare_model(model)
    plain = AVModel({m: nn.Linear(3, 2) for m in ("a", "v")}, feature_dim=2, num_classes=2, fusion=GatedFusion)
    assert ogm(["a", "v"]).prepare_model(plain) is plain
