"""Joint training (``baseline``) and one encoder alone (``only_<modality>``, the laziness probe's reference)."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from train.losses import joint_loss
from train.methods.base import EpochPlan, Method


class Baseline(Method):
    """Joint training on eq. 1 (``baseline_loss: eq1``, the official baseline.py) or L_fused (``fused``; the heads
    are linear probes)."""

    name = "baseline"

    def loss(self, model, out, y, m_code, ctx):
        return joint_loss(model, out, y, self.config, self.config.baseline_loss)


class Only(Method):
    """One encoder and its head alone: every sample keeps just this modality (the others input-masked and their
    encoders skipped); L = its unimodal loss; the checkpoint is selected on its unimodal accuracy."""

    name = "only"  # built as only_<modality> by train.methods.build_method
    listed = False

    def __init__(self, config, modalities, num_classes, params=None, *, modality: str = ""):
        super().__init__(config, modalities, num_classes, params)
        if modality not in self.modalities:
            raise ValueError(f"only_{modality}: {modality!r} is not one of {self.modalities}")
        self.modality = modality
        self.name = f"only_{modality}"

    def plan(self, epoch, ctx):
        return EpochPlan(modality=np.full(ctx.n_train, self.modalities.index(self.modality)))

    def masking(self):
        return "input", True

    def loss(self, model, out, y, m_code, ctx):
        return F.cross_entropy(out.unimodal[self.modality], y)

    def selection_metric(self, acc):
        return acc[self.modality]
