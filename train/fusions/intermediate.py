"""Intermediate fusions: the shared machinery of models whose cross-modal modules act between the ResNet stages
(MMTM: :mod:`train.fusions.mmtm`; CentralNet: :mod:`train.fusions.centralnet`).

Shape legend: B batch, T video frames, K modalities, C classes, D feature dim (= 8 * width),
C_i channels of ResNet stage i (width * 2**(i-1)), h/w a stage's feature-map height/width.

Both models keep :class:`~train.models.AVModel`'s interface (``modalities``, ``encoders``, ``heads``,
``fusion``, ``feature_dim``, ``forward(inputs, keep, mask, skip_masked) -> ModelOutput``,
``predict_dropout``): the encoders are the usual :data:`~train.models.ENCODERS` (each holding a
:class:`~train.models.ResNetTrunk` as ``.trunk``), but their stages are run one at a time so that
the cross-modal modules can act between them. A video trunk runs the frames as [B*T, ...];
cross-modal modules see it averaged over T. ``features`` are the trunks' final pooled outputs
(video averaged over T, exactly as :class:`~train.models.VisualEncoder`), fed to the unimodal heads.

Masking (``keep`` [B, K]):

* ``mask="input"``: dropped samples' inputs are zeroed before the trunk, as in AVModel; the
  cross-modal modules see the trunk's response to that zero input.
* ``mask="feature"``: every trunk runs on the real input. MMTM: only the *final* features of the
  dropped samples are zeroed (for the heads and the fusion head); the MMTM modules inside the trunks
  saw the real feature maps, so the other modalities' features still carry information from the
  dropped one. CentralNet: the central branch is the fusion, so the dropped samples' hidden states
  entering it are zeroed at every stage (the exact analogue of late-fusion feature masking: no
  information from a dropped modality reaches the fused logits); the unimodal trunks never see
  other modalities.
* ``skip_masked=True`` (input masking only): a modality dropped for the whole batch is not run at
  all; the cross-modal modules get zeros in its place (MMTM: a zero squeeze vector; CentralNet: a
  zero hidden state), its features are zeros and its encoder's gradients stay None.

``raw`` (the final features of modalities whose trunk saw every sample's real input) depends, with
MMTM, on the other modalities too: it is what the trunk produced in this forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from train.fusions.concat import ConcatFusion
from train.models import AudioEncoder, AVModel, ModelOutput, ResNetTrunk, VisualEncoder

__all__ = ["IntermediateModel", "IntermediateOutput", "STAGES", "stage_channels"]

STAGES = (1, 2, 3, 4)


@dataclass
class IntermediateOutput(ModelOutput):
    """ModelOutput plus ``scales``: MMTM's excitations, name -> one detached [B, C_i] per MMTM stage
    (as computed, before any override; empty for CentralNet and for skipped modalities)."""

    scales: dict[str, list[Tensor]] = field(default_factory=dict)


def stage_channels(trunk: ResNetTrunk) -> list[int]:
    """[C_1, C_2, C_3, C_4] output channels of the trunk's stages."""
    return [getattr(trunk, f"layer{i}")[-1].conv2.out_channels for i in STAGES]


