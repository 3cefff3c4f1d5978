"""The late-fusion head base class: a module mapping every modality's final features to fused logits.

Shape legend: B batch, D feature dim, C classes, K modalities.

A late fusion is one file of this package holding a :class:`Fusion` subclass with a ``name``: it is
registered by :mod:`train.fusions` and built as ``AVModel(encoders, D, C, fusion=<the class>)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from train.models import AVModel

__all__ = ["Fusion"]


class Fusion(nn.Module):
    """Base class: holds the ordered modality names and gathers features in that order.

    Subclasses set ``name`` (the ``train.fusion`` value), build their layers in ``__init__(modalities,
    feature_dim, num_classes)`` and map ``forward(feats: name -> [B, D]) -> [B, C]``.
    """

    min_modalities = 1

    def __init__(self, modalities: list[str], feature_dim: int, num_classes: int):
        super().__init__()
        self.modalities = list(modalities)
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"duplicate modality names: {self.modalities}")
        if len(self.modalities) < self.min_modalities:
            raise ValueError(f"{type(self).__name__} needs >= {self.min_modalities} modalities, "
                             f"got {self.modalities}")
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    @classmethod
    def build(cls, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int) -> AVModel:
        """The whole model: ``encoders``, their unimodal heads and this class as the fusion head."""
        return AVModel(encoders, feature_dim, num_classes, fusion=cls)

    def _gather(self, feats: dict[str, Tensor]) -> list[Tensor]:
        missing = [m for m in self.modalities if m not in feats]
        if missing:
            raise KeyError(f"fusion is missing features for {missing}")
        return [feats[m] for m in self.modalities]  # K x [B, D]

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """name -> [B, C] (float32): each modality's share of this head's output (OGM-GE's per-modality logits).

        Default (heads that are not additive over modalities): the head with every other modality's features
        zeroed. Additive heads override it with the exact split (the shares then add up to the fused logits).
        """
        feats = {m: features[m].float() for m in self.modalities}  # K x [B, D]
        return {m: self({n: feats[m] if n == m else torch.zeros_like(feats[m]) for n in self.modalities}).float()
                for m in self.modalities}
