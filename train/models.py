"""Per-modality encoders, unimodal heads and the model around a fusion head for Data Remixing (K >= 2 modalities).

Shape legend used in comments and docstrings:
    B batch, T video frames, F mel bins, L mel frames, H/W frame height/width,
    D feature dim (= 8 * width for the ResNet encoders), C classes, K modalities.

The model (`AVModel`) has one encoder per modality, each followed by its own unimodal
classification head Linear(D, C), and one fusion head mapping all features to fused logits.
Modalities are identified by name; their order (`AVModel.modalities`) is the column order of
the `keep` mask [B, K]. The fusions (heads and intermediate-fusion models) and `build_model`
are in `train.fusions`, one file each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

__all__ = [
    "init_like_resnet", "init_norm_weights", "BN_INITS", "ResNetTrunk", "AudioEncoder", "VisualEncoder", "ENCODERS",
    "ModelOutput", "AVModel", "MASK_MODES",
]

MASK_MODES = ("input", "feature")


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------

def init_like_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation of every Conv2d (Kaiming normal, fan-out) and BatchNorm2d (1, 0) inside."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


BN_INITS = ("ones", "normal")


def init_norm_weights(module: nn.Module, mode: str) -> nn.Module:
    """``module`` as built (``"ones"``: every BatchNorm2d weight 1, torchvision's; draws nothing), or with the weight
    of every BatchNorm2d inside drawn from N(1, 0.02) (``"normal"``: the official Data Remixing backbone's
    initialisation) from torch's global generator, in module order."""
    if mode not in BN_INITS:
        raise ValueError(f"bn_init must be {' | '.join(BN_INITS)}, got {mode!r}")
    if mode == "normal":
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
    return module


class ResNetTrunk(nn.Module):
    """ResNet-18 topology (torchvision BasicBlock, layers [2, 2, 2, 2]) with base width `width`.

    Stages have width, 2w, 4w, 8w channels; stem is conv7x7/2 + BN + ReLU + maxpool3x3/2 as in
    torchvision. Maps [N, in_channels, h, w] -> [N, 8 * width] (global average pooling).
    width=64 is the standard ResNet-18. Initialised as torchvision does (trained from scratch).
    """

    def __init__(self, in_channels: int, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0], stride=1)
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 8 * width * BasicBlock.expansion
        init_like_resnet(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        mods = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        mods += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:  # [N, c, h, w] -> [N, D]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class AudioEncoder(nn.Module):
    """Log-mel [B, 1, F, L] (or [B, F, L]) -> [B, D], D = 8 * width; a one-channel ResNet-18."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.trunk = ResNetTrunk(in_channels=1, width=width)
        self.feature_dim = self.trunk.feature_dim

    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() == 3:  # [B, F, L] -> [B, 1, F, L]
            mel = mel.unsqueeze(1)
        if mel.dim() != 4 or mel.shape[1] != 1:
            raise ValueError(f"AudioEncoder expects [B, 1, F, L], got {tuple(mel.shape)}")
        return self.trunk(mel)  # [B, D]


class VisualEncoder(nn.Module):
    """Frames [B, T, 3, H, W] -> [B, D]: a 2D ResNet-18 on every frame, features averaged over T."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.trunk = ResNetTrunk(in_channels=3, width=width)
        self.feature_dim = self.trunk.feature_dim

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dim() != 5:
            raise ValueError(f"VisualEncoder expects [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        feats = self.trunk(frames.flatten(0, 1))  # [B*T, D]
        return feats.view(b, t, -1).mean(dim=1)  # [B, D]


# name -> encoder class called as cls(width); its output must be [B, 8 * width].
ENCODERS: dict[str, Callable[[int], nn.Module]] = {"audio": AudioEncoder, "video": VisualEncoder}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

@dataclass
class ModelOutput:
    """fused [B, C]; unimodal: name -> [B, C] (unimodal heads on the (masked) features);
    features: name -> [B, D] (after masking; zeros for skipped encoders);
    raw: name -> [B, D], the encoder's output on the real input before masking, for the modalities
    whose encoder saw every sample's real input (all with mask="feature"; unmasked ones with "input")."""

    fused: Tensor
    unimodal: dict[str, Tensor]
    features: dict[str, Tensor]
    raw: dict[str, Tensor] = field(default_factory=dict)


class AVModel(nn.Module):
    """K encoders (name -> module mapping its input to [B, D]), K unimodal heads Linear(D, C),
    one fusion head dict[name, [B, D]] -> [B, C].

    `fusion`: the head's class (e.g. `train.fusions.concat.ConcatFusion`), called as
    `fusion(modalities, feature_dim, num_classes)` after the unimodal heads are made (the order of
    parameter creation, hence the initial weights, is that of the original model), or a head module
    already built. `fusion_name` is the class's `name` (the `train.fusion` value). Build a model by
    name with `train.fusions.build_model`.

    `self.modalities` is the order of `encoders` and the column order of `keep` [B, K].
    """

    late_fusion = True  # the fused logits are self.fusion(final features): nothing mixes the modalities before
    bn_slices = 1  # training batches are encoded in this many chunks for BatchNorm (train.bn_split; _sliced)

    def __init__(self, encoders: dict[str, nn.Module], feature_dim: int, num_classes: int,
                 fusion: Callable[[list[str], int, int], nn.Module] | nn.Module):
        super().__init__()
        if not encoders:
            raise ValueError("at least one encoder is needed")
        if isinstance(fusion, str) or not callable(fusion):
            raise TypeError(f"AVModel: fusion must be a fusion head class (or module), got {fusion!r}; "
                            f"build a model by fusion name with train.fusions.build_model")
        self.modalities: list[str] = list(encoders)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.fusion_name = getattr(fusion, "name", None) or getattr(fusion, "__name__", type(fusion).__name__)
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict({m: nn.Linear(feature_dim, num_classes) for m in self.modalities})
        self.fusion = fusion if isinstance(fusion, nn.Module) else fusion(self.modalities, feature_dim, num_classes)

    @property
    def has_modality_shares(self) -> bool:
        """Whether the fusion head can split its logits by modality (:meth:`modality_shares`)."""
        return callable(getattr(self.fusion, "modality_shares", None))

    def modality_shares(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """name -> [B, C] (float32): each modality's share of the fusion head's logits on `features`
        (name -> [B, D], e.g. `ModelOutput.features`), as the head defines it (`Fusion.modality_shares`)."""
        if not self.has_modality_shares:
            raise ValueError(f"no per-modality share of the {type(self.fusion).__name__} head (train.fusion "
                             f"{self.fusion_name!r}): it has no modality_shares; a head on the final features has")
        return self.fusion.modality_shares(features)

    def _check_keep(self, keep: Tensor | None, batch: int | None) -> Tensor | None:
        if keep is None:
            return None
        if keep.dim() != 2 or keep.shape[1] != len(self.modalities):
            raise ValueError(f"keep must be [B, K={len(self.modalities)}] (columns {self.modalities}), "
                             f"got {tuple(keep.shape)}")
        if batch is not None and keep.shape[0] != batch:
            raise ValueError(f"keep has {keep.shape[0]} rows, inputs have batch {batch}")
        return keep if keep.dtype == torch.bool else keep != 0

    def _check_call(self, inputs: dict[str, Tensor], keep: Tensor | None, mask: str,
                    skip_masked: bool) -> tuple[Tensor | None, int]:
        """Validate forward()'s arguments; return the bool keep mask (or None) and the batch size B."""
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {MASK_MODES}, got {mask!r}")
        if skip_masked and mask != "input":
            raise ValueError("skip_masked=True is only valid with mask='input'")
        present = [inputs[m] for m in self.modalities if m in inputs]
        batch = present[0].shape[0] if present else None
        keep = self._check_keep(keep, batch)
        if batch is None:
            if keep is None:
                raise KeyError(f"no inputs for any of {self.modalities}")
            batch = keep.shape[0]
        return keep, batch

    def _encode(self, name: str, x: Tensor) -> Tensor:
        encoder = self.encoders[name]
        feat = self._sliced(encoder, x) if self.training and self.bn_slices > 1 else encoder(x)
        if feat.dim() != 2 or feat.shape[1] != self.feature_dim:
            raise ValueError(f"encoder {name!r} returned {tuple(feat.shape)}, expected [B, {self.feature_dim}]")
        return feat  # [B, D]

    def _sliced(self, encoder: nn.Module, x: Tensor) -> Tensor:
        """``encoder`` on ``x`` in ``bn_slices`` chunks (``Tensor.chunk``, as nn.DataParallel scatters a batch over
        its devices): each BatchNorm normalises a chunk with that chunk's statistics, and only the first chunk's
        statistics move the running ones (DataParallel keeps the first replica's buffers)."""
        parts = x.chunk(self.bn_slices)
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        out = [encoder(parts[0])]
        try:
            for m in norms:
                m.track_running_stats = False  # in train mode: batch statistics, running buffers left as they are
            out += [encoder(p) for p in parts[1:]]
        finally:
            for m in norms:
                m.track_running_stats = True
        return torch.cat(out)

    def _zeros(self, batch: int, device: torch.device) -> Tensor:
        w = self.heads[self.modalities[0]].weight
        return torch.zeros(batch, self.feature_dim, device=device, dtype=w.dtype)

    def forward(self, inputs: dict[str, Tensor], keep: Tensor | None = None, mask: str = "input",
                skip_masked: bool = False) -> ModelOutput:
        """Encode, mask, classify.

        inputs: name -> that encoder's input (first dim B). keep: bool [B, K], None = keep all.
        mask="input": dropped samples' inputs are zeroed before the encoder (the paper's text);
        mask="feature": the encoder outputs are zeroed (the official code).
        skip_masked (mask="input" only): a modality dropped for the whole batch is not encoded at
        all; its features are zeros and its encoder gets no gradient (grad stays None; use
        find_unused_parameters=True under DDP). Its input may then be absent from `inputs`.
        Modalities only partly dropped are input-masked as usual.
        """
        keep, batch = self._check_call(inputs, keep, mask, skip_masked)

        features: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}
        for k, m in enumerate(self.modalities):
            col = None if keep is None else keep[:, k]  # [B]
            if skip_masked and col is not None and not bool(col.any()):
                features[m] = self._zeros(batch, col.device)
                continue
            if m not in inputs:
                raise KeyError(f"missing input for modality {m!r}")
            x = inputs[m]
            if col is not None and not bool(col.all()):
                if mask == "input":
                    x = x.masked_fill(~col.view(-1, *[1] * (x.dim() - 1)), 0)  # zero dropped samples
                    features[m] = self._encode(m, x)
                else:
                    raw[m] = self._encode(m, x)  # [B, D]
                    features[m] = raw[m].masked_fill(~col[:, None], 0)
            else:
                features[m] = raw[m] = self._encode(m, x)

        unimodal = {m: self.heads[m](features[m]) for m in self.modalities}  # name -> [B, C]
        return ModelOutput(fused=self.fusion(features), unimodal=unimodal, features=features, raw=raw)

    def predict_dropout(self, inputs: dict[str, Tensor], modality: str) -> Tensor:
        """Fused-head logits [B, C] from `modality` alone: every other modality's features are
        zeroed (the paper's 'unimodal prediction by dropout'). Only inputs[modality] is needed."""
        if modality not in self.encoders:
            raise KeyError(f"unknown modality {modality!r}; have {self.modalities}")
        feat = self._encode(modality, inputs[modality])  # [B, D]
        feats = {m: feat if m == modality else torch.zeros_like(feat) for m in self.modalities}
        return self.fusion(feats)  # [B, C]

