"""G-Blend (Wang, Tran, Feiszli, CVPR 2020): a loss blended over the fused and unimodal heads, weighted by OGR.

Shapes: B batch, K modalities, C classes, N samples; the K + 1 "branches" are the fused head and the
K unimodal heads, in the order ``["fused", *modalities]``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.params import Config, setting
from train.methods.base import Method


def blend_weights(start_val: np.ndarray, start_train: np.ndarray, end_val: np.ndarray, end_train: np.ndarray,
                  min_overfit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient-Blending weights from each branch's losses at the start and end of a super-epoch.

    All arguments [K + 1] mean cross-entropies (nats). Returns (w, G, O), each [K + 1]:
    G = val_start - val_end (generalisation), O = (val_end - train_end) - (val_start - train_start)
    (the change of the overfitting gap), w ∝ max(G, 0) / max(O², min_overfit²) normalised to sum 1;
    uniform when no branch generalised (every G <= 0).
    """
    start_val, start_train, end_val, end_train = (np.asarray(x, np.float64) for x in
                                                  (start_val, start_train, end_val, end_train))
    g = start_val - end_val
    o = (end_val - end_train) - (start_val - start_train)
    raw = np.maximum(g, 0.0) / np.maximum(o * o, min_overfit * min_overfit)
    total = raw.sum()
    w = raw / total if total > 0 else np.full(g.shape, 1.0 / g.size)
    return w, g, o


@torch.no_grad()
def branch_losses(model, loader, to_inputs, modalities: list[str], device: torch.device) -> np.ndarray:
    """[K + 1] mean cross-entropy of the fused head and of each unimodal head over the loader's whole split
    (eval mode, float32; the model's train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(len(modalities) + 1, dtype=torch.float64, device=device)
    count = 0
    try:
        for batch in loader:
            inputs = to_inputs(batch)
            y = batch["label"].to(device)
            out = model(inputs)
            logits = [out.fused, *(out.unimodal[m] for m in modalities)]  # (K + 1) x [B, C]
            total += torch.stack([F.cross_entropy(z.float(), y, reduction="sum").double() for z in logits])
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("gblend: the loader yielded no samples")
    return (total / count).cpu().numpy()


class GBlend(Method):
    """Gradient-Blending (Wang, Tran, Feiszli, CVPR 2020, "What Makes Training Multi-Modal Classification
    Networks Hard?"), online version: L = w_fused * L_fused + sum_k w_k * L_k, the unimodal heads on the real,
    non-detached encoder features, with w ∝ G / O² (the paper's OGR estimate, eq. 7) re-estimated every
    super-epoch from the model being trained.

    At every super-epoch boundary (epoch 0, s, 2s, ... with s = ``super_epoch``), in ``epoch_start``, each
    branch's mean loss is measured on validation (``ctx.loaders["val"]``, never test) and on the training
    split without augmentation (``ctx.loaders["train_eval"]``), in eval mode; the weights for the next
    super-epoch come from the last two measurements (:func:`blend_weights`); the first super-epoch uses
    uniform weights 1 / (K + 1). Choices where the paper leaves it open: weights normalised to sum 1 (so the
    loss scale differs from the baseline's L_fused); a branch whose validation loss did not fall (G <= 0) gets
    weight 0, and if none fell the weights are uniform; |O| is floored at ``min_overfit`` (O ≈ 0 would give an
    unbounded weight); losses are measured in float32 without autocast (G and O are small differences).
    Both loaders cover the whole split on every rank, so every rank gets the same weights. Any K >= 2.
    """

    name = "gblend"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """G-Blend settings (see the class docstring); every key is documented in params.yaml."""

        section = "train.method_params.gblend"

        super_epoch: int = setting(2, min=1)
        min_overfit: float = setting(0.01, min=0.0, min_exclusive=True)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        self.branches = ["fused", *self.modalities]
        self.weights = np.full(len(self.branches), 1.0 / len(self.branches))  # [K + 1], sum 1
        self.start: dict[str, np.ndarray] | None = None  # the last boundary's losses: "val", "train" -> [K + 1]

    def epoch_start(self, epoch, ctx):
        if epoch % self.params.super_epoch:
            return
        now = {split: branch_losses(ctx.model, ctx.loaders[loader], ctx.to_inputs, self.modalities, ctx.device)
               for split, loader in (("val", "val"), ("train", "train_eval"))}
        if self.start is not None:
            self.weights, _, _ = blend_weights(self.start["val"], self.start["train"], now["val"], now["train"],
                                               self.params.min_overfit)
        self.start = now

    def loss(self, model, out, y, m_code, ctx):
        w = [float(x) for x in self.weights]
        loss = w[0] * F.cross_entropy(out.fused, y)
        for wk, m in zip(w[1:], self.modalities):
            loss = loss + wk * F.cross_entropy(out.unimodal[m], y)
        return loss

    def epoch_end(self, epoch, ctx):
        return {f"gblend_w_{b}": float(w) for b, w in zip(self.branches, self.weights)}

    def state_dict(self):
        return {"weights": self.weights.copy(),
                "start": None if self.start is None else {k: v.copy() for k, v in self.start.items()}}

    def load_state_dict(self, state):
        self.weights = np.asarray(state["weights"], np.float64).copy()
        self.start = None if state["start"] is None else {k: np.asarray(v).copy() for k, v in state["start"].items()}
