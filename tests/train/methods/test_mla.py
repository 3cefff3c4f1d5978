"""MLA and mla_remix: tied head, one step per modality per batch (or the ``one`` form's alternation), OWM
projection, entropy fusion, tiny real training, the ``one`` form against the earlier code's weights, and resume.

Shapes: B batch, K modalities, C classes, D feature dim.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import torch
from torch import nn

from tests.train.methods import mla_before
from tests.train.methods.resume import interrupted_then_resumed
from tests.train.test_data import extracted_features
from train import evaluate as evaluate_mod
from train.evaluate import evaluate
from train.methods import Context, build_method, registry
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


def one_batch(method, model, ctx, inputs, y, keep=None, opt=None, each=None) -> list[list[str]]:
    """One trainer-like batch: a step per mask of ``method.substeps`` (``keep`` None: every modality kept; a mask
    keeping every modality reaches forward as None, as in the loop), ``opt.step()`` after each when given,
    ``each()`` after each step's gradient modification. The encoders with a gradient, per step."""
    full = torch.ones(len(y), len(method.modalities), dtype=torch.bool) if keep is None else keep
    got = []
    for part in method.substeps(full, ctx):
        got.append(one_step(method, model, ctx, inputs, y, keep=None if part.all() else part))
        if each is not None:
            each()
        if opt is not None:
            opt.step()
    return got


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
    assert m.params.steps_per_batch == "all"  # the paper's form is the default
    r = build_method("mla_remix", cfg, ["audio", "video"], 3, {"mla_remix": {"steps_per_batch": "one"}})
    assert type(r) is MLARemix and isinstance(r, Remixing) and r.params.steps_per_batch == "one"
    with pytest.raises(ValueError, match="steps_per_batch"):
        build_method("mla", cfg, ["audio", "video"], 3, {"mla": {"steps_per_batch": "two"}})
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


# -- the steps of a batch -----------------------------------------------------------------------

@pytest.mark.parametrize("form", ["all", "one"])
def test_steps_of_each_batch_and_untrained_encoders_have_no_grad(form):
    """``all``: every batch K steps, a, b, c, each moving its encoder only; ``one``: one step per batch, the
    modalities in turn by global step. AdamW with weight decay leaves an encoder without a gradient unmoved."""
    names = ["a", "b", "c"]
    model = toy(names)
    method = MLA(TrainConfig(**TINY), names, 2, MLA.Params(steps_per_batch=form))
    method.prepare_model(model)
    ctx = context(model, names)
    inputs = {m: torch.randn(5, 4) for m in names}
    y = torch.tensor([0, 1, 0, 1, 1])
    adamw = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    trained = []

    class Checked:  # AdamW (weight decay) steps; no encoder without a gradient moves
        def step(self):
            idle = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in names
                    if all(p.grad is None for p in model.encoders[m].parameters())}
            busy = [p for m in names if m not in idle for p in model.encoders[m].parameters()]
            before = [p.detach().clone() for p in busy]
            adamw.step()
            assert len(idle) == len(names) - 1
            assert all(torch.equal(p, q) for m in idle for p, q in zip(model.encoders[m].parameters(), idle[m]))
            assert not all(torch.equal(p, q) for p, q in zip(busy, before))  # the trained encoder moved

    def check():  # after each step's gradient modification
        assert all(p.grad is None for p in model.fusion.parameters())  # the fusion head is never trained

    method.epoch_start(0, ctx)
    for s in range(6 if form == "one" else 2):
        ctx.global_step = s
        trained.append(one_batch(method, model, ctx, inputs, y, opt=Checked(), each=check))
    if form == "one":
        assert trained == [[["a"]], [["b"]], [["c"]], [["a"]], [["b"]], [["c"]]]
    else:
        assert trained == [[["a"], ["b"], ["c"]]] * 2
    assert method.steps == [2, 2, 2] and method.batches == (6 if form == "one" else 2)
    assert method.epoch_end(0, ctx) == {"mla_steps_a": 2.0, "mla_steps_b": 2.0, "mla_steps_c": 2.0,
                                        "expansion": 1.0 if form == "one" else 3.0}


