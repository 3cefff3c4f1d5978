"""Sample-level modality valuation and re-sampling (Wei, Feng, Lin, Hu, CVPR 2024), alone and with Data Remixing.

Shapes: B batch, K modalities, C classes, N samples of the training split; subsets of the modalities
are bit masks S in [0, 2^K), bit k set when modality k (``modalities`` order) is present.
"""
from __future__ import annotations

import dataclasses
import math
from itertools import combinations

import numpy as np
import torch

from pipeline.params import Config, setting
from train.inference import autocast
from train.methods.base import EpochPlan, Method
from train.methods.remix import Remixing


@torch.no_grad()
def subset_values(model, out, y: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """[B, 2^K] v(S) per sample: 1 when the fusion head, fed only the features of the modalities in S (the
    others zeroed), predicts y; v(empty) = 0. out: the model's output on the real inputs (no masking).
    An intermediate fusion (``model.late_fusion`` false: train/fusions/intermediate.py) has no head over final
    features alone: there v(S) is the model's fused output with the modalities outside S feature-masked
    (``inputs`` needed)."""
    mods = list(model.modalities)
    k = len(mods)
    intermediate = not getattr(model, "late_fusion", True)
    if intermediate and inputs is None:
        raise ValueError(f"resample: fusion {model.fusion_name!r} needs the inputs to value modality subsets")
    values = torch.zeros(len(y), 2 ** k, device=y.device)
    for s in range(1, 2 ** k):
        if intermediate:
            keep = torch.tensor([bool(s >> j & 1) for j in range(k)], device=y.device).expand(len(y), k)
            fused = model(inputs, keep=keep, mask="feature").fused if s != 2 ** k - 1 else out.fused
        else:
            feats = {m: out.features[m] if s >> j & 1 else torch.zeros_like(out.features[m])
                     for j, m in enumerate(mods)}
            fused = model.fusion(feats)
        values[:, s] = (fused.argmax(1) == y).float()
    return values


def shapley(values: np.ndarray) -> np.ndarray:
    """[N, 2^K] coalition values v(S) (bit masks) -> [N, K] Shapley values:
    phi_k = sum_{S not containing k} |S|! (K - |S| - 1)! / K! * (v(S + k) - v(S))."""
    values = np.asarray(values, np.float64)
    k = int(round(math.log2(values.shape[1])))
    if values.ndim != 2 or 2 ** k != values.shape[1]:
        raise ValueError(f"values must be [N, 2^K], got {values.shape}")
    phi = np.zeros((values.shape[0], k))
    for j in range(k):
        others = [i for i in range(k) if i != j]
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for members in combinations(others, size):
                s = sum(1 << i for i in members)
                phi[:, j] += weight * (values[:, s | 1 << j] - values[:, s])
    return phi


def copies_from_contribution(phi: np.ndarray, scale: float, max_extra: int) -> np.ndarray:
    """[N, K] contributions -> [N] copies: 1 + min(max_extra, round(scale * (1 - min_k phi_k))), rounding
    halves up. The weakest modality's contribution phi_min lies in [-1, 1]: the lower it is, the more copies."""
    shortfall = 1.0 - np.asarray(phi, np.float64).min(1)  # [N] in [0, 2]
    extra = np.floor(scale * shortfall + 0.5 + 1e-9).astype(np.int64)  # +1e-9: 0.5 rounds up despite float error
    return 1 + np.clip(extra, 0, max_extra)


@torch.no_grad()
def sample_contributions(model, loader, to_inputs, device: torch.device, n: int, amp: str = "none") -> np.ndarray:
    """[N, K] every sample's Shapley contributions of the modalities (eval mode; the loader's whole split,
    items ordered by ``batch["index"]``); the model's train/eval mode is restored."""

    was_training = model.training
    model.eval()
    k = len(model.modalities)
    values = np.full((n, 2 ** k), np.nan)
    try:
        for batch in loader:
            y = batch["label"].to(device)
            with autocast(device, amp):
                inputs = to_inputs(batch)
                out = model(inputs)
                values[batch["index"].numpy()] = subset_values(model, out, y, inputs).cpu().numpy()
    finally:
        model.train(was_training)
    if np.isnan(values).any():
        raise ValueError(f"resample: the loader left {int(np.isnan(values).any(1).sum())} of {n} samples unvalued")
    return shapley(values)


class Resample(Method):
    """Sample-level modality valuation with re-sampling (Wei, Feng, Lin, Hu, CVPR 2024, "Enhancing Multimodal
    Cooperation via Sample-level Modality Valuation"), the sample-level method.

    After the warm-up (``train.warmup_epochs`` epochs of the method's ordinary loss), at every epoch start each
    training sample's modalities are valued (eval mode, ``ctx.loaders["train_eval"]``: no augmentation) by their
    Shapley values with v(S) = 1 when the fusion head with only the modalities in S present (the others'
    features zeroed) predicts the label, v(empty) = 0 (paper eq. 3-5; for K = 2, phi is -0.5, 0, 0.5 or 1).
    The sample then enters the epoch 1 + min(max_extra, round(scale * (1 - phi_min))) times, phi_min its
    weakest modality's contribution; scale 2 and max_extra 3 give the official code's 0, 1, 2, 3 extra copies
    for phi = 1, 0.5, 0, -0.5. The copies' augmentations differ (the sampler numbers them).

    Choices where the paper and its code leave it open or do not fit the trainer: the copies are whole
    multimodal samples (the official code drops the other modality in each extra copy, one set of copies per
    modality; here a sample gets copies for its weakest modality only, and the loss is the method's
    ordinary one); the loss is L_fused with the heads as probes (as the other comparison methods'), or in ``resample_remix`` (Resample with
    :class:`~train.methods.remix.Remixing`)
    Data Remixing's, whose per-sample assignment every copy carries and whose phase starts the re-sampling
    (after a warm-up the guard may extend). The valuation runs under the trainer's autocast (``train.amp``).
    The loader covers the whole split on every rank, so every rank gets the same copies. Any K >= 2 (2^K - 1
    fusion forwards per batch).
    """

    expands = True  # epochs hold copies: the trainer schedules the learning rate by epoch progress
    name = "resample"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """Re-sampling settings (see the class docstring); every key is documented in params.yaml."""

        section = "train.method_params.resample"

        scale: float = setting(2.0, min=0.0)
        max_extra: int = setting(3, min=0)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        self.copies: np.ndarray | None = None  # [N] this epoch's copies, None: each sample once
        self.contrib: np.ndarray | None = None  # [N, K] the last valuation

    def active(self, epoch: int, ctx) -> bool:
        """Whether ``epoch`` re-samples: after the warm-up."""
        return epoch >= self.config.warmup_epochs

    def epoch_start(self, epoch, ctx):
        if not self.active(epoch, ctx):
            self.copies = None
            return
        self.contrib = sample_contributions(ctx.model, ctx.loaders["train_eval"], ctx.to_inputs, ctx.device,
                                            ctx.n_train, ctx.config.amp)
        self.copies = copies_from_contribution(self.contrib, self.params.scale, self.params.max_extra)

    def plan(self, epoch, ctx):
        return EpochPlan(copies=None if self.copies is None else self.copies.copy())

    def epoch_end(self, epoch, ctx):
        if self.copies is None:
            return {"expansion": 1.0, "resampled": 0.0}
        return {"expansion": float(self.copies.sum() / self.copies.size),
                "resampled": float((self.copies > 1).mean())}

    def state_dict(self):
        return {"copies": None if self.copies is None else self.copies.copy(),
                "contrib": None if self.contrib is None else self.contrib.copy()}

    def load_state_dict(self, state):
        self.copies = None if state["copies"] is None else np.asarray(state["copies"], np.int64).copy()
        self.contrib = None if state["contrib"] is None else np.asarray(state["contrib"]).copy()


class ResampleRemix(Remixing, Resample):
    """Resample + Data Remixing: the remix phase's per-sample modality assignment applied to the re-sampled
    epoch (every copy of a sample carries its assigned modality); see :class:`Resample`."""

    name = "resample_remix"

    def active(self, epoch: int, ctx) -> bool:
        """Re-sampling starts with the remix phase (after a warm-up the guard may extend)."""
        return ctx.phase == "remix"
