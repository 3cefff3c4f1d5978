"""Oracle test: the project's trainer, set to the official settings, against an independent plain-PyTorch
reference of the official Data Remixing procedure (Ma, Chen, Deng, ICML 2025; the authors' train.py and
baseline.py, read to learn their behaviour, not copied).

The reference below is written from the official procedure alone, over in-memory tensors:

- warm-up (and the whole baseline): L = CE(fused) + alpha CE(audio head) + beta CE(video head), alpha = beta = 0.5;
- each remix epoch: the model in eval mode scores every training clip (eval transform) by KL(softmax || uniform)
  of each unimodal head; a clip goes to the audio subset when KL_audio < KL_video, else to the video subset;
  then, in train mode, every video batch, then every audio batch; a batch of modality k zeroes the pooled
  features of the other modality in place after its encoder (which still runs in train mode, so its BatchNorm
  statistics move) and trains L = CE(fused) + gamma CE(head k): the other encoder gets a zero gradient (Adam's
  moments and L2 decay still move it), the other head none (outside the loss);
- Adam (betas 0.9, 0.999, eps 1e-8, weight decay 1e-4 as L2), StepLR stepped once per epoch.

Same tiny data, same initial weights, same sample order: the order is the one the trainer drew (any permutation is
one the official DataLoader(shuffle=True) could draw); the reference builds its own subsets and batches from it.
Losses of every step and every final weight and BatchNorm buffer must agree to 1e-5 (fp32, CPU). The last tests
show the oracle catches each of the deviations the project used to have (rows a-c of issue 19).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.datasets import prepare_dataset
from pipeline.extract import extract
from pipeline.features import FeatureConfig
from pipeline.manifest import write_classes, write_manifest
from pipeline.shards import IndexReader
from pipeline.synth import SynthConfig, generate
from train import trainer
from train.config import TrainConfig
from train.data import ShardDataset, estimate_mel_stats
from train.models import ENCODERS

SEED = 3
OFFICIAL = dict(  # the official scripts' settings, at a size that runs in seconds
    optimizer="adam", lr=1e-3, weight_decay=1e-4, schedule="step", step_epochs=3, step_gamma=0.1,
    epochs=4, warmup_epochs=2, batch_size=3, alpha=0.5, gamma=1.0, baseline_loss="eq1",
    mask="feature", masked_norm="train", masked_grad="zero", order="sequential", sequential_order=["video", "audio"],
    guard="none", scoring="pass", unimodal_pred="heads", ablation="full", drop_last=False,
    clip_frames=2, crop="frame", crop_scale_min=0.08,
    fusion="concat", width=4, frame_size=24, workers=0, amp="none", device="cpu", checkpoint_every=0,
    verify_shards="size",
)
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """3 classes x 6 clips (4 frames stored per clip, so the 2-frame choice is random), split 60/20/20."""
    root = tmp_path_factory.mktemp("oracle")
    generate(out_dir=root / "raw", seed=0, config=SynthConfig(
        layout="cremad", num_classes=3, clips_per_class=6, actors=3, min_duration_s=1.0, max_duration_s=1.5,
        width=64, height=48, fps=8, clutter=1, workers=1))
    records, classes = prepare_dataset(dataset="cremad", root=str(root / "raw"), split_file=None,
                                       ratios=[0.6, 0.2, 0.2], val_fraction=0.2, group_disjoint=False, seed=0)
    write_manifest(root / "manifest.csv", records)
    write_classes(root / "classes.txt", classes)
    cfg = FeatureConfig(num_frames=4, short_side=32, n_mels=32, n_fft=256, hop_length=128, duration=1.0)
    extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=root / "features", config=cfg,
            shard_size=4, workers=1, max_reject_fraction=0.5)
    return root / "features"


# -- the trainer, observed ------------------------------------------------------------------------

def run_trainer(features: Path, out: Path, method: str, monkeypatch, **overrides) -> dict:
    """Train with the project's trainer; return its initial and final state, step losses and per-epoch order."""
    seen: dict = {"order": {}}
    real_restore, real_batch, real_finish = trainer._restore, trainer._train_batch, trainer._finish

    def restore(run, saved):
        state = real_restore(run, saved)
        seen["init"] = copy.deepcopy(run.model.state_dict())
        return state

    def train_batch(run, state, batch):
        seen["order"].setdefault(state.epoch, []).extend(batch["index"].tolist())
        return real_batch(run, state, batch)

    def finish(run, state):
        seen["final"] = copy.deepcopy(run.model.state_dict())
        return real_finish(run, state)

    monkeypatch.setattr(trainer, "_restore", restore)
    monkeypatch.setattr(trainer, "_train_batch", train_batch)
    monkeypatch.setattr(trainer, "_finish", finish)
    cfg = TrainConfig(**{**OFFICIAL, **overrides})
    trainer.train(index_path=features / "index.h5", out_dir=out, method=method, config=cfg, seed=SEED)
    steps = [json.loads(line) for line in (out / "steps-rank0.jsonl").read_text().splitlines()]
    seen["losses"] = [loss for s in steps for loss in s["losses"]]
    return seen


