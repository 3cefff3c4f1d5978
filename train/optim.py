"""The optimizer and the learning-rate schedule of a run (``train.optimizer``, ``train.schedule``).

The trainer steps the schedule once per batch, after writing the epochs done so far (fractional: epoch +
steps done / steps of the epoch) into ``progress[0]``. ``cosine`` anneals over all steps, or, for a method
whose epochs hold copies (their length unknown in advance), over that epoch progress; ``step`` multiplies the
rate by ``step_gamma`` every ``step_epochs`` whole epochs, at the epoch boundary whatever the epoch's length
(the official Data Remixing code's ``StepLR(step_size=30, gamma=0.1)`` stepped per epoch); ``constant`` keeps
it. Every schedule is a function of the optimizer's step count or of ``progress``, so a resumed run (optimizer
and scheduler ``state_dict``, ``progress`` rewritten before the next step) continues with the same rates.
"""
from __future__ import annotations

import math

import torch

from train.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, expands: bool, n_train: int):
    """(optimizer, schedule, progress) for ``model``: ``progress`` is the one-item list of epochs done after the
    current step that the trainer updates before each ``schedule.step()``; ``expands``: the method's epochs hold
    copies (:attr:`train.methods.base.Method.expands`); ``n_train``: training samples (steps of an epoch)."""
    opt = make_optimizer(cfg, model.parameters())
    progress = [0.0]
    return opt, make_schedule(cfg, opt, progress, expands, n_train), progress


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam (betas 0.9, 0.999; weight decay as an L2 term, as torch.optim.Adam)
    or SGD (momentum 0.9)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, progress: list, expands: bool,
                  n_train: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The ``train.schedule`` of ``opt``, stepped once per batch (see the module docstring)."""
    lambda_lr = torch.optim.lr_scheduler.LambdaLR
    if cfg.schedule == "cosine" and expands:  # epochs of unknown length (copies): cosine over epoch progress
        return lambda_lr(opt, lambda _: 0.5 * (1 + math.cos(math.pi * min(1.0, progress[0] / cfg.epochs))))
    if cfg.schedule == "cosine":
        steps_per_epoch = max(1, -(-n_train // cfg.batch_size))
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    if cfg.schedule == "step":  # whole epochs done: exact at a boundary (epoch + n/n), below it inside an epoch
        return lambda_lr(opt, lambda _: cfg.step_gamma ** (math.floor(progress[0]) // cfg.step_epochs))
    return lambda_lr(opt, lambda _: 1.0)
