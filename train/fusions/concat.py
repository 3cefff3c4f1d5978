"""concat: Linear(K*D, C) over the concatenated features (the paper's default)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from train.fusions.base import Fusion


class ConcatFusion(Fusion):
    """Linear(K*D, C) over the concatenated features (the paper's default)."""

    name = "concat"

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.fc = nn.Linear(len(self.modalities) * feature_dim, num_classes)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.fc(torch.cat(self._gather(feats), dim=1))  # [B, K*D] -> [B, C]

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The modality's block of the Linear plus bias / K (float32); the shares add up to the fused logits."""
        w, b = self.fc.weight.float(), self.fc.bias.float()  # [C, K*D], [C]
        k, d = len(self.modalities), self.feature_dim
        return {m: features[m].float() @ w[:, j * d:(j + 1) * d].T + b / k for j, m in enumerate(self.modalities)}