def test_substeps_masks():
    names = ["a", "b"]
    ctx = context(toy(names), names)
    keep = torch.ones(3, 2, dtype=torch.bool)
    parts = MLA(TrainConfig(**TINY), names, 2).substeps(keep, ctx)
    assert [p.tolist() for p in parts] == [[[True, False]] * 3, [[False, True]] * 3] and keep.all()  # input unchanged
    assert MLA(TrainConfig(**TINY), names, 2, MLA.Params(steps_per_batch="one")).substeps(keep, ctx) == [keep]
    ctx.phase = "remix"
    pure = torch.tensor([[False, True]] * 3)
    assert MLARemix(TrainConfig(**TINY), names, 2).substeps(pure, ctx) == [pure]  # one step, whatever the form


@pytest.mark.parametrize("form", ["all", "one"])
def test_mla_remix_trains_the_assigned_modality_in_the_remix_phase(form):
    names = ["a", "b"]
    model = toy(names)
    method = MLARemix(TrainConfig(**TINY), names, 2, MLARemix.Params(steps_per_batch=form))
    method.prepare_model(model)
    ctx = context(model, names)
    inputs = {m: torch.randn(4, 4) for m in names}
    y = torch.tensor([0, 1, 0, 1])
    got = []
    method.epoch_start(0, ctx)
    for s in range(2):  # warm-up: as MLA
        ctx.global_step = s
        got += one_batch(method, model, ctx, inputs, y)
    assert got == ([["a"], ["b"]] if form == "one" else [["a"], ["b"], ["a"], ["b"]])
    assert method.epoch_end(0, ctx)["expansion"] == (1.0 if form == "one" else 2.0)
    ctx.phase, got = "remix", []
    method.epoch_start(1, ctx)
    for s, j in zip(range(2, 6), [1, 1, 0, 1]):  # remix: one step of the batch's modality, whatever the step
        ctx.global_step = s
        keep = torch.zeros(4, 2, dtype=torch.bool)
        keep[:, j] = True
        got += one_batch(method, model, ctx, inputs, y, keep=keep)
    assert got == [["b"], ["b"], ["a"], ["b"]]
    assert method.epoch_end(1, ctx) == {"mla_steps_a": 1.0, "mla_steps_b": 3.0, "expansion": 1.0, "score_s": 0.0}
    mixed = torch.tensor([[True, False], [False, True], [True, False], [True, False]])
    with pytest.raises(ValueError, match="modality-pure"):
        one_batch(method, model, ctx, inputs, y, keep=mixed)
    with pytest.raises(ValueError, match="keep one modality"):
        one_step(method, model, ctx, inputs, y, keep=None)


# -- the gradient projection ------------------------------------------------------------------

def hand_projector(cols: list[np.ndarray], alpha: float) -> np.ndarray:
    """P = I - A (A^T A + alpha I)^-1 A^T, A [D, n] with the given columns."""
    a = np.stack(cols, axis=1)
    return np.eye(a.shape[0]) - a @ np.linalg.inv(a.T @ a + alpha * np.eye(a.shape[1])) @ a.T


@pytest.mark.parametrize("form", ["all", "one"])
@pytest.mark.parametrize("stat", ["mean", "covariance"])
def test_projection_matches_the_hand_computed_projector(stat, form):
    """Every step's head gradient is the raw one times P of the other modality's features seen so far: with
    ``all`` each batch's b step already sees that batch's a features."""
    names = ["a", "b"]
    alpha = 1e-6
    model = toy(names, d=3, c=2, identity=True)  # features = inputs
    method = MLA(TrainConfig(**TINY), names, 2, MLA.Params(alpha=alpha, feature_stat=stat, steps_per_batch=form))
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
    order = []
    for s in range(4):  # batches: each a step per substeps mask
        ctx.global_step = s
        inputs = {m: x[s] for m in names}
        for part in method.substeps(torch.ones(2, 2, dtype=torch.bool), ctx):
            for p in model.parameters():
                p.grad = None
            out = method.forward(model, inputs, keep=None if part.all() else part, mask="feature", skip_masked=False,
                                 ctx=ctx)
            k = next(iter(out.raw))
            other = names[1 - names.index(k)]
            order.append(k)
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
    assert order == (["a", "b"] * 4 if form == "all" else ["a", "b", "a", "b"])
    per_step = 1 if stat == "mean" else 2
    assert len(seen["a"]) == len(seen["b"]) == per_step * (4 if form == "all" else 2)