# -- the reference ------------------------------------------------------------------------------------

class Reference(nn.Module):
    """Two encoders (the project's architecture, copied with their initial weights), three linear heads."""

    def __init__(self, init: dict, audio_net: nn.Module, visual_net: nn.Module):
        super().__init__()
        self.audio_net, self.visual_net = copy.deepcopy(audio_net), copy.deepcopy(visual_net)
        c, d2 = init["fusion.fc.weight"].shape
        self.head = nn.Linear(d2, c)
        self.head_audio = nn.Linear(d2 // 2, c)
        self.head_video = nn.Linear(d2 // 2, c)
        self.load_state_dict({reference_name(k): v for k, v in init.items()})

    def forward(self, spec, frames, mode=None):
        a = self.audio_net(spec)
        v = self.visual_net(frames)
        if mode == "video":
            a[:, :] = 0.0
        elif mode == "audio":
            v[:, :] = 0.0
        return self.head(torch.cat((a, v), 1)), self.head_audio(a), self.head_video(v)


def reference_name(project_name: str) -> str:
    for old, new in (("encoders.audio.", "audio_net."), ("encoders.video.", "visual_net."), ("fusion.fc.", "head."),
                     ("heads.audio.", "head_audio."), ("heads.video.", "head_video.")):
        if project_name.startswith(old):
            return new + project_name[len(old):]
    raise KeyError(project_name)


def kl_to_uniform(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-9, 1.0)
    return (p * torch.log2(p * p.shape[1])).sum(1)


class Data:
    """The training split as tensors: per epoch its training inputs (each epoch's own crops and frames, as the
    trainer's loader draws them) and the eval-transform inputs that scoring reads."""

    def __init__(self, features: Path, cfg: TrainConfig):
        index = IndexReader(features / "index.h5")
        mean, std = estimate_mel_stats(index, "train")
        kw = dict(frame_size=cfg.frame_size, clip_frames=cfg.clip_frames, crop=cfg.crop,
                  crop_scale_min=cfg.crop_scale_min, mel_mean=mean, mel_std=std, seed=SEED)
        self.train_ds = ShardDataset(index, "train", train=True, **kw)
        self.labels = torch.as_tensor(self.train_ds.labels(), dtype=torch.long)
        self.eval_x = self._stack(ShardDataset(index, "train", train=False, **kw), 0)

    def _stack(self, ds, epoch):
        items = [ds[(i, -1, epoch)] for i in range(len(ds))]
        return torch.stack([it["mel"] for it in items]), torch.stack([it["frames"] for it in items])

    def epoch(self, epoch: int):
        return self._stack(self.train_ds, epoch)


def reference_run(features: Path, init: dict, orders: dict, method: str, cfg: TrainConfig,
                  encoders: dict) -> tuple[list[float], dict, list[tuple[int, int]]]:
    """The official procedure; returns the step losses, the final state (project names) and the subset sizes."""
    data = Data(features, cfg)
    model = Reference(init, encoders["audio"], encoders["video"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_epochs, cfg.step_gamma)
    losses, subsets, y = [], [], data.labels
    for epoch in range(cfg.epochs):
        spec, frames = data.epoch(epoch)
        order = orders[epoch]
        if method == "baseline" or epoch < cfg.warmup_epochs:
            plan = [(None, order)]
        else:
            audio_set, video_set = score(model, data, order)
            subsets.append((len(audio_set), len(video_set)))
            plan = [("video", video_set), ("audio", audio_set)]
        model.train()
        for mode, members in plan:
            for start in range(0, len(members), cfg.batch_size):
                b = torch.as_tensor(members[start:start + cfg.batch_size])
                opt.zero_grad()
                out, out_a, out_v = model(spec[b], frames[b], mode)
                if mode is None:
                    loss = F.cross_entropy(out, y[b]) + cfg.alpha * F.cross_entropy(out_a, y[b]) \
                        + cfg.alpha * F.cross_entropy(out_v, y[b])
                else:
                    loss = F.cross_entropy(out, y[b]) + cfg.gamma * F.cross_entropy(out_v if mode == "video" else out_a, y[b])
                loss.backward()
                opt.step()
                losses.append(loss.item())
        sched.step()
    final = {k: v for k, v in ((p, model.state_dict()[reference_name(p)]) for p in init)}
    return losses, final, subsets


def score(model: Reference, data: Data, order: list[int]) -> tuple[list[int], list[int]]:
    """Eval mode, every training clip: audio subset where KL_audio < KL_video, video otherwise; each in ``order``."""
    model.eval()
    with torch.no_grad():
        _, out_a, out_v = model(*data.eval_x)
        to_audio = kl_to_uniform(F.softmax(out_a, 1)) < kl_to_uniform(F.softmax(out_v, 1))
    return [i for i in order if to_audio[i]], [i for i in order if not to_audio[i]]


def compare(features: Path, tmp_path: Path, method: str, monkeypatch, **overrides):
    cfg = TrainConfig(**{**OFFICIAL, **overrides})
    seen = run_trainer(features, tmp_path / method, method, monkeypatch, **overrides)
    encoders = {m: _encoder(seen["init"], m) for m in ("audio", "video")}
    losses, final, subsets = reference_run(features, seen["init"], seen["order"], method,
                                           dataclasses.replace(cfg, lr=cfg.method_lr(method)), encoders)
    return seen, losses, final, subsets


def _encoder(init: dict, modality: str) -> nn.Module:
    """The project's encoder architecture with the run's initial weights (the architecture is not under test)."""
    width = OFFICIAL["width"]
    enc = ENCODERS[modality](width)
    prefix = f"encoders.{modality}."
    enc.load_state_dict({k[len(prefix):]: v for k, v in init.items() if k.startswith(prefix)})
    return enc


def assert_same(seen: dict, losses: list[float], final: dict) -> None:
    assert len(seen["losses"]) == len(losses), "a different number of optimizer steps"
    torch.testing.assert_close(torch.tensor(seen["losses"]), torch.tensor(losses), **TOL)
    for k, v in final.items():
        torch.testing.assert_close(seen["final"][k].double(), v.double(), **TOL, msg=lambda m, k=k: f"{k}: {m}")


# -- the tests ------------------------------------------------------------------------------------------

def test_remix_matches_the_official_procedure(features, tmp_path, monkeypatch):
    seen, losses, final, subsets = compare(features, tmp_path, "remix", monkeypatch)
    assert len(subsets) == 2 and all(a > 0 and v > 0 for a, v in subsets), \
        f"both subsets must be non-empty in both remix epochs for the order to matter: {subsets}"
    assert any(not torch.equal(seen["init"][k], seen["final"][k]) for k in final)  # it trained
    assert_same(seen, losses, final)


def test_baseline_matches_the_official_baseline(features, tmp_path, monkeypatch):
    seen, losses, final, _ = compare(features, tmp_path, "baseline", monkeypatch, lr_by_method={"baseline": 2e-3})
    assert_same(seen, losses, final)


@pytest.mark.parametrize("row,deviation", [
    ("a: masked encoder in eval mode", {"masked_norm": "frozen"}),
    ("b: masked encoder gets no gradient", {"masked_grad": "none"}),
    ("c: audio batches first", {"sequential_order": ["audio", "video"]}),
])
def test_the_oracle_catches_each_former_deviation(features, tmp_path, monkeypatch, row, deviation):
    """The trainer with one former avremix behaviour, the reference with the official one: they must disagree."""
    cfg = TrainConfig(**OFFICIAL)
    seen = run_trainer(features, tmp_path / "dev", "remix", monkeypatch, **deviation)
    encoders = {m: _encoder(seen["init"], m) for m in ("audio", "video")}
    losses, final, _ = reference_run(features, seen["init"], seen["order"], "remix", cfg, encoders)
    with pytest.raises(AssertionError):
        assert_same(seen, losses, final)
