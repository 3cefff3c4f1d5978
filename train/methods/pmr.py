"""PMR (Fan, Xu, Wang, Zhang, Li, CVPR 2023, "PMR: Prototypical Modal Rebalance for Multimodal Learning").

Shapes: B batch, K modalities, C classes, D feature dim, N samples of the training split.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F

from pipeline.params import Config, setting
from train.inference import autocast
from train.methods.base import Context, Method

DISTANCES = ("euclidean", "squared")


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """[B, D] features, [C, D] prototypes -> [B, C] logits -d(h, p_c) (float32)."""
    d2 = (features.float()[:, None, :] - prototypes.float()[None]).pow(2).sum(-1)  # [B, C]
    if distance == "squared":
        return -d2
    return -d2.clamp_min(1e-12).sqrt()  # clamp: a finite (zero) gradient where h equals a prototype


def pmr_weights(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[K] prototype scores s -> ([K] rho_m = s_m / mean_{j != m} s_j, [K] PCE weights, [K] PER weights).

    PCE weight of m: clip(1 / rho_m - 1, 0, 1) where rho_m < 1 (slower than the others), else 0;
    PER weight of m: clip(rho_m - 1, 0, 1) where rho_m > 1 (dominant), else 0. For K = 2 (rho = s_0 / s_1)
    these are the paper's beta, gamma of eq. 11, and eq. 13's entropy weights (gamma on modality 0, beta on 1).
    """
    k = scores.numel()
    others = (scores.sum() - scores) / (k - 1)  # [K]
    rho = scores / others.clamp_min(torch.finfo(scores.dtype).tiny)
    pce = torch.where(rho < 1, (1 / rho - 1).clamp(0, 1), torch.zeros_like(rho))
    per = torch.where(rho > 1, (rho - 1).clamp(0, 1), torch.zeros_like(rho))
    return rho, pce, per


PROTOTYPE_NORMS = ("batch", "running")  # prototype pass: BatchNorm on batch statistics (default) | running (official)


@contextlib.contextmanager
def eval_features(model: torch.nn.Module):
    """The model in eval mode (BatchNorm on its running statistics, as the official code's prototype pass), its
    train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def training_features(model: torch.nn.Module):
    """The model as the training forward computes features, without changing it: BatchNorm on each batch's own
    statistics (its running statistics saved and restored), every other module (dropout) in eval mode; the
    model's train/eval mode restored after."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    model.eval()
    for m in norms:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])
        model.train(was_training)