def test_projection_off_and_state_dict_resume():
    """K steps per batch; a method restored from the state after two batches takes the third batch's steps as the
    uninterrupted one does (state is saved between batches)."""
    names = ["a", "b"]
    model = toy(names, d=3, identity=True)
    y = torch.tensor([0, 1])
    feats = [torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]), torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]]),
             torch.tensor([[1.0, 0.0, 1.0], [2.0, 0.0, 1.0]])]

    def run(method, batches, start=0) -> list[torch.Tensor]:
        ctx = context(model, names)
        grads = []
        for s in range(start, start + batches):
            ctx.global_step = s
            one_batch(method, model, ctx, {m: feats[s] for m in names}, y,
                      each=lambda: grads.append(model.heads["a"].weight.grad.clone()))
        return grads

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
    assert resumed.steps == [2, 2] and resumed.batches == 2
    third = run(resumed, 1, start=2)
    assert len(full) == 6 and len(third) == 2
    assert all(torch.equal(a, b) for a, b in zip(third, full[4:]))  # the third batch's projections as without a stop
    assert torch.equal(resumed.r, ref.r) and resumed.steps == ref.steps == [3, 3] and resumed.batches == 3
    old = first.state_dict()
    del old["batches"]  # a state saved by the one-step form (no batch count): one batch per step
    resumed.load_state_dict(old)
    assert resumed.batches == 4
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
def test_tiny_training_steps_per_modality_and_evaluates(cremad_raw, tmp_path_factory, tmp_path, monkeypatch, method):
    features = extracted_features(cremad_raw, tmp_path_factory)
    steps = _record_steps(monkeypatch)
    cfg = TrainConfig(**{**TINY, "epochs": 4, "warmup_epochs": 2},
                      method_params={method: {"alpha": 0.5, "feature_stat": "mean"}})
    run = tmp_path / method
    summary = train(index_path=features / "index.h5", out_dir=run / "train", method=method, config=cfg, seed=0)
    mods = cfg.modalities
    phases = [h["phase"] for h in summary["history"]]
    assert phases == (["warmup"] * 4 if method == "mla" else ["warmup", "warmup", "remix", "remix"])
    batches = sorted({s[0] for s in steps})
    assert [s[0] for s in steps] == sorted(s[0] for s in steps) and batches == list(range(len(batches)))
    assert len(batches) >= 8
    for gs in batches:
        mine = [s for s in steps if s[0] == gs]
        if mine[0][1]:  # remix: one step, the batch's assigned modality
            assert len(mine) == 1 and len(mine[0][2]) == 1 and mine[0][2][0] >= 0 and mine[0][3] == [mods[mine[0][2][0]]]
        else:  # warm-up: one step per modality, in order, on the same multimodal batch
            assert [s[2] for s in mine] == [[-1], [-1]] and [s[3] for s in mine] == [[m] for m in mods]
    start = 0
    for h in summary["history"]:  # the logged per-epoch counts are the steps each modality trained
        n = int(h["mla_steps_audio"] + h["mla_steps_video"])
        epoch_steps = steps[start:start + n]
        assert [h["mla_steps_audio"], h["mla_steps_video"]] == [sum(s[3] == [m] for s in epoch_steps) for m in mods]
        assert h["expansion"] == n / len({s[0] for s in epoch_steps}) == (1.0 if h["phase"] == "remix" else 2.0)
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


# -- the ``one`` form is the earlier code ------------------------------------------------------------