class IntermediateModel(AVModel):
    """Base of the intermediate fusions: runs the K trunks stage by stage; subclasses act between stages.

    A subclass with a ``name`` (the ``train.fusion`` value) in a module of :mod:`train.fusions` is registered
    there and built as ``cls(encoders, feature_dim, num_classes)``. Its fusion head starts as
    :class:`~train.fusions.concat.ConcatFusion` on the final features (a subclass may replace it).
    """

    min_modalities = 2
    late_fusion = False  # cross-modal modules act inside the trunks: zeroing final features does not remove a modality

    def __init__(self, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int):
        super().__init__(encoders, feature_dim, num_classes, fusion=ConcatFusion)
        self.fusion_name = getattr(type(self), "name", type(self).__name__)
        if len(self.modalities) < self.min_modalities:
            raise ValueError(f"{type(self).__name__} needs >= {self.min_modalities} modalities, got {self.modalities}")
        for m, enc in self.encoders.items():
            if not isinstance(getattr(enc, "trunk", None), ResNetTrunk):
                raise ValueError(f"{type(self).__name__}: encoder {m!r} ({type(enc).__name__}) has no ResNetTrunk "
                                 f"`.trunk`; intermediate fusion needs the ResNet encoders")
            if enc.trunk.feature_dim != feature_dim:
                raise ValueError(f"encoder {m!r} has feature dim {enc.trunk.feature_dim}, expected {feature_dim}")
        self.channels = {m: stage_channels(self.encoders[m].trunk) for m in self.modalities}  # name -> [C_1..C_4]

    @classmethod
    def build(cls, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int) -> "IntermediateModel":
        """The whole model (the registry's entry point, as :meth:`train.fusions.base.Fusion.build`)."""
        return cls(encoders, feature_dim, num_classes)

    # -- the trunks, one stage at a time --------------------------------------------------------
    def _stem(self, name: str, x: Tensor) -> tuple[Tensor, int]:
        """An encoder's input -> ([B*T, C_1, h, w] after stem and stage 1 input, T)."""
        enc = self.encoders[name]
        if isinstance(enc, VisualEncoder) or (not isinstance(enc, AudioEncoder) and x.dim() == 5):
            if x.dim() != 5:
                raise ValueError(f"{name}: expects [B, T, 3, H, W], got {tuple(x.shape)}")
            t, x = x.shape[1], x.flatten(0, 1)  # [B*T, 3, H, W]
        else:
            if x.dim() == 3:  # [B, F, L] -> [B, 1, F, L]
                x = x.unsqueeze(1)
            if x.dim() != 4 or x.shape[1] != enc.trunk.conv1.in_channels:
                raise ValueError(f"{name}: expects [B, {enc.trunk.conv1.in_channels}, F, L], got {tuple(x.shape)}")
            t = 1
        tr = enc.trunk
        return tr.maxpool(tr.relu(tr.bn1(tr.conv1(x)))), t

    def _pool(self, name: str, h: Tensor, t: int) -> Tensor:
        """[B*T, D, h, w] -> [B, D]: the trunk's pooling, then the mean over T (as VisualEncoder)."""
        feats = torch.flatten(self.encoders[name].trunk.avgpool(h), 1)  # [B*T, D]
        return feats.view(feats.shape[0] // t, t, -1).mean(dim=1)

    # -- subclass hooks --------------------------------------------------------------------------
    def _after_stage(self, i: int, maps: dict[str, Tensor], frames: dict[str, int], batch: int, state: dict) -> None:
        """Called after stage ``i`` of every running trunk; may replace ``maps[name]`` ([B*T, C_i, h, w])."""

    def _fused(self, features: dict[str, Tensor], state: dict) -> Tensor:
        """[B, C] fused logits from the (masked) final features and what the stages left in ``state``."""
        return self.fusion(features)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, Tensor], keep: Tensor | None = None, mask: str = "input",
                skip_masked: bool = False, **options) -> IntermediateOutput:
        """As :meth:`AVModel.forward`, with the cross-modal modules between the stages (module docstring).
        ``options`` are the subclass's own (MMTM: ``excitation_override``)."""
        keep, batch = self._check_call(inputs, keep, mask, skip_masked)

        maps: dict[str, Tensor] = {}  # running trunks: name -> [B*T, C_i, h, w]
        frames: dict[str, int] = {}  # name -> T
        real: dict[str, bool] = {}  # the trunk sees every sample's real input
        cols: dict[str, Tensor | None] = {}  # name -> [B] kept samples (None: all)
        for k, m in enumerate(self.modalities):
            col = None if keep is None or bool(keep[:, k].all()) else keep[:, k]
            cols[m] = col
            if skip_masked and col is not None and not bool(col.any()):
                continue  # not run: zeros everywhere
            if m not in inputs:
                raise KeyError(f"missing input for modality {m!r}")
            x = inputs[m]
            if col is not None and mask == "input":
                x = x.masked_fill(~col.view(-1, *[1] * (x.dim() - 1)), 0)  # zero dropped samples
            real[m] = col is None or mask == "feature"
            maps[m], frames[m] = self._stem(m, x)
        state: dict = {"cols": cols, "mask": mask, "options": options, "scales": {}}
        for i in STAGES:
            for m in maps:
                maps[m] = getattr(self.encoders[m].trunk, f"layer{i}")(maps[m])
            self._after_stage(i, maps, frames, batch, state)

        features: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}
        for m in self.modalities:
            if m not in maps:
                features[m] = self._zeros(batch, keep.device)
                continue
            feat = self._pool(m, maps[m], frames[m])  # [B, D]
            if real[m]:
                raw[m] = feat
            col = cols[m]
            features[m] = feat if col is None or mask == "input" else feat.masked_fill(~col[:, None], 0)
        unimodal = {m: self.heads[m](features[m]) for m in self.modalities}  # name -> [B, C]
        return IntermediateOutput(fused=self._fused(features, state), unimodal=unimodal, features=features, raw=raw,
                                  scales=state["scales"])

    def predict_dropout(self, inputs: dict[str, Tensor], modality: str) -> Tensor:
        """Fused logits [B, C] from ``modality`` alone: every other trunk is skipped, so the cross-modal
        modules get zeros in its place and its final features are zeros. Only inputs[modality] is needed."""
        if modality not in self.encoders:
            raise KeyError(f"unknown modality {modality!r}; have {self.modalities}")
        x = inputs[modality]
        keep = torch.tensor([m == modality for m in self.modalities], device=x.device).expand(x.shape[0], -1)
        return self.forward({modality: x}, keep=keep, mask="input", skip_masked=True).fused
