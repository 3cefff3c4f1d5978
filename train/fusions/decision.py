"""decision: late fusion by the mean of per-modality Linear(D, C) logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.fusions.base import Fusion


class DecisionFusion(Fusion):
    """Late fusion: mean of per-modality Linear(D, C) logits (own linears, not the unimodal heads)."""

    name = "decision"

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.fc = nn.ModuleDict({m: nn.Linear(feature_dim, num_classes) for m in self.modalities})

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        self._gather(feats)
        return torch.stack([self.fc[m](feats[m]) for m in self.modalities]).mean(0)  # [B, C]

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The modality's own Linear / K (float32); the shares add up to the fused logits."""
        k = len(self.modalities)
        return {m: F.linear(features[m].float(), self.fc[m].weight.float(), self.fc[m].bias.float()) / k
                for m in self.modalities}
