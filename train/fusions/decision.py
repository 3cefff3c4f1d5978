"""decision: late fusion by the mean of per-modality Linear(D, C) logits."""
from __future__ import annotations

import torch
from torch import Tensor

from train.fusions.sum import SumFusion


class DecisionFusion(SumFusion):
    """Late fusion: mean of per-modality Linear(D, C) logits (own linears, not the unimodal heads); the layers
    are sum's, the mean replaces the sum."""

    name = "decision"

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        self._gather(feats)
        return torch.stack([self.fc[m](feats[m]) for m in self.modalities]).mean(0)  # [B, C]

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The modality's own Linear / K (float32); the shares add up to the fused logits."""
        k = len(self.modalities)
        return {m: share / k for m, share in super().modality_shares(features).items()}
