"""Shared sizes and helpers of the intermediate-fusion tests (tests/train/fusions/test_{intermediate,mmtm,centralnet}.py)."""
from __future__ import annotations

import torch

W, C, B, T = 4, 3, 2, 3  # width (D = 32), classes, batch, video frames
D = 8 * W


def av_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, 1, 16, 24, generator=g),  # [B, 1, F, L]
            "video": torch.randn(B, T, 3, 32, 32, generator=g)}  # [B, T, 3, H, W]


def trunk_inputs(model) -> tuple[dict, list]:
    """Forward pre-hooks on each trunk's first conv: name -> its input [B*T, c, h, w]."""
    seen, handles = {}, []
    for name, enc in model.encoders.items():
        handles.append(enc.trunk.conv1.register_forward_pre_hook(
            lambda mod, args, n=name: seen.__setitem__(n, args[0].detach().clone())))
    return seen, handles
