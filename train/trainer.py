"""One trainer for every method: joint training (``baseline``) and Data Remixing (``remix``).

Shapes: B batch, K modalities, C classes, N samples of a split.

Per epoch: the remix phase first scores every training sample (eval mode, no augmentation)
with the unimodal heads (or by dropout), assigns each to its weakest modality and writes the
scores file; the sampler then streams modality-pure batches from those assignments with the
other modalities masked. Warm-up epochs train on full multimodal batches with
L = L_fused + alpha * sum_k L_k (paper eq. 1); remix batches of modality k use
L = L_fused + gamma * L_k. The baseline is joint training with L = L_fused (``baseline_loss: fused``,
the field's baseline, whose encoders get no unimodal loss): its unimodal heads are trained on detached
features, a linear probe of each encoder that never moves it; ``baseline_loss: eq1`` trains it
with the warm-up loss instead. The checkpoint is selected on validation over every epoch, warm-up
included; test is evaluated once, on the selected checkpoint, by the evaluate stage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.fileio import atomic_path
from pipeline.params import from_mapping
from pipeline.shards import IndexReader
from train.data import ShardDataset, estimate_mel_stats, make_loader
from train.models import build_model
from train.remix import ScoresFile, assign_weakest, dataset_fingerprint, kl_to_uniform
from train.sampler import RemixBatchSampler

log = logging.getLogger(__name__)

METHODS = ("baseline", "remix")  # plus "only_<modality>": that encoder and its head alone (the laziness probe)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml (and ``base.seed``); every key is documented there."""

    methods: list = dataclasses.field(default_factory=lambda: ["baseline", "remix"])  # runs made by dvc repro
    modalities: list = dataclasses.field(default_factory=lambda: ["audio", "video"])  # encoder names, K >= 2
    fusion: str = "concat"  # concat | sum | decision | film | gated
    width: int = 16  # ResNet-18 base width (64 = standard)
    epochs: int = 16  # total epochs, warm-up included
    warmup_epochs: int = 6  # multimodal warm-up epochs before remixing
    batch_size: int = 32  # global batch (samples)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-4  # AdamW / SGD weight decay
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    schedule: str = "cosine"  # cosine | constant, over all epochs
    alpha: float = 0.5  # warm-up weight of each unimodal loss (paper eq. 1: alpha = beta = 0.5)
    baseline_loss: str = "fused"  # fused: L_fused, heads as probes on detached features | eq1: as warm-up
    gamma: float = 1.0  # remix weight of the assigned modality's unimodal loss
    mask: str = "feature"  # feature (official code) | input (paper text): where other modalities are zeroed
    order: str = "sequential"  # sequential (official code) | interleaved: order of the modality subsets
    ablation: str = "full"  # full | decouple (masking, mixed batches) | reassemble (pure batches, no masking)
    unimodal_pred: str = "heads"  # heads | dropout: how the scoring pass gets unimodal predictions
    skip_masked: bool = False  # input masking: do not run an encoder masked for the whole batch (zeros instead)
    drop_last: bool = False  # drop each modality's last incomplete batch
    guard: str = "extend_warmup"  # none | extend_warmup: warm up until every head beats chance + guard_margin
    guard_margin: float = 0.1  # accuracy above chance each head needs on val before remixing
    guard_max_extra_epochs: int = 4  # extra warm-up epochs the guard may add
    frame_size: int = 80  # px, square crop fed to the visual encoder
    workers: int = 2  # DataLoader worker processes
    device: str = "auto"  # auto (cuda when available) | cpu | cuda

    def __post_init__(self) -> None:
        choices = {"fusion": ("concat", "sum", "decision", "film", "gated"), "optimizer": ("adamw", "sgd"),
                   "schedule": ("cosine", "constant"), "mask": ("input", "feature"),
                   "order": ("sequential", "interleaved"), "ablation": ("full", "decouple", "reassemble"),
                   "unimodal_pred": ("heads", "dropout"), "baseline_loss": ("fused", "eq1"), "guard": ("none", "extend_warmup"),
                   "device": ("auto", "cpu", "cuda")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key}: {getattr(self, key)!r} is not one of {allowed}")
        bad = [m for m in self.methods if m not in METHODS and m.removeprefix("only_") not in self.modalities]
        if bad or not self.methods:
            raise ValueError(f"train.methods: {bad or '[]'} not in {METHODS}")
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"train.modalities: need >= 2 distinct modalities, got {self.modalities}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"train.warmup_epochs: {self.warmup_epochs} not in [0, epochs={self.epochs}]")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainConfig":
        return from_mapping(cls, params, "train")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device: cuda requested but torch.cuda.is_available() is False")
        return torch.device("cuda")
    return torch.device("cpu")


