"""Data Remixing (Ma, Chen, Deng, ICML 2025) as a method: per-sample scoring (paper §3.2, eq. 2-3), the
weakest-modality assignment, the scores file, and the remix phase that plugs them into the trainer.

Shapes: N samples of the training split, K modalities, C classes, B batch.

The phase, after ``train.warmup_epochs`` epochs of eq. 1 (extended by the guard while a unimodal head
is near chance): at each epoch's start every training sample is scored by the KL divergence of each
unimodal softmax to uniform (a scoring pass in eval mode, or ``scoring: online``: the previous
epoch's training forwards), keeps only its weakest modality (:func:`assign_weakest`), and the sampler
streams modality-pure batches with the other modalities masked (:class:`EpochPlan`); remix batches of
modality k train on L = L_fused + gamma * L_k. ``ablation: decouple`` mixes the batches,
``ablation: reassemble`` keeps every modality. Each remix epoch's scores and assignments go to
``scores.h5`` (:class:`ScoresFile`).

"X + Remix" is ``class XRemix(Remixing, X)``: :class:`Remixing` adds the phase to any method X and
calls X's hooks for everything else (X's copies are kept: every copy carries its sample's modality).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.inference import predict
from train.losses import assigned_loss, eq1_loss
from train.methods.base import Context, EpochPlan, Method

log = logging.getLogger(__name__)

SCORES_FORMAT_VERSION = 1
SCORES = "scores.h5"  # in the run's folder


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || uniform) per row: sum_c p_c log(p_c C). [B, C] -> [B], >= 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (logp.exp() * (logp + math.log(logits.shape[-1]))).sum(-1).clamp_min(0.0)


def assign_weakest(kl: np.ndarray) -> np.ndarray:
    """Each sample's weakest modality: the one whose prediction is closest to uniform (eq. 3). [N, K] -> [N]."""
    return np.argmin(kl, axis=1).astype(np.int8)


