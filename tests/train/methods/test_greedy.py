"""Greedy (Wu et al., ICML 2022): conditional learning speeds from hand-set gradients, the switch rule,
the running-average excitation of the re-balancing steps, resume state, and tiny real training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.train.test_data import extracted_features
from train.evaluate import evaluate
from train.methods import Context, build_method
from train.fusions import build_model
from train.config import TrainConfig
from train.trainer import train

W, C, B = 2, 3, 2
MODS = ["audio", "video"]
TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, 1, 16, 24, generator=g), "video": torch.randn(B, 2, 3, 24, 24, generator=g)}


def setup(params: dict | None = None, **config):
    torch.manual_seed(0)
    cfg = TrainConfig(fusion="mmtm", **config)
    method = build_method("greedy", cfg, MODS, C, {"greedy": params or {}})
    model = method.prepare_model(build_model(MODS, C, width=W, fusion="mmtm"))
    ctx = Context(config=cfg, modalities=MODS, num_classes=C, device=torch.device("cpu"), model=model, n_train=8,
                  train_labels=np.zeros(8, dtype=np.int64))
    return method, model, ctx


def groups(model):
    """(audio trunk, video trunk, shared squeeze FCs, audio excitation FCs, video excitation FCs)."""
    mm = list(model.mmtm.values())
    return (list(model.encoders["audio"].parameters()), list(model.encoders["video"].parameters()),
            [p for m in mm for p in m.squeeze.parameters()], [p for m in mm for p in m.excite["audio"].parameters()],
            [p for m in mm for p in m.excite["video"].parameters()])


def set_grads(model, r_audio, r_video, r_squeeze, r_exc_audio, r_exc_video) -> None:
    """grad = r * theta per group: mu = ||g||^2 / ||theta||^2 = r^2 whatever the group's size."""
    for params, r in zip(groups(model), (r_audio, r_video, r_squeeze, r_exc_audio, r_exc_video)):
        for p in params:
            p.grad = r * p.detach().clone()


def step(method, model, ctx, rates, seed=0):
    """One hooked step: forward (re-balancing applied), hand-set gradients, modulate_gradients."""
    out = method.forward(model, inputs(seed), keep=None, mask="feature", skip_masked=False, ctx=ctx)
    set_grads(model, *rates)
    method.modulate_gradients(model, out, torch.zeros(B, dtype=torch.long), torch.full((B,), -1), ctx)
    return out


def test_needs_mmtm():
    with pytest.raises(ValueError, match="train.fusion"):
        build_method("greedy", TrainConfig(fusion="concat"), MODS, C)
    method = build_method("greedy", TrainConfig(fusion="mmtm"), MODS, C)
    with pytest.raises(ValueError, match="MMTM"):
        method.prepare_model(build_model(MODS, C, width=W, fusion="centralnet"))
    with pytest.raises(ValueError, match="window"):
        build_method("greedy", TrainConfig(fusion="mmtm"), MODS, C, {"greedy": {"window": 0}})


def test_speeds_from_hand_set_gradients_accumulate_over_steps():
    method, model, ctx = setup({"threshold": 100.0})  # never switches
    # bypass_audio = squeeze + excite[audio]: both r = 3 -> mu 9; bypass_video: squeeze 3, excite[video] 3 -> 9
    step(method, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0))
    assert method.m_main == pytest.approx([4.0, 1.0]) and method.m_bypass == pytest.approx([9.0, 9.0])
    assert method.speeds == pytest.approx([math.log10(9 / 4), math.log10(9 / 1)])
    # second step: audio trunk r = 1 (mu 1), video r = 2 (mu 4); bypass with every MMTM r = 1 -> 1
    step(method, model, ctx, (1.0, 2.0, 1.0, 1.0, 1.0), seed=1)
    assert method.m_main == pytest.approx([5.0, 5.0]) and method.m_bypass == pytest.approx([10.0, 10.0])
    assert method.speeds == pytest.approx([math.log10(2), math.log10(2)])
    # a bypass group mixing rates: the shared squeeze's and the excitation's squared norms add up
    sq, ea = groups(model)[2], groups(model)[3]
    w_sq, w_ea = sum(p.detach().square().sum() for p in sq), sum(p.detach().square().sum() for p in ea)
    set_grads(model, 1.0, 1.0, 2.0, 0.0, 0.0)
    mu_main, mu_bypass = method.step_mu(model)
    assert mu_bypass[0] == pytest.approx(float(4 * w_sq / (w_sq + w_ea)), rel=1e-6)
    assert mu_main == pytest.approx([1.0, 1.0])


