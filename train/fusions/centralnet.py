"""centralnet: CentralNet's central branch fed by every ResNet stage (an intermediate fusion).

Shape legend: B batch, T video frames, K modalities, C classes, D feature dim, C_i channels of ResNet stage i.
Masking and ``skip_masked``: :mod:`train.fusions.intermediate`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.fusions.intermediate import STAGES, IntermediateModel
from train.models import init_like_resnet

__all__ = ["CentralNetFusion", "CentralNetModel", "CENTRAL_GRID"]

CENTRAL_GRID = (16, 8, 4, 2)  # CentralNet: side of the square grid every modality's stage-i map is pooled to


class CentralNetFusion(nn.Module):
    """The central branch of CentralNet (Vielzeuf, Lechervy, Pateux, Jurie, ECCV-W 2018), K >= 2.

    Input: for every modality k and stage i = 1..4, its hidden state P_k^i(pool_i(h_k^i)) [B, c_i, g_i, g_i]
    (:meth:`hidden`): the trunk's stage-i map averaged over T (video), average-pooled to a g_i x g_i grid
    (``CENTRAL_GRID`` = 16, 8, 4, 2) and projected to c_i = max_k C_i^k channels by a 1x1 conv P_k^i
    (no bias: a zero hidden state stays zero). The branch (paper eq.: h_C^{i+1} = f(alpha_C^i h_C^i +
    sum_k alpha_k^i h_k^i)):

        s_1 = sum_k alpha_k^1 h_k^1
        s_i = alpha_C^i c_{i-1} + sum_k alpha_k^i h_k^i,   i = 2, 3, 4
        c_i = ReLU(BN(conv3x3 stride 2 (s_i)))            i = 1, 2, 3: [B, c_{i+1}, g_{i+1}, g_{i+1}]
        fused logits = Linear(c_4, C)(global average of s_4)

    The alphas are learned scalars (``alpha_modal`` [4, K], ``alpha_central`` [3]), initialised to 1.
    The paper also trains the central branch with the unimodal losses; here the loss is the method's
    (``baseline_loss: eq1`` / remix warm-up add them).
    """

    def __init__(self, modalities: list[str], channels: dict[str, list[int]], num_classes: int):
        super().__init__()
        self.modalities = list(modalities)
        self.central = [max(channels[m][i] for m in self.modalities) for i in range(len(STAGES))]  # [c_1..c_4]
        self.proj = nn.ModuleDict({m: nn.ModuleList([nn.Conv2d(channels[m][i], c, 1, bias=False)
                                                     for i, c in enumerate(self.central)]) for m in self.modalities})
        self.alpha_modal = nn.Parameter(torch.ones(len(STAGES), len(self.modalities)))  # [4, K]
        self.alpha_central = nn.Parameter(torch.ones(len(STAGES) - 1))  # [3]
        self.layers = nn.ModuleList([nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False),
                                                   nn.BatchNorm2d(b), nn.ReLU(inplace=True))
                                     for a, b in zip(self.central[:-1], self.central[1:])])
        self.fc = nn.Linear(self.central[-1], num_classes)
        init_like_resnet(self)

    def hidden(self, name: str, i: int, h: Tensor, t: int) -> Tensor:
        """Stage ``i`` (1..4) map [B*T, C_i, h, w] of ``name`` -> its hidden state [B, c_i, g_i, g_i]."""
        h = h.reshape(h.shape[0] // t, t, *h.shape[1:]).mean(dim=1)  # [B, C_i, h, w]
        g = CENTRAL_GRID[i - 1]
        return self.proj[name][i - 1](F.adaptive_avg_pool2d(h, g))  # linear maps: pooling first is cheaper

    def forward(self, hidden: dict[str, list[Tensor | None]]) -> Tensor:
        """name -> its 4 hidden states (None: a skipped modality, i.e. zeros) -> fused logits [B, C]."""
        if any(isinstance(v, Tensor) for v in hidden.values()):
            raise ValueError("CentralNet's fusion needs every stage's hidden states (name -> list of 4), not the final "
                             "features; use the model's forward or predict_dropout")
        s = c = None
        for i in range(len(STAGES)):
            terms = [self.alpha_modal[i, k] * hidden[m][i] for k, m in enumerate(self.modalities)
                     if hidden.get(m) is not None and hidden[m][i] is not None]
            if c is not None:
                terms.append(self.alpha_central[i - 1] * c)
            if not terms:
                raise ValueError("CentralNet: no modality has hidden states")
            s = torch.stack(terms).sum(0)  # [B, c_i, g_i, g_i]
            if i < len(self.layers):
                c = self.layers[i](s)  # [B, c_{i+1}, g_{i+1}, g_{i+1}]
        return self.fc(s.mean(dim=(2, 3)))  # [B, C]


class CentralNetModel(IntermediateModel):
    """K ResNet trunks (unchanged by the others) and a :class:`CentralNetFusion` central branch as ``fusion``;
    the unimodal heads classify each trunk's final features, the central branch gives the fused logits.
    The central branch has no per-modality share of its logits (no ``modality_shares``): it is fed by every
    stage's hidden states, not by the final features alone."""

    name = "centralnet"

    def __init__(self, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int):
        super().__init__(encoders, feature_dim, num_classes)  # (builds a ConcatFusion first: same RNG use as ever)
        self.fusion = CentralNetFusion(self.modalities, self.channels, num_classes)

    def _after_stage(self, i, maps, frames, batch, state):
        hidden = state.setdefault("hidden", {m: [] for m in self.modalities})
        for m in self.modalities:
            if m not in maps:
                hidden[m].append(None)
                continue
            hm = self.fusion.hidden(m, i, maps[m], frames[m])  # [B, c_i, g_i, g_i]
            col = state["cols"][m]
            if col is not None and state["mask"] == "feature":
                hm = hm.masked_fill(~col[:, None, None, None], 0)  # feature masking: the central branch sees zeros
            hidden[m].append(hm)

    def _fused(self, features, state):
        return self.fusion({m: (None if all(h is None for h in v) else v) for m, v in state["hidden"].items()})