class PMR(Method):
    """PMR (Fan et al., CVPR 2023): joint training's L_fused (heads as detached probes) plus, per modality,
    a prototypical cross-entropy (PCE) on the encoder features, weighted by how far the modality lags behind
    (eqs. 8-11), and during the first epochs a prototypical entropy regulariser (PER) that slows the dominant
    modality (eq. 13): L = L_base + alpha * sum_m w_m PCE_m - mu * sum_m r_m H_m.

    Prototypes (eq. 6) are the class means of each encoder's features over the training split, computed at
    every epoch start without augmentation (``ctx.loaders["train_eval"]``), blended with the previous epoch's
    as c = momentum * c_old + (1 - momentum) * c_new (eq. 12). Choices:

    * ``prototype_norm: batch`` (default): the prototype pass normalises as the training forward does (BatchNorm
      on batch statistics, running statistics untouched; dropout off), not in eval mode as the official code
      (``prototype_norm: running`` keeps the official code's eval-mode pass): PCE compares training-mode
      features with the prototypes, and with few steps per epoch (12 on the embedded dataset) the running
      statistics lag the weights, so eval-mode means sit far from the training features (video PCE above
      log C, rho up to 1e8) and PCE drags the video encoder after them (issue 13, 3 seeds: test video
      42.8 +- 13.3 %, fused 77.5 % in eval mode; 76.4 +- 2.5 %, fused 86.1 % with batch statistics).
    * distance: Euclidean as the paper and the official code (``distance: squared`` for -||h - c||^2).
    * prototypes from the whole training split (the paper: a 10% subset, to save compute); a class absent
      from it keeps its previous prototype (zeros at first).
    * H_m: the entropy of the prototype distribution softmax(-d(h, c)) of each sample, batch mean (eq. 13
      writes pi(-d(z, c_y)), which we read as the distribution over classes).
    * the PCE and PER weights follow eq. 11 (clipped 1/rho - 1 and rho - 1), not the official code, which
      uses a constant alpha for the slower modality and has no PER. The number of PER epochs is not given
      in the paper ("the first few epochs"): ``per_epochs``.
    * K > 2: rho_m = s_m / mean_{j != m} s_j; for K = 2 this is the paper's rho and 1 / rho.
    * s_m is summed over the global batch (all ranks); the weights are constants (no gradient).
    """

    name = "pmr"

    @dataclasses.dataclass(frozen=True)
    class Params(Config):
        """PMR settings; every key is documented in params.yaml."""

        section = "train.method_params.pmr"

        alpha: float = setting(1.0, min=0.0)
        mu: float = setting(1e-3, min=0.0)
        per_epochs: int = setting(5, min=0)
        momentum: float = setting(0.2, min=0.0, max=1.0, max_exclusive=True)
        distance: str = setting("euclidean", choices=DISTANCES)
        prototype_norm: str = setting("batch", choices=PROTOTYPE_NORMS)

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        if len(self.modalities) < 2:
            raise ValueError(f"pmr needs >= 2 modalities, got {self.modalities}")
        self.prototypes: torch.Tensor | None = None  # [K, C, D] float32, set at every epoch start
        self._reset_stats()

    def _reset_stats(self) -> None:
        k = len(self.modalities)
        self.stats = {"steps": 0, "ratio": [0.0] * k, "pce": [0.0] * k, "per": [0.0] * k}  # sums over the epoch

    # -- prototypes --------------------------------------------------------------------------------
    def epoch_start(self, epoch: int, ctx: Context) -> None:
        self.prototypes = self.compute_prototypes(ctx)
        self._reset_stats()

    @torch.no_grad()
    def class_means(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, C, D] mean encoder feature of each class, [C] samples per class) over ``ctx.loaders["train_eval"]``,
        BatchNorm on batch statistics as in training, the model unchanged after (:func:`training_features`),
        under the trainer's autocast (bf16 on CUDA)."""
        if "train_eval" not in ctx.loaders or ctx.to_inputs is None:
            raise ValueError("pmr: the context has no loaders['train_eval'] / to_inputs to compute prototypes")

        with (training_features if self.params.prototype_norm == "batch" else eval_features)(ctx.model) as model:
            sums: torch.Tensor | None = None  # [K, C, D]
            counts = torch.zeros(self.num_classes, dtype=torch.float64, device=ctx.device)  # [C]
            for batch in ctx.loaders["train_eval"]:
                inputs = ctx.to_inputs(batch)
                y = batch["label"].to(ctx.device).long()  # [B]
                with autocast(ctx.device, getattr(ctx.config, "amp", "none")):  # as the training forward
                    out = model(inputs)  # the whole model: intermediate fusions change the encoder features
                feats = torch.stack([out.features[m].double() for m in self.modalities])  # [K, B, D]
                if sums is None:
                    sums = feats.new_zeros(len(self.modalities), self.num_classes, feats.shape[-1])
                sums.index_add_(1, y, feats)
                counts += torch.bincount(y, minlength=self.num_classes).double()
        if sums is None:
            raise ValueError("pmr: loaders['train_eval'] yielded no batch")
        return (sums / counts.clamp_min(1)[None, :, None]).float(), counts

    def compute_prototypes(self, ctx: Context) -> torch.Tensor:
        """[K, C, D] this epoch's prototypes: class means blended with the previous ones (eq. 12)."""
        means, counts = self.class_means(ctx)
        present = (counts > 0)[None, :, None]  # [1, C, 1]
        if self.prototypes is None:
            return torch.where(present, means, torch.zeros_like(means))
        old = self.prototypes.to(means.device)
        eps = self.params.momentum
        return torch.where(present, eps * old + (1 - eps) * means, old)

    # -- loss ----------------------------------------------------------------------------------------
    def loss(self, model, out, y: torch.Tensor, m_code: torch.Tensor, ctx: Context) -> torch.Tensor:
        base = super().loss(model, out, y, m_code, ctx)
        terms, weights = self.terms(out, y, ctx)
        per_on = ctx.epoch < self.params.per_epochs
        _, pce_w, per_w = weights
        extra = self.params.alpha * (pce_w.float() * terms["pce"]).sum()
        if per_on:
            extra = extra - self.params.mu * (per_w.float() * terms["entropy"]).sum()
        rho = weights[0]
        self.stats["steps"] += 1
        for key, v in (("ratio", rho), ("pce", pce_w), ("per", per_w if per_on else torch.zeros_like(per_w))):
            self.stats[key] = [a + b for a, b in zip(self.stats[key], v.tolist())]
        return base + extra

    def terms(self, out, y: torch.Tensor, ctx: Context) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """({"pce": [K] PCE losses, "entropy": [K] batch-mean prototype entropies}, ([K] rho, [K] PCE weights,
        [K] PER weights)); the scores behind rho are summed over ranks."""
        if self.prototypes is None:
            raise RuntimeError("pmr: no prototypes (epoch_start was not called)")
        y = y.long()
        if self.prototypes.device != y.device:  # after load_state_dict (saved on the CPU)
            self.prototypes = self.prototypes.to(y.device)
        logits = [prototype_logits(out.features[m], self.prototypes[j], self.params.distance)
                  for j, m in enumerate(self.modalities)]  # K x [B, C]
        logp = [F.log_softmax(z, 1) for z in logits]
        pce = torch.stack([F.nll_loss(lp, y) for lp in logp])  # [K]
        entropy = torch.stack([-(lp.exp() * lp).sum(1).mean() for lp in logp])  # [K]
        scores = torch.stack([lp.detach().exp().gather(1, y[:, None]).sum() for lp in logp]).double()  # [K]
        return {"pce": pce, "entropy": entropy}, pmr_weights(ctx.all_sum(scores))

    def epoch_end(self, epoch: int, ctx: Context) -> dict[str, float]:
        n = self.stats["steps"]
        if n == 0:
            return {}
        names = {"ratio": "pmr_ratio", "pce": "pmr_pce_weight", "per": "pmr_per_weight"}
        return {f"{names[key]}_{m}": v / n for key in names for m, v in zip(self.modalities, self.stats[key])}

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"prototypes": None if self.prototypes is None else self.prototypes.detach().cpu().clone(),
                "stats": {k: (list(v) if isinstance(v, list) else v) for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.prototypes = None if state["prototypes"] is None else state["prototypes"].clone()
        self.stats = {k: (list(v) if isinstance(v, list) else v) for k, v in state["stats"].items()}