def test_switch_rule_window_and_start_epoch():
    method, model, ctx = setup({"threshold": 0.5, "window": 2, "start_epoch": 1})
    ctx.epoch = 0
    step(method, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0))  # s = [0.352, 0.954]: difference 0.602 > 0.5
    assert method.caring == -1  # before start_epoch: no switch
    ctx.epoch = 1
    step(method, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0))
    assert method.speeds[1] - method.speeds[0] == pytest.approx(math.log10(4)) and method.caring == 1  # video
    before = (list(method.m_main), list(method.m_bypass))
    for _ in range(2):  # two re-balancing steps: the speeds are not updated
        assert method.caring == 1
        step(method, model, ctx, (1.0, 5.0, 1.0, 1.0, 1.0))
        assert (method.m_main, method.m_bypass) == before
    assert method.caring == -1 and method.left == 0
    # a normal step again, the video trunk now fast: m_main = [12, 102], m_bypass = [19, 19],
    # s_audio - s_video = log10(19/12) - log10(19/102) = log10(8.5) > 0.5: audio is re-balanced
    step(method, model, ctx, (2.0, 10.0, 1.0, 1.0, 1.0))
    assert method.m_main == pytest.approx([12.0, 102.0]) and method.m_bypass == pytest.approx([19.0, 19.0])
    assert method.caring == 0
    end = method.epoch_end(1, ctx)
    assert end["greedy_rebalance_frac"] == pytest.approx(2 / 5) and end["greedy_rebalance_video"] == pytest.approx(2 / 5)
    assert end["greedy_rebalance_audio"] == 0.0 and end["greedy_speed_audio"] == pytest.approx(method.speeds[0])
    method.epoch_start(2, ctx)
    assert method.epoch_end(2, ctx)["greedy_rebalance_frac"] == 0.0

    small, *_ = setup({"threshold": 0.7, "start_epoch": 0})  # 0.602 < 0.7: no switch
    step(small, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0))
    assert small.caring == -1


def test_rebalancing_replaces_the_excitation_by_its_running_average():
    method, model, ctx = setup({"threshold": 0.0, "window": 1, "start_epoch": 0})
    ctx.all_sum = lambda t: 2 * t  # two identical ranks: sums and counts both double, the mean is unchanged
    model.eval()  # BatchNorm in eval: the forward is a function of the input only
    a = step(method, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0), seed=0)
    assert method.caring == 1  # video re-balanced next
    expected = [s.double().mean(0) for s in a.scales["video"]]  # [C_i] per MMTM stage
    assert all(torch.allclose(x, e) for x, e in zip(method.avg_scales["video"], expected))
    assert method.avg_count == [2.0 * B, 2.0 * B]
    b = step(method, model, ctx, (1.0, 1.0, 1.0, 1.0, 1.0), seed=1)  # the re-balancing step
    with torch.no_grad():
        ref = model(inputs(1), excitation_override={"video": [e.float() for e in expected]})
        plain = model(inputs(1))
    for m in MODS:  # the re-balancing forward is the model's with the video excitation overridden
        torch.testing.assert_close(b.features[m], ref.features[m])
    assert not torch.allclose(b.features["video"], plain.features["video"])
    # audio's MMTM stays live: its first excitation (before any overridden map) is the plain one, and not constant
    torch.testing.assert_close(b.scales["audio"][0], plain.scales["audio"][0])
    assert not torch.allclose(b.scales["audio"][0][0], b.scales["audio"][0][1])
    # the running mean now covers both steps (computed, not overridden, excitations)
    both = [(x.double().sum(0) + y.double().sum(0)) / (2 * B) for x, y in zip(a.scales["video"], b.scales["video"])]
    assert all(torch.allclose(x, e) for x, e in zip(method.avg_scales["video"], both))
    assert method.caring == -1  # window 1: back to normal steps, the next one decides afresh


def test_state_dict_round_trip_continues_identically():
    method, model, ctx = setup({"threshold": 0.1, "window": 3, "start_epoch": 0})
    model.eval()
    step(method, model, ctx, (2.0, 1.0, 3.0, 3.0, 3.0))
    step(method, model, ctx, (1.0, 1.0, 1.0, 1.0, 1.0), seed=1)
    saved = method.state_dict()
    clone, *_ = setup({"threshold": 0.1, "window": 3, "start_epoch": 0})
    clone.load_state_dict(saved)
    for seed, rates in [(2, (1.0, 2.0, 1.0, 1.0, 1.0)), (3, (3.0, 1.0, 1.0, 2.0, 1.0)), (4, (1.0, 1.0, 2.0, 1.0, 1.0))]:
        x = step(method, model, ctx, rates, seed)
        y = step(clone, model, ctx, rates, seed)
        assert torch.equal(x.fused, y.fused)
    assert clone.state_dict()["m_main"] == method.state_dict()["m_main"]
    assert (clone.caring, clone.left, clone.epoch_rebalance) == (method.caring, method.left, method.epoch_rebalance)


def test_tiny_training_greedy(cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, fusion="mmtm", method_params={"greedy": {"threshold": 0.0, "window": 1,
                                                                       "start_epoch": 0}})
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "greedy" / "train", method="greedy",
                    config=cfg, seed=0)
    rows = summary["history"]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    assert all(0 < r["greedy_rebalance_frac"] <= 0.5 for r in rows)  # window 1: at most every other step
    assert all(math.isfinite(r["greedy_speed_audio"]) and math.isfinite(r["greedy_speed_video"]) for r in rows)
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / "greedy")
    assert metrics["method"] == "greedy" and 0 <= metrics["acc_fused"] <= 1
