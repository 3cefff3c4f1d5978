"""The paper's Fig. 3c diagnostic: the angle between an encoder's step gradient and its own unimodal loss's."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def own_gradient(model, out, y: torch.Tensor, keep: torch.Tensor, modality: str) -> list[torch.Tensor | None] | None:
    """Gradient of the modality's own unimodal loss alone (its head on its real features, over the batch's samples that
    keep it) w.r.t. its encoder's parameters; None when no sample of the batch keeps it."""
    j = list(model.modalities).index(modality)
    rows = keep[:, j]
    feats = out.raw.get(modality, out.features[modality])
    if not bool(rows.any()) or not feats.requires_grad:
        return None
    own = F.cross_entropy(model.heads[modality](feats[rows]).float(), y[rows])
    params = list(model.encoders[modality].parameters())
    return list(torch.autograd.grad(own, params, retain_graph=True, allow_unused=True))


def gradient_angle(encoder: torch.nn.Module, own: list[torch.Tensor | None]) -> float:
    """Degrees between the encoder's accumulated ``.grad`` and ``own`` (flattened over all its parameters); nan
    when either is zero. In float64: arccos near 1 turns float32 rounding into hundredths of a degree."""
    actual = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                        for p in encoder.parameters()])
    alone = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                       for g, p in zip(own, encoder.parameters())])
    denom = actual.norm() * alone.norm()
    if denom == 0:
        return float("nan")
    return float(torch.rad2deg(torch.arccos(torch.clamp(actual @ alone / denom, -1.0, 1.0))))


def angle_row(angles: list[float], modality: str) -> dict[str, float]:
    """The epoch's mean angle as a log row entry ``grad_angle_<modality>`` (none when off or all nan)."""
    finite = [a for a in angles if np.isfinite(a)]
    return {f"grad_angle_{modality}": float(np.mean(finite))} if modality and finite else {}
