"""gated: OGM-GE's GatedFusion generalised to K modalities."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from train.fusions.base import Fusion


class GatedFusion(Fusion):
    """OGM-GE's GatedFusion for K modalities: out = Linear(D, C)(sum_k sigmoid(G_k(mean_{j!=k} h_j))
    * P_k(h_k)), with per-modality projections P_k, G_k: Linear(D, D). Shares (not additive):
    :meth:`Fusion.modality_shares`, the head with the others zeroed."""

    name = "gated"
    min_modalities = 2

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.proj = nn.ModuleDict({m: nn.Linear(feature_dim, feature_dim) for m in self.modalities})
        self.gate = nn.ModuleDict({m: nn.Linear(feature_dim, feature_dim) for m in self.modalities})
        self.fc_out = nn.Linear(feature_dim, num_classes)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack(self._gather(feats))  # [K, B, D]
        k = stacked.shape[0]
        others_mean = (stacked.sum(0, keepdim=True) - stacked) / (k - 1)  # [K, B, D]: mean of j != k
        fused = sum(torch.sigmoid(self.gate[m](others_mean[i])) * self.proj[m](stacked[i])
                    for i, m in enumerate(self.modalities))  # [B, D]
        return self.fc_out(fused)  # [B, C]
