"""sum: the sum over modalities of a per-modality Linear(D, C) (OGM-GE's SumFusion)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.fusions.base import Fusion


class SumFusion(Fusion):
    """Sum over modalities of a per-modality Linear(D, C) (OGM-GE's SumFusion)."""

    name = "sum"

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.fc = nn.ModuleDict({m: nn.Linear(feature_dim, num_classes) for m in self.modalities})

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        self._gather(feats)
        return torch.stack([self.fc[m](feats[m]) for m in self.modalities]).sum(0)  # [B, C]

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The modality's own Linear (float32); the shares add up to the fused logits."""
        return {m: F.linear(features[m].float(), self.fc[m].weight.float(), self.fc[m].bias.float())
                for m in self.modalities}
