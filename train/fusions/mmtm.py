"""mmtm: the Multimodal Transfer Module between ResNet stages 2, 3 and 4 (an intermediate fusion).

Shape legend: B batch, T video frames, K modalities, C classes, D feature dim, C_i channels of ResNet stage i.
Masking and ``skip_masked``: :mod:`train.fusions.intermediate`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.fusions.intermediate import IntermediateModel

__all__ = ["MMTM", "MMTMModel", "MMTM_RATIO", "MMTM_STAGES"]

MMTM_RATIO = 4  # MMTM reduction ratio: the joint code Z has int(2 * sum_k C_k / MMTM_RATIO) units (authors' code)
MMTM_STAGES = (2, 3, 4)  # MMTM modules after these ResNet stages (the MMTM and Greedy papers' ResNet placement)


def _squeeze(h: Tensor, t: int) -> Tensor:
    """[B*T, C_i, h, w] -> [B, C_i]: global average over space and frames."""
    return h.reshape(h.shape[0] // t, t, h.shape[1], -1).mean(dim=(1, 3))


class MMTM(nn.Module):
    """Multimodal Transfer Module (Joze, Shaban, Iuzzolino, Koishida, CVPR 2020) for K >= 2 modalities.

    Squeezes S_k [B, C_k] (global averages of each feature map) are concatenated;
    Z = ReLU(W [S_1, ..., S_K] + b) [B, C_Z], C_Z = int(2 * sum_k C_k / ratio) (the authors' code; the
    ReLU as in their code and in squeeze-and-excitation); the excitation of modality k is
    E_k = 2 * sigmoid(W_k Z + b_k) [B, C_k] (the paper's 2*sigmoid: 1 at zero, able to amplify and to
    suppress), multiplying that modality's channels.
    """

    def __init__(self, channels: dict[str, int], ratio: int = MMTM_RATIO):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"MMTM needs >= 2 modalities, got {list(channels)}")
        self.modalities = list(channels)
        self.code_dim = max(1, int(2 * sum(channels.values()) / ratio))
        self.squeeze = nn.Linear(sum(channels.values()), self.code_dim)
        self.excite = nn.ModuleDict({m: nn.Linear(self.code_dim, c) for m, c in channels.items()})

    def forward(self, squeezed: dict[str, Tensor]) -> dict[str, Tensor]:
        """name -> S_k [B, C_k] (zeros for a skipped modality) -> name -> E_k [B, C_k] in (0, 2)."""
        z = F.relu(self.squeeze(torch.cat([squeezed[m] for m in self.modalities], dim=1)))  # [B, C_Z]
        return {m: 2 * torch.sigmoid(self.excite[m](z)) for m in self.modalities}


class MMTMModel(IntermediateModel):
    """K ResNet trunks with an :class:`MMTM` after stages 2, 3 and 4 (``MMTM_STAGES``).

    After stage i every running trunk's map [B*T, C_i, h, w] is squeezed (global average over space,
    and over T for video), the stage's MMTM computes each modality's excitation [B, C_i] from all the
    squeezes, and each map is multiplied channel-wise by its excitation (repeated over T) before the
    next stage (after stage 4: before the pooling). The fused head is ``ConcatFusion``: Linear(K*D, C)
    on the final features (so the modality shares are concat's); the MMTM paper's comparison and the
    Greedy authors' code use a late classifier on the final features too (the latter the mean of
    per-branch logits).

    forward option ``excitation_override``: name -> one [C_i] per MMTM stage, used instead of the
    computed excitation of that modality (Greedy's re-balancing steps: no cross-modal flow into it).
    """

    name = "mmtm"

    def __init__(self, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int):
        super().__init__(encoders, feature_dim, num_classes)
        self.mmtm = nn.ModuleDict({str(i): MMTM({m: self.channels[m][i - 1] for m in self.modalities})
                                   for i in MMTM_STAGES})

    def _after_stage(self, i, maps, frames, batch, state):
        if i not in MMTM_STAGES:
            return
        ref = next(iter(maps.values()))
        squeezed = {m: _squeeze(maps[m], frames[m]) if m in maps else
                    ref.new_zeros(batch, self.channels[m][i - 1]) for m in self.modalities}  # name -> [B, C_i]
        scales = self.mmtm[str(i)](squeezed)
        override = state["options"].get("excitation_override") or {}
        for m in maps:
            state["scales"].setdefault(m, []).append(scales[m].detach())
            e = scales[m]
            if m in override:
                e = override[m][MMTM_STAGES.index(i)].to(e.dtype).expand_as(e)  # [B, C_i]
            e = e.repeat_interleave(frames[m], dim=0) if frames[m] > 1 else e  # [B*T, C_i]
            maps[m] = maps[m] * e[:, :, None, None]

    def forward(self, inputs, keep=None, mask="input", skip_masked=False, *, excitation_override=None):
        return super().forward(inputs, keep=keep, mask=mask, skip_masked=skip_masked,
                               excitation_override=excitation_override)
