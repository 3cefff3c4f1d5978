"""film: FiLM (Perez et al. 2018), the first modality modulated by the others."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from train.fusions.base import Fusion


class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018): the first modality's features h0 [B, D] are modulated as
    gamma * h0 + beta, with (gamma, beta) = Linear((K-1)*D, 2D)(concat of the others); then
    Linear(D, C). Shares (not additive): :meth:`Fusion.modality_shares`, the head with the others zeroed."""

    name = "film"
    min_modalities = 2

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.film = nn.Linear((len(self.modalities) - 1) * feature_dim, 2 * feature_dim)
        self.fc_out = nn.Linear(feature_dim, num_classes)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        first, *others = self._gather(feats)
        gamma, beta = self.film(torch.cat(others, dim=1)).chunk(2, dim=1)  # 2 x [B, D]
        return self.fc_out(gamma * first + beta)  # [B, C]