def state_digest(model: AVModel, method) -> str:
    """sha256 of the model's state dict and of MLA's R."""
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    if method.r is not None:
        h.update(method.r.cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("method", ["mla", "mla_remix"])
def test_one_form_reproduces_the_earlier_code_bit_for_bit(cremad_raw, tmp_path_factory, tmp_path, monkeypatch,
                                                          method):
    """``steps_per_batch: one`` trains to the same weights, bit for bit after every epoch, as the code before the
    option existed (``mla_before.py``, frozen), both run here on the same tree (TINY with batch_size 2: 3 batches
    per epoch, so epoch 1 starts on an odd global step; mla_remix: 1 warm-up and 2 remix epochs)."""
    features = extracted_features(cremad_raw, tmp_path_factory)
    before = {"mla": mla_before.MLABefore, "mla_remix": mla_before.MLARemixBefore}[method]
    monkeypatch.setitem(registry(), before.name, before)
    digests: dict[str, list[str]] = {}

    def record(cls):
        real = cls.epoch_end

        def spy(self, epoch, ctx):
            digests.setdefault(self.name, []).append(state_digest(ctx.model, self))
            return real(self, epoch, ctx)
        monkeypatch.setattr(cls, "epoch_end", spy)

    record(MLA)
    record(mla_before.MLABefore)
    runs = {}
    for name, params in ((before.name, {}), (method, {method: {"steps_per_batch": "one"}})):
        cfg = TrainConfig(**{**TINY, "batch_size": 2}, method_params=params)
        runs[name] = train(index_path=features / "index.h5", out_dir=tmp_path / name, method=name, config=cfg, seed=0)
    assert len(digests[before.name]) == 3 and digests[method] == digests[before.name]
    new, old = ([{k: v for k, v in row.items() if not k.endswith("_s")} for row in runs[n]["history"]]
                for n in (method, before.name))
    assert [{k: v for k, v in row.items() if k != "expansion"} for row in new] == old  # the log too, timings aside
    assert [h["expansion"] for h in runs[method]["history"]] == [1.0] * 3
    steps = [[h["mla_steps_audio"], h["mla_steps_video"]] for h in runs[method]["history"]]
    assert steps == ([[2.0, 1.0], [1.0, 2.0], [2.0, 1.0]] if method == "mla" else [[2.0, 1.0], [0.0, 3.0], [0.0, 3.0]])


# -- resume ------------------------------------------------------------------------------------------

def test_mla_resumes_exactly_from_a_stop_between_the_steps_of_a_batch(cremad_raw, tmp_path_factory, tmp_path,
                                                                      monkeypatch):
    """Stopped after the first of its 4th batch's two optimizer steps, the run resumes from the state saved after
    the 3rd batch (states are saved between batches) and ends with the same weights and log as an uninterrupted
    one."""
    features = extracted_features(cremad_raw, tmp_path_factory)

    def check_state(run_dir):  # 2 batches per epoch: epoch 1, one batch (two steps) done
        state = torch.load(default_work_dir(run_dir) / RESUME, map_location="cpu", weights_only=False)
        assert (state["run"].epoch, state["run"].step, state["run"].global_step) == (1, 1, 3)
        assert state["method"]["batches"] == 1 and state["method"]["steps"] == [1, 1]

    clean = interrupted_then_resumed(features, tmp_path, "mla", MLA, TrainConfig(**TINY), 3, monkeypatch,
                                     before_resume=check_state)
    assert [h["expansion"] for h in clean["history"]] == [2.0] * 3


def test_mla_remix_resumes_exactly(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    """Interrupted in its 6th batch (the first remix epoch; projector state already non-trivial), the resumed run
    ends with the same weights and log as an uninterrupted one."""
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**{**TINY, "epochs": 4, "warmup_epochs": 2})

    def check_state(run_dir):
        state = torch.load(default_work_dir(run_dir) / RESUME, map_location="cpu", weights_only=False)
        assert state["run"].global_step == 5 and state["method"]["r"].abs().sum() > 0

    interrupted_then_resumed(features, tmp_path, "mla_remix", MLA, cfg, 5, monkeypatch, before_resume=check_state)