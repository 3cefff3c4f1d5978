"""train/optim.py: the optimizers and the learning-rate schedules, stepped per batch as the trainer does,
at epoch boundaries and across a resume."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from train.config import TrainConfig
from train.optim import build_optimizer

LR = 5e-5


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def run_epochs(opt, sched, progress, lengths, start=(0, 0)) -> dict[tuple[int, int], float]:
    """Step as the trainer does (progress, then ``sched.step()``) over epochs of ``lengths`` batches from
    ``start`` = (epoch, step); (epoch, step) -> the rate that batch trained with."""
    rates = {}
    for epoch in range(start[0], len(lengths)):
        n = lengths[epoch]
        for step in range(start[1] if epoch == start[0] else 0, n):
            rates[epoch, step] = opt.param_groups[0]["lr"]
            opt.step()
            progress[0] = epoch + (step + 1) / n
            sched.step()
    return rates


@pytest.mark.parametrize("expands", [False, True])
def test_step_schedule_decays_at_epoch_boundaries_whatever_the_epoch_lengths(expands):
    cfg = TrainConfig(epochs=7, warmup_epochs=1, lr=LR, optimizer="adam", schedule="step", step_epochs=3,
                      step_gamma=0.1, batch_size=4)
    opt, sched, progress = build_optimizer(cfg, model(), expands, n_train=10)
    lengths = [3, 5, 1, 7, 3, 2, 4]  # Remix's pure batches and Resample's copies change an epoch's length
    rates = run_epochs(opt, sched, progress, lengths)
    for (epoch, step), lr in rates.items():  # every batch of epoch e trains at lr * 0.1 ** (e // 3)
        assert lr == pytest.approx(LR * 0.1 ** (epoch // 3), rel=1e-12), (epoch, step)
    assert rates[2, 0] == pytest.approx(LR) and rates[3, 0] == pytest.approx(LR * 0.1)  # the boundaries
    assert rates[5, 1] == pytest.approx(LR * 0.1) and rates[6, 0] == pytest.approx(LR * 0.01)


@pytest.mark.parametrize("schedule", ["step", "cosine", "constant"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_resumed_run_continues_with_the_same_rates_and_weights(schedule, optimizer):
    cfg = TrainConfig(epochs=5, warmup_epochs=1, lr=LR, optimizer=optimizer, schedule=schedule, step_epochs=2,
                      batch_size=4)
    lengths = [3, 3, 3, 3, 3]
    m = model()
    opt, sched, progress = build_optimizer(cfg, m, False, n_train=12)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    full = run_epochs(opt, sched, progress, lengths)
    whole = [p.detach().clone() for p in m.parameters()]

    m = model()  # the same run, killed after epoch 1 step 1, resumed from the saved state
    opt, sched, progress = build_optimizer(cfg, m, False, n_train=12)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    first = run_epochs(opt, sched, progress, lengths[:1])
    for step in range(2):  # epoch 1, steps 0 and 1
        first[1, step] = opt.param_groups[0]["lr"]
        opt.step()
        progress[0] = 1 + (step + 1) / 3
        sched.step()
    saved = {"model": m.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    m = model()
    opt, sched, progress = build_optimizer(cfg, m, False, n_train=12)  # progress: 0 until the next step writes it
    m.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    rest = run_epochs(opt, sched, progress, lengths, start=(1, 2))
    assert {**first, **rest} == full  # the same rate at every batch, exactly
    assert all(torch.equal(a, b) for a, b in zip(whole, m.parameters()))
    if schedule == "step":
        assert full[1, 2] == LR and full[2, 0] == pytest.approx(LR * 0.1) and full[4, 0] == pytest.approx(LR * 0.01)


def test_adam_is_torch_adam_with_the_papers_betas_and_l2_weight_decay():
    cfg = TrainConfig(optimizer="adam", lr=LR, weight_decay=1e-4)
    opt, _, _ = build_optimizer(cfg, model(), False, n_train=8)
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 1e-4 and group["lr"] == LR
    assert not group.get("decoupled_weight_decay", False)  # L2 in the gradient, unlike AdamW


def test_cosine_over_epoch_progress_is_unchanged_by_the_progress_unit():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=1.0, schedule="cosine")
    opt, sched, progress = build_optimizer(cfg, model(), True, n_train=8)
    rates = run_epochs(opt, sched, progress, [2, 3, 1, 2])
    assert rates[2, 0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 4)))  # half way: 0.5


@pytest.mark.parametrize("key,value,message", [
    ("schedule", "exponential", "train.schedule: must be one of cosine | step | constant"),
    ("optimizer", "adagrad", "train.optimizer: must be one of adamw | adam | sgd"),
    ("step_epochs", 0, "train.step_epochs: must be >= 1, got 0"),
    ("step_gamma", 0.0, "train.step_gamma: must be > 0, got 0"),
    ("step_gamma", 1.5, "train.step_gamma: must be <= 1, got 1.5"),
    ("step_epochs", 2.5, "train.step_epochs"),
])
def test_bad_optimizer_settings_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace(".", r"\.")):
        dataclasses.replace(TrainConfig(), **{key: value})
