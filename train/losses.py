"""The losses of joint training and of Data Remixing (paper eq. 1 and §3.3).

Shapes: B batch, C classes. ``out`` is a :class:`train.models.ModelOutput`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def probe_loss(model, out, y: torch.Tensor) -> torch.Tensor:
    """Sum over modalities of each unimodal head's loss on DETACHED features: linear probes that never move an encoder."""
    return sum(F.cross_entropy(model.heads[m](out.features[m].detach()), y) for m in model.modalities)


def eq1_loss(out, y: torch.Tensor, alpha: float, modalities: list[str]) -> torch.Tensor:
    """L_fused + alpha * sum_k L_k (paper eq. 1, alpha = beta)."""
    return F.cross_entropy(out.fused, y) + alpha * sum(F.cross_entropy(out.unimodal[m], y) for m in modalities)


def assigned_loss(out, y: torch.Tensor, m_code: torch.Tensor, gamma: float, modalities: list[str]) -> torch.Tensor:
    """L_fused + gamma * (each sample's assigned modality's unimodal loss), averaged over the batch; m_code [B]."""
    loss = F.cross_entropy(out.fused, y)
    for j, m in enumerate(modalities):
        sel = m_code == j
        if sel.any():
            loss = loss + gamma * F.cross_entropy(out.unimodal[m][sel], y[sel], reduction="sum") / len(y)
    return loss


def joint_loss(model, out, y: torch.Tensor, config, form: str = "fused") -> torch.Tensor:
    """Joint training's loss: L_fused with the heads as probes (``fused``) or eq. 1 (``eq1``, alpha from config)."""
    if form == "fused":
        return F.cross_entropy(out.fused, y) + probe_loss(model, out, y)
    return eq1_loss(out, y, config.alpha, list(config.modalities))
