"""MLA and mla_remix: tied head, alternation, OWM projection, entropy fusion, tiny real training and resume.

Shapes: B batch, K modalities, C classes, D feature dim.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train import evaluate as evaluate_mod
from train.evaluate import evaluate
from train.methods import Context, build_method
from train.methods.mla import MLA, MLARemix
from train.fusions import build_model
from train.fusions.concat import ConcatFusion
from train.models import AVModel, ModelOutput
from train.checkpoint import RESUME, default_work_dir
from train.config import TrainConfig
from train.methods.remix import Remixing
from train.trainer import train

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def toy(names: list[str], d: int = 3, c: int = 2, identity: bool = False) -> AVModel:
    """K Linear(4 or D, D) encoders (identity weights: features = inputs), heads Linear(D, C)."""
    torch.manual_seed(0)
    encs = {}
    for m in names:
        lin = nn.Linear(d if identity else 4, d, bias=not identity)
        if identity:
            nn.init.eye_(lin.weight)
        encs[m] = lin
    return AVModel(encs, feature_dim=d, num_classes=c, fusion=ConcatFusion)


def context(model: AVModel, names: list[str], all_sum=lambda t: t) -> Context:
    return Context(config=TrainConfig(modalities=["audio", "video"]), modalities=names, num_classes=model.num_classes,
                   device=torch.device("cpu"), model=model, n_train=8, train_labels=np.zeros(8, np.int64),
                   all_sum=all_sum)


def one_step(method, model, ctx, inputs, y, keep=None) -> list[str]:
    """One trainer-like step (no optimizer); the modalities whose encoder got a gradient."""
    for p in model.parameters():
        p.grad = None
    out = method.forward(model, inputs, keep=keep, mask="feature", skip_masked=False, ctx=ctx)
    method.loss(model, out, y, torch.full_like(y, -1), ctx).backward()
    method.modulate_gradients(model, out, y, torch.full_like(y, -1), ctx)
    return [m for m in model.modalities if any(p.grad is not None for p in model.encoders[m].parameters())]


# -- the shared head ---------------------------------------------------------------------------

def test_heads_are_tied_and_state_dict_round_trips():
    cfg = TrainConfig(**TINY)
    method = MLA(cfg, ["audio", "video"], 3)
    torch.manual_seed(0)
    n_plain = len(list(build_model(["audio", "video"], 3, width=4).parameters()))
    model = method.prepare_model(build_model(["audio", "video"], 3, width=4))
    assert model.heads["audio"] is model.heads["video"]
    assert len(list(model.parameters())) == n_plain - 2  # one Linear(D, C) fewer: weight and bias
    state = model.state_dict()
    assert torch.equal(state["heads.audio.weight"], state["heads.video.weight"])
    torch.manual_seed(1)
    fresh = method.prepare_model(build_model(["audio", "video"], 3, width=4))
    assert not torch.equal(fresh.heads["audio"].weight, model.heads["audio"].weight)
    fresh.load_state_dict(state)  # strict
    assert fresh.heads["audio"] is fresh.heads["video"]
    assert torch.equal(fresh.heads["video"].weight, model.heads["audio"].weight)
    with torch.no_grad():
        fresh.heads["audio"].bias.add_(1.0)
    assert torch.equal(fresh.heads["video"].bias, model.heads["audio"].bias + 1.0)  # still one module


def test_registered_with_params_and_rejects_bad_settings():
    cfg = TrainConfig(**TINY)
    m = build_method("mla", cfg, ["audio", "video"], 3, {"mla": {"alpha": 2, "feature_stat": "covariance"}})
    assert type(m) is MLA and m.params.alpha == 2.0 and m.params.feature_stat == "covariance" and not isinstance(m, Remixing)
    r = build_method("mla_remix", cfg, ["audio", "video"], 3, {})
    assert type(r) is MLARemix and isinstance(r, Remixing)
    with pytest.raises(ValueError, match="alpha"):
        build_method("mla", cfg, ["audio", "video"], 3, {"mla": {"alpha": 0.0}})
    with pytest.raises(ValueError, match="feature_stat"):
        build_method("mla", cfg, ["audio", "video"], 3, {"mla": {"feature_stat": "median"}})
    with pytest.raises(ValueError, match="ablation"):
        MLARemix(TrainConfig(**TINY, ablation="decouple"), ["audio", "video"], 3)
    with pytest.raises(ValueError, match="unimodal_pred"):
        MLA(TrainConfig(**TINY, unimodal_pred="dropout"), ["audio", "video"], 3)
    with pytest.raises(ValueError, match=">= 2 modalities"):
        MLA(cfg, ["audio"], 3)


# -- alternation ---------------------------------------------------------------------------------

def test_alternation_order_and_untrained_encoders_have_no_grad():
    names = ["a", "b", "c"]
    model = toy(names)
    method = MLA(TrainConfig(**TINY), names, 2)
    method.prepare_model(model)
    ctx = context(model, names)
    inputs = {m: torch.randn(5, 4) for m in names}
    y = torch.tensor([0, 1, 0, 1, 1])
    before = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in names}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    trained = []
    for s in range(6):
        ctx.global_step = s
        opt.zero_grad(set_to_none=True)
        got = one_step(method, model, ctx, inputs, y)
        trained.append(got)
        assert all(p.grad is None for m in names if m not in got for p in model.encoders[m].parameters())
        assert all(p.grad is None for p in model.fusion.parameters())  # the fusion head is never trained
        opt.step()
        if s == 0:  # AdamW with weight decay did not move the encoders without a gradient
            assert all(torch.equal(p, q) for m in ("b", "c") for p, q in zip(model.encoders[m].parameters(), before[m]))
            assert not torch.equal(model.encoders["a"].weight, before["a"][0])
    assert trained == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]]
    assert method.steps == [2, 2, 2]
    assert method.epoch_end(0, ctx) == {"mla_steps_a": 2.0, "mla_steps_b": 2.0, "mla_steps_c": 2.0}


def test_mla_remix_trains_the_assigned_modality_in_the_remix_phase():
    names = ["a", "b"]
    model = toy(names)
    method = MLARemix(TrainConfig(**TINY), names, 2)
    method.prepare_model(model)
    ctx = context(model, names)
    inputs = {m: torch.randn(4, 4) for m in names}
    y = torch.tensor([0, 1, 0, 1])
    got = []
    for s in range(2):  # warm-up: alternation as MLA
        ctx.global_step = s
        got.append(one_step(method, model, ctx, inputs, y))
    ctx.phase = "remix"
    for s, j in zip(range(2, 6), [1, 1, 0, 1]):  # remix: the batch's modality, whatever the step
        ctx.global_step = s
        keep = torch.zeros(4, 2, dtype=torch.bool)
        keep[:, j] = True
        got.append(one_step(method, model, ctx, inputs, y, keep=keep))
    assert got == [["a"], ["b"], ["b"], ["b"], ["a"], ["b"]]
    mixed = torch.tensor([[True, False], [False, True], [True, False], [True, False]])
    with pytest.raises(ValueError, match="modality-pure"):
        one_step(method, model, ctx, inputs, y, keep=mixed)


# -- the gradient projection ------------------------------------------------------------------

def hand_projector(cols: list[np.ndarray], alpha: float) -> np.ndarray:
    """P = I - A (A^T A + alpha I)^-1 A^T, A [D, n] with the given columns."""
    a = np.stack(cols, axis=1)
    return np.eye(a.shape[0]) - a @ np.linalg.inv(a.T @ a + alpha * np.eye(a.shape[1])) @ a.T


@pytest.mark.parametrize("stat", ["mean", "covariance"])
def test_projection_matches_the_hand_computed_projector(stat):
    names = ["a", "b"]
    alpha = 1e-6
    model = toy(names, d=3, c=2, identity=True)  # features = inputs
    method = MLA(TrainConfig(**TINY), names, 2, MLA.Params(alpha=alpha, feature_stat=stat))
    method.prepare_model(model)
    ctx = context(model, names)
    y = torch.tensor([0, 1])
    x = [torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0]]),
         torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.0, 2.0]])]

    def columns(feats: torch.Tensor) -> list[np.ndarray]:  # what one step adds to its modality's subspace
        f = feats.double().numpy()
        return [f.mean(0)] if stat == "mean" else [row / np.sqrt(len(f)) for row in f]

    seen = {"a": [], "b": []}
    head = model.heads["a"]
    for s in range(4):
        ctx.global_step = s
        k, other = names[s % 2], names[1 - s % 2]
        inputs = {m: x[s] for m in names}
        for p in model.parameters():
            p.grad = None
        out = method.forward(model, inputs, keep=None, mask="feature", skip_masked=False, ctx=ctx)
        method.loss(model, out, y, torch.full_like(y, -1), ctx).backward()
        raw_w, raw_b = head.weight.grad.double().numpy().copy(), head.bias.grad.clone()
        method.modulate_gradients(model, out, y, torch.full_like(y, -1), ctx)
        got = head.weight.grad.double().numpy()
        if not seen[other]:  # nothing of the other modality yet: no projection
            np.testing.assert_allclose(got, raw_w, rtol=1e-6)
        else:
            p = hand_projector(seen[other], alpha)
            np.testing.assert_allclose(got, raw_w @ p, rtol=1e-4, atol=1e-6)
            for col in seen[other]:  # the head's update leaves the other modality's stored features' outputs
                assert np.abs(got @ col).max() < 1e-4 * np.abs(raw_w).max()
            assert np.abs(raw_w @ seen[other][0]).max() > 1e-2  # (it was not already orthogonal)
        assert torch.equal(head.bias.grad, raw_b)  # the bias is not projected
        seen[k] += columns(x[s])
    assert s == 3 and len(seen["a"]) == (2 if stat == "mean" else 4)


def test_projection_off_and_state_dict_resume():
    names = ["a", "b"]
    model = toy(names, d=3, identity=True)
    y = torch.tensor([0, 1])
    feats = [torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]), torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]]),
             torch.tensor([[1.0, 0.0, 1.0], [2.0, 0.0, 1.0]])]

    def run(method, steps, start=0) -> np.ndarray:
        ctx = context(model, names)
        for s in range(start, start + steps):
            ctx.global_step = s
            one_step(method, model, ctx, {m: feats[s] for m in names}, y)
        return model.heads["a"].weight.grad.clone()

    off = MLA(TrainConfig(**TINY), names, 2, MLA.Params(gradient_modification=False))
    off.prepare_model(model)
    run(off, 2)
    assert off.r is None and off.state_dict()["r"] is None
    ref = MLA(TrainConfig(**TINY), names, 2, MLA.Params(alpha=0.5))
    full = run(ref, 3)
    first = MLA(TrainConfig(**TINY), names, 2, MLA.Params(alpha=0.5))
    run(first, 2)
    resumed = MLA(TrainConfig(**TINY), names, 2, MLA.Params(alpha=0.5))
    resumed.load_state_dict(first.state_dict())
    assert resumed.steps == [1, 1]
    assert torch.equal(run(resumed, 1, start=2), full)  # the third step's projection as without the interruption
    assert torch.equal(resumed.r, ref.r)
    with pytest.raises(ValueError, match="unexpected"):
        resumed.load_state_dict({"r": None, "bogus": 1})


@pytest.mark.parametrize("stat", ["mean", "covariance"])
def test_projector_update_is_reduced_over_ranks(stat):
    """Two simulated ranks (threads, all_sum through a barrier) with different features: both keep the same R, that
    of the union of their features."""
    names = ["a", "b"]
    barrier = threading.Barrier(2)
    slots: list[torch.Tensor | None] = [None, None]

    def all_sum(rank):
        def fn(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return fn

    x = [torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]), torch.tensor([[3.0, 1.0, 0.0]])]  # rank slices 2 + 1
    methods, errors = [], []

    def rank_run(rank):
        try:
            model = toy(names, d=3, identity=True)
            method = MLA(TrainConfig(**TINY), names, 2, MLA.Params(feature_stat=stat))
            method.prepare_model(model)
            y = torch.zeros(len(x[rank]), dtype=torch.long)
            one_step(method, model, context(model, names, all_sum(rank)), {m: x[rank] for m in names}, y)
            methods.append(method)
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank_run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(methods) == 2
    allx = torch.cat(x).double()  # [3, D]
    want = torch.outer(allx.mean(0), allx.mean(0)) if stat == "mean" else allx.T @ allx / 3
    for m in methods:
        torch.testing.assert_close(m.r[0], want)
        assert not m.r[1].any()


# -- the entropy-weighted fusion ----------------------------------------------------------------

def test_entropy_weighted_fusion_against_hand_computation():
    names = ["audio", "video", "x"]
    la = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])  # [B, C]: sample 0 uniform (max entropy)
    lv = np.array([[np.log(4.0), 0.0, 0.0], [0.0, 0.5, 0.0]])
    lx = np.array([[3.0, -3.0, 0.0], [1.0, 1.0, 1.0]])
    out = ModelOutput(fused=torch.zeros(2, 3), features={},
                      unimodal={m: torch.tensor(v, dtype=torch.float32) for m, v in zip(names, (la, lv, lx))})
    method = MLA(TrainConfig(**TINY), names, 3)
    got = method.fused_logits(None, out, {}).numpy()

    def entropy(logits):
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return -(p * np.log(p)).sum(1)

    e = np.stack([entropy(v) for v in (la, lv, lx)], 1)  # [B, K]
    np.testing.assert_allclose(e[0, :2], [np.log(3), -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 6))], rtol=1e-12)
    w = np.exp(e.max(1, keepdims=True) - e)
    w /= w.sum(1, keepdims=True)
    want = w[:, 0:1] * la + w[:, 1:2] * lv + w[:, 2:3] * lx
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert w[0].argmax() == 2 and w[0].argmin() == 0  # sample 0: x most confident, audio uniform
    assert w[1].argmin() == 2  # sample 1: x uniform, the least weight
    assert not np.allclose(want, (la + lv + lx) / 3)  # not a plain mean


# -- tiny real training --------------------------------------------------------------------------

def _record_steps(monkeypatch) -> list[tuple]:
    """Record (global step, remixing, batch modality codes, encoders with a gradient) at every real step."""
    log = []
    real = MLA.modulate_gradients

    def spy(self, model, out, y, m_code, ctx):
        got = [m for m in model.modalities if any(p.grad is not None for p in model.encoders[m].parameters())]
        log.append((ctx.global_step, ctx.phase == "remix", sorted(set(m_code.tolist())), got))
        return real(self, model, out, y, m_code, ctx)

    monkeypatch.setattr(MLA, "modulate_gradients", spy)
    return log


@pytest.mark.parametrize("method", ["mla", "mla_remix"])
def test_tiny_training_alternates_and_evaluates(cremad_raw, tmp_path_factory, tmp_path, monkeypatch, method):
    features = extracted_features(cremad_raw, tmp_path_factory)
    steps = _record_steps(monkeypatch)
    cfg = TrainConfig(**{**TINY, "epochs": 4, "warmup_epochs": 2},
                      method_params={method: {"alpha": 0.5, "feature_stat": "mean"}})
    run = tmp_path / method
    summary = train(index_path=features / "index.h5", out_dir=run / "train", method=method, config=cfg, seed=0)
    mods = cfg.modalities
    phases = [h["phase"] for h in summary["history"]]
    assert phases == (["warmup"] * 4 if method == "mla" else ["warmup", "warmup", "remix", "remix"])
    assert [s[0] for s in steps] == list(range(len(steps))) and len(steps) >= 8
    for gs, remixing, codes, got in steps:
        if remixing:
            assert len(codes) == 1 and codes[0] >= 0 and got == [mods[codes[0]]]
        else:
            assert codes == [-1] and got == [mods[gs % 2]]
    start = 0
    for h in summary["history"]:  # the logged per-epoch counts are the steps each modality trained
        n = int(h["mla_steps_audio"] + h["mla_steps_video"])
        epoch_steps = steps[start:start + n]
        assert [h["mla_steps_audio"], h["mla_steps_video"]] == [sum(s[3] == [m] for s in epoch_steps) for m in mods]
        start += n
    assert start == len(steps)

    ckpt = torch.load(run / "train" / "model.pt", map_location="cpu", weights_only=False)
    assert torch.equal(ckpt["model"]["heads.audio.weight"], ckpt["model"]["heads.video.weight"])
    preds = []
    real_predict = evaluate_mod.predict
    monkeypatch.setattr(evaluate_mod, "predict", lambda *a, **kw: preds.append(real_predict(*a, **kw)) or preds[-1])
    val = evaluate(index_path=features / "index.h5", run_dir=run, split="val")
    best = summary["best"]
    # the reloaded checkpoint (through prepare_model) predicts validation as the trainer saw it
    assert val["epoch"] == best["epoch"] and val["acc_fused"] == best["val_fused"]
    assert val["acc_audio"] == best["val_audio"] and val["acc_video"] == best["val_video"]
    test = evaluate(index_path=features / "index.h5", run_dir=run)
    assert test["split"] == "test" and test["samples"] > 0
    for pred in preds:  # the fused prediction is the entropy-weighted fusion of the shared head's outputs
        la, lv = pred["audio"].astype(np.float64), pred["video"].astype(np.float64)
        ent = [-(np.exp(v - _lse(v)) * (v - _lse(v))).sum(1) for v in (la, lv)]
        wa = 1.0 / (1.0 + np.exp(ent[0] - ent[1]))  # softmax over -entropy, K = 2
        np.testing.assert_allclose(pred["fused"], wa[:, None] * la + (1 - wa[:, None]) * lv, rtol=1e-4, atol=1e-5)
    assert test["acc_fused"] == float((preds[-1]["fused"].argmax(1) == preds[-1]["label"]).mean())


def _lse(v: np.ndarray) -> np.ndarray:
    mx = v.max(1, keepdims=True)
    return mx + np.log(np.exp(v - mx).sum(1, keepdims=True))


def test_mla_remix_resumes_exactly(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    """Interrupted after its 5th step (projector state already non-trivial), the resumed run ends with the same
    weights and log as an uninterrupted one."""
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**{**TINY, "epochs": 4, "warmup_epochs": 2})

    def check_state(run_dir):
        state = torch.load(default_work_dir(run_dir) / RESUME, map_location="cpu", weights_only=False)
        assert state["run"].global_step == 5 and state["method"]["r"].abs().sum() > 0

    interrupted_then_resumed(features, tmp_path, "mla_remix", MLA, cfg, 5, monkeypatch, before_resume=check_state)