def _inputs(batch: dict, modalities: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    key = {"audio": "mel", "video": "frames"}
    return {m: batch[key.get(m, m)].to(device, non_blocking=True) for m in modalities}


def multimodal_loader(dataset: ShardDataset, *, batch_size: int, workers: int, num_modalities: int, seed: int = 0):
    """A loader over a whole split with every modality present (evaluation and scoring passes)."""
    sampler = RemixBatchSampler(dataset.shard_ids(), batch_size=batch_size, drop_last=False, seed=seed)
    sampler.set_assignment(None, num_modalities)
    return make_loader(dataset, sampler, workers=workers)


def keep_mask(modality: torch.Tensor, k: int) -> torch.Tensor:
    """[B] modality codes (-1 = all) -> [B, K] bool: which modalities each sample keeps."""
    keep = F.one_hot(modality.clamp_min(0).long(), k).bool()
    return keep | (modality < 0)[:, None]


@contextlib.contextmanager
def frozen_norm_stats(model, modalities: list[str]):
    """Run the encoders of ``modalities`` in eval mode: an encoder fed only zeros (input masking) must not
    overwrite its BatchNorm running statistics with those of zeros. Gradients still flow."""
    encoders = [model.encoders[m] for m in modalities if model.encoders[m].training]
    for e in encoders:
        e.eval()
    try:
        yield
    finally:
        for e in encoders:
            e.train()


def step_loss(model, out, y: torch.Tensor, m_code: torch.Tensor, *, method: str, config: TrainConfig) -> torch.Tensor:
    """The loss of one batch. out: the model's output; y [B] labels; m_code [B] assigned modality (-1 = all)."""
    mods = list(config.modalities)
    if method.startswith("only_"):  # unimodal training: the head of the one modality
        return F.cross_entropy(out.unimodal[method.removeprefix("only_")], y)
    loss = F.cross_entropy(out.fused, y)
    if method == "baseline" and config.baseline_loss == "fused":  # joint training; the heads are linear probes
        return loss + sum(F.cross_entropy(model.heads[m](out.features[m].detach()), y) for m in mods)
    if (m_code < 0).all():  # multimodal batch: eq. 1
        return loss + config.alpha * sum(F.cross_entropy(out.unimodal[m], y) for m in mods)
    for j, m in enumerate(mods):  # remix batch(es): each sample adds its assigned modality's loss
        sel = m_code == j
        if sel.any():
            loss = loss + config.gamma * F.cross_entropy(out.unimodal[m][sel], y[sel], reduction="sum") / len(y)
    return loss


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@torch.inference_mode()
def predict(model, loader, modalities: list[str], device, unimodal_pred: str = "heads") -> dict[str, np.ndarray]:
    """Fused and unimodal logits over a whole split, in dataset order: name -> [N, C]."""
    model.eval()
    out: dict[str, list] = {"fused": [], **{m: [] for m in modalities}}
    index, labels = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for batch in loader:
        inputs = _inputs(batch, modalities, device)
        with autocast:
            res = model(inputs)
            out["fused"].append(res.fused.float().cpu())
            for m in modalities:
                logits = model.predict_dropout(inputs, m) if unimodal_pred == "dropout" else res.unimodal[m]
                out[m].append(logits.float().cpu())
        index.append(batch["index"])
        labels.append(batch["label"])
    order = torch.cat(index).argsort()
    result = {k: torch.cat(v)[order].numpy() for k, v in out.items()}
    result["label"] = torch.cat(labels)[order].numpy()
    return result


def accuracies(pred: dict[str, np.ndarray], modalities: list[str]) -> dict[str, float]:
    y = pred["label"]
    return {k: float((pred[k].argmax(1) == y).mean()) for k in ["fused", *modalities]}


def imbalance_ratio(acc: Mapping[str, float], modalities: list[str], num_classes: int) -> float:
    """Strongest over weakest unimodal accuracy above chance (1 = balanced; inf when one is at chance)."""
    chance = 1.0 / num_classes
    above = [max(acc[m] - chance, 0.0) for m in modalities]
    return float(max(above) / min(above)) if min(above) > 0 else float("inf")


def train(*, index_path: str | os.PathLike, out_dir: str | os.PathLike, method: str, config: TrainConfig,
          seed: int) -> dict:
    """Train ``method`` on the shards of ``index_path``; write ``model.pt``, ``scores.h5``, ``log.json`` to ``out_dir``.

    Returns the training summary (best epoch, its validation accuracies, per-epoch log).
    """
    from dvclive import Live

    cfg, mods, k = config, list(config.modalities), len(config.modalities)
    only = method.removeprefix("only_") if method.startswith("only_") else None
    if method not in METHODS and only not in mods:
        raise ValueError(f"method {method!r}: not one of {METHODS} or only_<one of {mods}>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    device = pick_device(cfg.device)
    index = IndexReader(index_path)
    num_classes = len(index.class_names)
    mel_mean, mel_std = estimate_mel_stats(index, "train")
    ds = {s: ShardDataset(index, s, train=(s == "train"), frame_size=cfg.frame_size, mel_mean=mel_mean,
                          mel_std=mel_std, seed=seed) for s in ("train", "val")}
    score_ds = ShardDataset(index, "train", train=False, frame_size=cfg.frame_size, mel_mean=mel_mean,
                            mel_std=mel_std)
    n_train = len(ds["train"])
    sampler = RemixBatchSampler(ds["train"].shard_ids(), batch_size=cfg.batch_size, drop_last=cfg.drop_last,
                                seed=seed, order=cfg.order, pure=cfg.ablation != "decouple")
    loader = make_loader(ds["train"], sampler, workers=cfg.workers)

    val_loader, score_loader = (multimodal_loader(d, batch_size=max(cfg.batch_size, 64), workers=cfg.workers,
                                                  num_modalities=k, seed=seed) for d in (ds["val"], score_ds))
    model = build_model(mods, num_classes, cfg.width, cfg.fusion).to(device)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-n_train // cfg.batch_size))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
             if cfg.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    scores = ScoresFile(out_dir / "scores.h5", modalities=mods, num_samples=n_train,
                        fingerprint=dataset_fingerprint(index)) if method == "remix" else None
    chance = 1.0 / num_classes
    warmup_end = cfg.warmup_epochs if method == "remix" else cfg.epochs  # phase "warmup" = multimodal batches
    best: dict = {}
    warmup_best = -1.0
    history = []
    with Live(str(out_dir / "live"), save_dvc_exp=False, dvcyaml=None) as live:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            remixing = epoch >= warmup_end
            counts = [0] * k
            score_s = 0.0
            if remixing:
                ts = time.perf_counter()
                pred = predict(model, score_loader, mods, device, cfg.unimodal_pred)
                kl = np.stack([kl_to_uniform(torch.from_numpy(pred[m])).numpy() for m in mods], 1)  # [N, K]
                assign = assign_weakest(kl)
                scores.write(epoch, kl, assign)
                sampler.set_assignment(assign, k)
                counts = np.bincount(assign, minlength=k).tolist()
                score_s = time.perf_counter() - ts
            else:
                sampler.set_assignment(None, k)
            if only is not None:  # every sample keeps just this modality
                sampler.set_assignment(np.full(n_train, mods.index(only)), k)
            sampler.set_epoch(epoch)
            model.train()
            losses = []
            for batch in tqdm(loader, desc=f"{method} epoch {epoch}", leave=False, unit="batch"):
                inputs = _inputs(batch, mods, device)
                y = batch["label"].to(device)
                m_code = batch["modality"].to(device)
                keep = keep_mask(m_code, k)
                if cfg.ablation == "reassemble":
                    keep = torch.ones_like(keep)
                dropped = [m for j, m in enumerate(mods) if not keep[:, j].any()]  # masked for the whole batch
                skip = (cfg.skip_masked and cfg.mask == "input" or only is not None) and bool(dropped)
                with frozen_norm_stats(model, [] if skip else dropped):
                    out = model(inputs, keep=keep if not keep.all() else None, mask="input" if only else cfg.mask,
                                skip_masked=skip)
                loss = step_loss(model, out, y, m_code, method=method, config=cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            val = predict(model, val_loader, mods, device)
            acc = accuracies(val, mods)
            ratio = imbalance_ratio(acc, mods, num_classes)
            row = {"epoch": epoch, "phase": "remix" if remixing else "warmup", "loss": float(np.mean(losses)),
                   **{f"val_{kk}": v for kk, v in acc.items()}, "imbalance_ratio": ratio,
                   **{f"assigned_{m}": c for m, c in zip(mods, counts)}, "score_s": round(score_s, 3),
                   "epoch_s": round(time.perf_counter() - t0, 3)}
            history.append(row)
            for kk, v in row.items():
                if kk not in ("epoch", "phase") and np.isfinite(v):
                    live.log_metric(f"train/{kk}", v)
            live.next_step()
            log.info("%s epoch %d %s: loss %.3f val fused %.3f %s assigned %s", method, epoch, row["phase"],
                     row["loss"], acc["fused"], " ".join(f"{m} {acc[m]:.3f}" for m in mods), counts)
            select = acc[only] if only is not None else acc["fused"]
            if select > best.get("val_select", -1.0):
                best = {"epoch": epoch, "val_select": select, **{f"val_{kk}": v for kk, v in acc.items()}}
                with atomic_path(out_dir / "model.pt") as tmp:
                    torch.save({"model": model.state_dict(), "epoch": epoch, "config": dataclasses.asdict(cfg),
                                "method": method, "modalities": mods, "class_names": list(index.class_names),
                                "mel_mean": mel_mean, "mel_std": mel_std}, tmp)
            if not remixing:
                warmup_best = max(warmup_best, acc["fused"])
                weak = [m for m in mods if acc[m] < chance + cfg.guard_margin]
                if method == "remix" and epoch == warmup_end - 1 and weak:  # (only_* and baseline never remix)
                    if cfg.guard == "extend_warmup" and warmup_end < cfg.warmup_epochs + cfg.guard_max_extra_epochs \
                            and warmup_end < cfg.epochs:
                        warmup_end += 1
                        log.warning("guard: %s head(s) at val accuracy %s, under chance + %.2f: warm-up extended "
                                    "to %d epochs", weak, [round(acc[m], 3) for m in weak], cfg.guard_margin,
                                    warmup_end)
                    else:
                        log.warning("remixing with %s head(s) near chance (val %s): their KL scores carry little "
                                    "information and may hand them most samples", weak,
                                    [round(acc[m], 3) for m in weak])
            else:
                for m in mods:
                    if acc[m] < chance + cfg.guard_margin:
                        log.warning("epoch %d: the %s head is near chance (val %.3f): its KL scores carry little "
                                    "information", epoch, m, acc[m])
            if remixing and acc["fused"] < warmup_best:
                log.warning("epoch %d: fused val accuracy %.3f is below the warm-up best %.3f (the selected "
                            "checkpoint covers warm-up, so the reported model is never worse)", epoch,
                            acc["fused"], warmup_best)
    summary = {"method": method, "best": best, "warmup_epochs_used": min(warmup_end, cfg.epochs),
               "warmup_best_val_fused": warmup_best, "history": history, "seed": seed,
               "device": str(device), "train_samples": n_train}
    (out_dir / "log.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