class ScoresFile:
    """``scores.h5``: per remix epoch, the N x K divergences and the N assignments of the training split.

    Datasets ``epoch_EEEE/kl`` [N, K] float32 and ``epoch_EEEE/assign`` [N] int8 (modality code,
    column order = attribute ``modalities``); attributes ``format_version``, ``modalities``,
    ``num_samples``, ``fingerprint`` (:func:`dataset_fingerprint` of the index it scores).
    """

    def __init__(self, path: str | os.PathLike, *, modalities: Sequence[str], num_samples: int, fingerprint: str):
        import h5py

        self.path = Path(path)
        self.modalities, self.num_samples, self.fingerprint = list(modalities), num_samples, fingerprint
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                got = (list(f.attrs["modalities"]), int(f.attrs["num_samples"]), f.attrs["fingerprint"])
            if got != (self.modalities, num_samples, fingerprint):
                raise ValueError(f"{self.path}: scores of another dataset, feature set or modalities "
                                 f"({got[0]}, N={got[1]}); delete it or point the trainer elsewhere")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(self.path, "w") as f:
                f.attrs["format_version"] = SCORES_FORMAT_VERSION
                f.attrs["modalities"] = self.modalities
                f.attrs["num_samples"] = num_samples
                f.attrs["fingerprint"] = fingerprint

    def write(self, epoch: int, kl: np.ndarray, assign: np.ndarray) -> None:
        import h5py

        if kl.shape != (self.num_samples, len(self.modalities)) or assign.shape != (self.num_samples,):
            raise ValueError(f"scores of shape {kl.shape}/{assign.shape}, expected ({self.num_samples}, "
                             f"{len(self.modalities)})")
        with h5py.File(self.path, "a") as f:
            name = f"epoch_{epoch:04d}"
            if name in f:
                del f[name]
            g = f.create_group(name)
            g.create_dataset("kl", data=kl.astype(np.float32))
            g.create_dataset("assign", data=assign.astype(np.int8))

    def epochs(self) -> list[int]:
        import h5py

        with h5py.File(self.path, "r") as f:
            return sorted(int(k.split("_")[1]) for k in f if k.startswith("epoch_"))

    def read(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(kl [N, K], assign [N]) of one epoch."""
        import h5py

        with h5py.File(self.path, "r") as f:
            g = f[f"epoch_{epoch:04d}"]
            return g["kl"][:], g["assign"][:]


class Remixing:
    """The Data Remixing phase as a mix-in: ``class XRemix(Remixing, X)`` is method X with Remix's warm-up guard,
    per-epoch scoring and assignment, and its loss (eq. 1 in warm-up, L_fused + gamma * L_k on remix batches;
    a combination whose X has a loss of its own may keep X's, as ``mla_remix`` does)."""

    def __init__(self, config, modalities, num_classes, params=None):
        super().__init__(config, modalities, num_classes, params)
        self.warmup_end = config.warmup_epochs  # first remix epoch (the guard may move it)
        self.warmup_best = -1.0  # best fused val accuracy of the warm-up
        self.epoch_kl: np.ndarray | None = None  # [N, K] this epoch's online scores (NaN: not seen yet)
        self.last_kl: np.ndarray | None = None  # [N, K] the latest online score of every sample
        self.score_s = 0.0  # seconds spent scoring this epoch

    def phase(self, epoch: int) -> str:
        return "remix" if epoch >= self.warmup_end else "warmup"

    def epoch_start(self, epoch: int, ctx: Context) -> None:
        super().epoch_start(epoch, ctx)
        self.epoch_kl = np.full((ctx.n_train, len(self.modalities)), np.nan, np.float32)
        self.score_s = 0.0

    def plan(self, epoch: int, ctx: Context) -> EpochPlan:
        """X's plan, and in the remix phase each sample's weakest modality (scored now, or online last epoch)."""
        plan = super().plan(epoch, ctx)
        if ctx.phase != "remix":
            return plan
        t0 = time.perf_counter()
        kl = self.scores(epoch, ctx)  # [N, K]
        assign = assign_weakest(kl)
        if ctx.is_main:
            ScoresFile(ctx.work_dir / SCORES, modalities=self.modalities, num_samples=ctx.n_train,
                       fingerprint=ctx.fingerprint).write(epoch, kl, assign)
        self.score_s = time.perf_counter() - t0
        for m, c in zip(self.modalities, np.bincount(assign, minlength=len(self.modalities))):
            if c == 0:
                log.info("epoch %d: no sample is assigned to %s: its subset is skipped", epoch, m)
        ablation = self.config.ablation
        return dataclasses.replace(plan, modality=assign, pure=ablation != "decouple", masked=ablation != "reassemble")

    def scores(self, epoch: int, ctx: Context) -> np.ndarray:
        """[N, K] KL to uniform of every sample's unimodal predictions: online when complete, else a scoring pass."""
        cfg = self.config
        if cfg.scoring == "online" and self.last_kl is not None and not np.isnan(self.last_kl).any():
            return self.last_kl.copy()  # from the training forwards: no scoring pass
        if cfg.scoring == "online":
            log.info("epoch %d: online scores incomplete: a scoring pass instead", epoch)
        pred = predict(ctx.model, ctx.loaders["train_eval"], self.modalities, ctx.device, cfg.unimodal_pred, cfg.amp)
        return np.stack([kl_to_uniform(torch.from_numpy(pred[m])).numpy() for m in self.modalities], 1)

    def masked_gradient(self, ctx: Context) -> str:
        """Remix batches: ``train.masked_grad`` (official: zero, the masked features were zeroed in the graph)."""
        return self.config.masked_grad if ctx.phase == "remix" else super().masked_gradient(ctx)

    def loss(self, model, out, y, m_code, ctx):
        if (m_code < 0).all():  # multimodal batch (warm-up): eq. 1
            return eq1_loss(out, y, self.config.alpha, self.modalities)
        return assigned_loss(out, y, m_code, self.config.gamma, self.modalities)

    def after_step(self, model, out, batch, ctx) -> None:
        """With ``scoring: online``: every head on the step's real features gives those samples' KL for free."""
        super().after_step(model, out, batch, ctx)
        if self.config.scoring != "online":
            return
        with torch.no_grad():
            rows = batch["index"].numpy()
            for j, m in enumerate(self.modalities):
                if m in out.raw:
                    logits = (model.heads[m](out.raw[m]) if self.config.unimodal_pred == "heads" else
                              model.fusion({n: out.raw[m] if n == m else torch.zeros_like(out.raw[m])
                                            for n in self.modalities}))
                    self.epoch_kl[rows, j] = kl_to_uniform(logits).cpu().numpy()

    def epoch_end(self, epoch: int, ctx: Context) -> dict[str, float]:
        row = super().epoch_end(epoch, ctx)
        if self.config.scoring == "online":  # merge the ranks' disjoint online scores
            self.epoch_kl = ctx.merge_disjoint(self.epoch_kl)
            fresh = ~np.isnan(self.epoch_kl)
            self.last_kl = self.epoch_kl.copy() if self.last_kl is None else np.where(fresh, self.epoch_kl, self.last_kl)
        return {**row, "score_s": round(self.score_s, 3)}

    def validated(self, epoch: int, acc: dict[str, float], ctx: Context) -> None:
        """The warm-up guard and the warnings of the paper's stated limitation (docs/training.md)."""
        super().validated(epoch, acc, ctx)
        cfg, chance = self.config, 1.0 / ctx.num_classes
        weak = [m for m in self.modalities if acc[m] < chance + cfg.guard_margin]
        if self.phase(epoch) == "warmup":
            self.warmup_best = max(self.warmup_best, acc["fused"])
            if epoch == self.warmup_end - 1 and weak:
                self._extend_warmup(weak, acc)
            return
        for m in weak:
            log.warning("epoch %d: the %s head is near chance (val %.3f): its KL scores carry little "
                        "information", epoch, m, acc[m])
        if acc["fused"] < self.warmup_best:
            log.warning("epoch %d: fused val accuracy %.3f is below the warm-up best %.3f (the selected "
                        "checkpoint covers warm-up, so the reported model is never worse)", epoch, acc["fused"],
                        self.warmup_best)

    def _extend_warmup(self, weak: list[str], acc: dict[str, float]) -> None:
        cfg = self.config
        if cfg.guard == "extend_warmup" and self.warmup_end < cfg.warmup_epochs + cfg.guard_max_extra_epochs \
                and self.warmup_end < cfg.epochs:
            self.warmup_end += 1
            log.warning("guard: %s head(s) at val accuracy %s, under chance + %.2f: warm-up extended "
                        "to %d epochs", weak, [round(acc[m], 3) for m in weak], cfg.guard_margin, self.warmup_end)
        else:
            log.warning("remixing with %s head(s) near chance (val %s): their KL scores carry little "
                        "information and may hand them most samples", weak, [round(acc[m], 3) for m in weak])

    def summary(self) -> dict:
        return {**super().summary(), "warmup_epochs_used": min(self.warmup_end, self.config.epochs),
                "warmup_best_val_fused": self.warmup_best}

    _STATE = ("warmup_end", "warmup_best", "epoch_kl", "last_kl", "score_s")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "remix": {k: getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state["remix"][k])
        super().load_state_dict({k: v for k, v in state.items() if k != "remix"})


class Remix(Remixing, Method):
    """Data Remixing on joint training: eq. 1 warm-up, then modality-pure masked batches of each sample's weakest
    modality with L = L_fused + gamma * L_k."""

    name = "remix"
