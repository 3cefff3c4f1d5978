"""The training loop: one loop for every method (``train/methods/``), on one process or data-parallel.

Shapes: B batch, K modalities, C classes, N samples of a split.

Per epoch the method's data hook (:meth:`Method.plan`) says which modality each training sample keeps
and how many copies it has; the sampler streams those batches (modality-pure when samples keep one
modality, the others masked); each batch is one optimizer step per :meth:`Method.substeps`; after
the epoch the model is validated and the checkpoint selected on validation (every epoch, warm-up
included). Test is evaluated once, on the selected checkpoint, by the evaluate stage. The loop names
no method and no modality: Data Remixing, the baseline and the comparison methods all live in
``train/methods/``. Everything in progress is in a work folder (``train.checkpoint``), published to
``out_dir`` when the run completes; a killed run resumes from it to the same weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from tqdm import tqdm

from pipeline.fileio import dumps_strict, write_json_strict
from pipeline.params import ConfigError
from train import checkpoint, distributed, loaders, shard_cache
from train.config import TrainConfig, batch_vs_world
from train.data import estimate_mel_stats, to_inputs
from train.diagnostics import angle_row, gradient_angle, own_gradient
from train.inference import accuracies, autocast, imbalance_ratio, pick_device, predict
from train.optim import build_optimizer
from train.methods import Context, EpochPlan, Method, build_method, check_method_name
from train.fusions import build_model
from train.models import init_norm_weights
from train.sampler import RemixBatchSampler

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunState:
    """The run's progress; all of it is in the resume state."""

    epoch: int = 0
    step: int = 0  # batches done in this epoch
    global_step: int = 0  # batches done in the run
    best: dict = dataclasses.field(default_factory=dict)  # the selected epoch and its validation accuracies
    history: list = dataclasses.field(default_factory=list)  # one row per finished epoch
    plan: EpochPlan = dataclasses.field(default_factory=EpochPlan)  # this epoch's data plan
    losses: list = dataclasses.field(default_factory=list)  # this epoch's step losses
    angles: list = dataclasses.field(default_factory=list)  # this epoch's gradient angles (train.grad_angle)


@dataclasses.dataclass
class Run:
    """What a run sets up once (rebuilt, not saved, on resume)."""

    cfg: TrainConfig
    name: str  # the method's name
    seed: int
    d: distributed.Dist
    device: torch.device
    out_dir: Path
    work_dir: Path
    key: dict  # what a resume state must match
    model: torch.nn.Module
    method: Method
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: RemixBatchSampler
    loader: Iterable[dict]  # the training batches (train/loaders.py)
    ctx: Context
    meta: dict  # saved with the selected model: class names, mel statistics, fingerprint
    progress: list  # [epochs done after the current step, fractional]: what the schedule reads (train/optim.py)

    @property
    def mods(self) -> list[str]:
        return list(self.cfg.modalities)


def train(*, index_path: str | os.PathLike, out_dir: str | os.PathLike, method: str, config: TrainConfig,
          seed: int, work_dir: str | os.PathLike | None = None) -> dict:
    """Train ``method`` on the shards of ``index_path``; publish ``model.pt``, ``log.json`` (and the method's files,
    e.g. Remix's ``scores.h5``) to ``out_dir`` when done.

    Works in ``work_dir`` (default ``<out_dir>.work``) and resumes from its ``resume.pt`` when an interrupted run
    with the same settings left one (to the same weights as an uninterrupted run). Under torchrun, every rank
    calls this. Returns the training summary (best epoch, its validation accuracies, per-epoch log).
    """
    distributed.die_with_launcher()  # under torchrun: a rank dies with it
    _check_before_start(index_path, method, config)
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else checkpoint.default_work_dir(out_dir)
    with checkpoint.work_lock(work_dir, hold=distributed.env_rank() == 0):  # rank 0 holds it for the run
        d = distributed.setup(config.backend)
        distributed.quiet_other_ranks(d)
        try:
            with distributed.watchdog(d):
                return _train(index_path, out_dir, work_dir, method, config, seed, d)
        finally:
            distributed.teardown(d)


def _check_before_start(index_path, name: str, cfg: TrainConfig) -> None:
    """What can be checked before anything is touched: the method, the device, the batch against the world size
    (``train.nproc`` is checked by :class:`TrainConfig`; this is torchrun's ``WORLD_SIZE``, also by hand), the
    index. The rest (shards, resume state, the method's needs) is checked before the work folder is touched;
    ``out_dir`` is only replaced when the run completes."""
    check_method_name(name, list(cfg.modalities))
    for key, value in (("device", cfg.device), ("backend", cfg.backend)):
        if value in ("cuda", "nccl") and not torch.cuda.is_available():
            raise ConfigError(key, f"{value} needs CUDA, which this machine lacks; use auto", cfg.section)
    world = distributed.env_world_size()
    if cfg.batch_size < world:
        raise ConfigError("batch_size", batch_vs_world(cfg.batch_size, world, "WORLD_SIZE under torchrun"),
                          cfg.section)
    if cfg.source == "local" and not Path(index_path).is_file():  # a remote source fetches it in _setup
        raise FileNotFoundError(f"{index_path}: no feature index there; make the features first (dvc repro "
                                f"extract, or `dvc checkout` if they were made before), or pass --index")


def _train(index_path, out_dir: Path, work_dir: Path, name: str, cfg: TrainConfig, seed: int,
           d: distributed.Dist) -> dict:
    cfg = dataclasses.replace(cfg, lr=cfg.method_lr(name))  # train.lr_by_method
    run, saved = _setup(index_path, out_dir, work_dir, name, cfg, seed, d)
    state = _restore(run, saved)
    with _live(run, state) as live, _step_log(run, state) as step_log:
        while state.epoch < cfg.epochs:
            t0 = time.perf_counter()
            run.ctx.epoch, run.ctx.phase = state.epoch, run.method.phase(state.epoch)
            if state.step == 0:  # the epoch starts: the method's epoch work, then its data plan
                run.method.epoch_start(state.epoch, run.ctx)
                state.plan, state.losses, state.angles = run.method.plan(state.epoch, run.ctx), [], []
            _set_sampler(run, state)
            run.model.train()
            t_train = time.perf_counter()
            bar = tqdm(run.loader, desc=f"{name} epoch {state.epoch + 1}/{cfg.epochs} ({run.ctx.phase})", leave=False, unit="batch", disable=not d.is_main)
            for batch in bar:
                done = len(state.losses)
                n_global = _train_batch(run, state, batch)
                step_log.write(_step_record(state, batch, n_global, state.losses[done:]) + "\n")
                if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                    step_log.flush()
                    _save_state(run, state)
            row = _end_epoch(run, state, t0, time.perf_counter() - t_train)
            if live is not None:
                _log_row(live, row)
            step_log.flush()
            _save_state(run, state)
    return _finish(run, state)


def _train_batch(run: Run, state: RunState, batch: dict) -> float:
    """One batch: the method's optimizer step(s), then the schedule. Returns the global batch size."""
    k = len(run.mods)
    inputs = to_inputs(batch, run.mods, run.device)
    y = batch["label"].to(run.device)
    m_code = batch["modality"].to(run.device)
    keep = keep_mask(m_code, k)
    if not state.plan.masked:
        keep = torch.ones_like(keep)
    run.ctx.step, run.ctx.global_step = state.step, state.global_step
    for part in run.method.substeps(keep, run.ctx):
        loss, n_global = _optimizer_step(run, state, inputs, y, m_code, part, batch)
        state.losses.append(loss)
    epochs_done = state.epoch + (state.step + 1) / max(len(run.sampler) + run.sampler.start, 1)
    run.progress[0] = epochs_done
    run.sched.step()
    state.step += 1
    state.global_step += 1
    return n_global


def _step_record(state: RunState, batch: dict, n_global: float, losses: list[float]) -> str:
    """One line of the rank's step log: the step, the modality codes and samples of the rank's batch, the global
    batch's samples and its mean loss at each optimizer step of the batch (the same on every rank)."""
    return dumps_strict({"global_step": state.global_step, "epoch": state.epoch, "step": state.step,
                         "modality": sorted(set(batch["modality"].tolist())), "samples": len(batch["label"]),
                         "global_samples": int(n_global), "losses": losses})


def _optimizer_step(run: Run, state: RunState, inputs: dict, y: torch.Tensor, m_code: torch.Tensor,
                    keep: torch.Tensor, batch: dict) -> tuple[float, float]:
    """Forward, loss, backward, gradient averaging and modulation, optimizer step. Returns the global batch's
    mean loss (over every rank's samples) and size."""
    cfg, d, model, method = run.cfg, run.d, run.model, run.method
    present = distributed.any_over_ranks(keep.any(0), d)  # [K] kept by some sample of the global step
    dropped = [m for j, m in enumerate(run.mods) if not present[j]]  # masked for the whole global step
    mask, skip_masked = method.masking()
    skip = skip_masked and bool(dropped)
    frozen = [] if skip or (mask == "feature" and cfg.masked_norm == "train") else dropped
    with frozen_norm_stats(model, frozen), autocast(run.device, cfg.amp):
        out = method.forward(model, inputs, keep=keep if not keep.all() else None, mask=mask, skip_masked=skip,
                             ctx=run.ctx)
        loss = method.loss(model, out, y, m_code, run.ctx)  # autocast: cross-entropy in float32
    n_global, global_loss = _global_loss(d, loss, len(y))
    if d.enabled:  # rank slices may differ by one sample: weight so the average is the global mean
        loss = loss * (len(y) * d.world_size / n_global)
    own = own_gradient(model, out, y, keep, cfg.grad_angle) if cfg.grad_angle else None
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if own is not None:  # this rank's step gradient against the modality's own loss alone (Fig. 3c)
        state.angles.append(gradient_angle(model.encoders[cfg.grad_angle], own))
    for m in dropped:  # masked for the whole (global) step: its encoder's gradient is zero (masked_grad)
        _mask_gradient(model.encoders[m], method.masked_gradient(run.ctx))
    distributed.average_gradients(model, d)
    method.modulate_gradients(model, out, y, m_code, run.ctx)
    run.opt.step()
    method.after_step(model, out, batch, run.ctx)
    return global_loss, n_global


def _global_loss(d: distributed.Dist, loss: torch.Tensor, n: int) -> tuple[float, float]:
    """(samples of the global batch, its mean loss): one all-reduce of [n, n * loss] over ranks (a rank's own loss
    without DDP). Every rank holds the same value, so every rank's resume state does."""
    if not d.enabled:
        return float(n), loss.item()
    total = distributed.all_sum_tensor(d, torch.tensor([float(n), n * loss.item()], dtype=torch.float64))
    return total[0].item(), total[1].item() / total[0].item()


def _end_epoch(run: Run, state: RunState, t0: float, train_s: float) -> dict:
    """Average the ranks' statistics, validate, log the epoch's row, select the checkpoint; next epoch."""
    epoch, mods, d = state.epoch, run.mods, run.d
    distributed.average_buffers(run.model, d)
    distributed.check_in_sync(run.model, d, f"epoch {epoch}")
    val = predict(run.model, run.ctx.loaders["val"], mods, run.device, amp=run.cfg.amp, method=run.method)
    acc = accuracies(val, mods)
    test = {}  # train.log_test_acc: a diagnostic (the official code's selection), never selected on
    if "test" in run.ctx.loaders:
        pred = predict(run.model, run.ctx.loaders["test"], mods, run.device, amp=run.cfg.amp, method=run.method)
        test = {f"test_{k}": v for k, v in accuracies(pred, mods).items()}
    stats = run.sampler.stats()  # per modality code (-1: multimodal): samples left out of whole global batches
    counts = ([0] * len(mods) if state.plan.modality is None
              else np.bincount(state.plan.modality, minlength=len(mods)).tolist())
    row = {"epoch": epoch, "phase": run.ctx.phase, "loss": float(np.mean(state.losses)),
           **{f"val_{k}": v for k, v in acc.items()}, **test, "imbalance_ratio": imbalance_ratio(acc, mods, run.ctx.num_classes),
           **{f"assigned_{m}": c for m, c in zip(mods, counts)}, "dropped": sum(v["dropped"] for v in stats.values()),
           **{f"dropped_{m}": stats.get(j, {"dropped": 0})["dropped"] for j, m in enumerate(mods)},
           **run.method.epoch_end(epoch, run.ctx), **angle_row(state.angles, run.cfg.grad_angle),
           "train_s": round(train_s, 3), "epoch_s": round(time.perf_counter() - t0, 3)}
    state.history.append(row)
    log.info("%s epoch %d %s: loss %.3f val fused %.3f %s assigned %s dropped %d", run.name, epoch, row["phase"],
             row["loss"], acc["fused"], " ".join(f"{m} {acc[m]:.3f}" for m in mods), counts, row["dropped"])
    select = run.method.selection_metric(acc)
    if select > state.best.get("val_select", -1.0):
        state.best = {"epoch": epoch, "val_select": select, **{f"val_{k}": v for k, v in acc.items()}}
        if d.is_main:
            checkpoint.save(run.work_dir / checkpoint.MODEL,
                            {"model": run.model.state_dict(), "epoch": epoch, "config": dataclasses.asdict(run.cfg),
                             "method": run.name, "modalities": mods, **run.meta})
    run.method.validated(epoch, acc, run.ctx)
    state.epoch, state.step = epoch + 1, 0
    return row


def _finish(run: Run, state: RunState) -> dict:
    """Write log.json and publish the work folder to ``out_dir`` (rank 0, after every rank is done)."""
    summary = {"method": run.name, "best": state.best, **run.method.summary(), "history": state.history,
               "seed": run.seed, "device": str(run.device), "world_size": run.d.world_size,
               "train_samples": run.ctx.n_train}
    if run.d.enabled:
        torch.distributed.barrier()  # every rank has closed its step log
    if run.d.is_main:
        write_json_strict(run.work_dir / "log.json", summary)  # strict JSON: an infinite ratio is written null
        checkpoint.publish(run.work_dir, run.out_dir)
    return summary


# -- setup ----------------------------------------------------------------------------------------

def _setup(index_path, out_dir: Path, work_dir: Path, name: str, cfg: TrainConfig, seed: int,
           d: distributed.Dist) -> tuple[Run, dict | None]:
    """Data, model, method, optimizer and schedule; the saved state of an interrupted run, if any."""
    checkpoint.seed_everything(seed)
    device = pick_device(cfg.device, d)
    index = shard_cache.open_index(index_path, cfg, shard_cache.cache_dir_of(out_dir, d.rank))  # train.source
    index.verify(("train", "val", "test") if cfg.log_test_acc else ("train", "val"),
                 content=cfg.verify_shards == "sha256")
    fingerprint = checkpoint.dataset_fingerprint(index)
    key = checkpoint.run_key(cfg, name, seed, fingerprint)
    saved = checkpoint.load_resume(work_dir, key, d.world_size)
    mel_mean, mel_std = estimate_mel_stats(index, "train")
    frames = loaders.frame_settings(cfg)
    ds = {s: loaders.dataset(index, s, cfg.decode, train=(s == "train"), mel_mean=mel_mean, mel_std=mel_std,
                             seed=seed, **frames) for s in ("train", "val")}
    for split, x in ds.items():
        if len(x) == 0:
            raise ValueError(f"{index.path}: the {split} split has no samples (check prepare.ratios / the split files)")
    sampler = RemixBatchSampler(ds["train"].shard_ids(), batch_size=cfg.batch_size, drop_last=cfg.drop_last,
                                seed=seed, order=cfg.order, modality_order=cfg.modality_order(), rank=d.rank,
                                world_size=d.world_size, shuffle_window=cfg.shuffle_window)
    loader = loaders.loader(ds["train"], sampler, workers=cfg.workers, device=device)
    num_classes = len(index.class_names)
    method = build_method(name, cfg, list(cfg.modalities), num_classes, cfg.method_params)
    model = build_model(list(cfg.modalities), num_classes, cfg.width, cfg.fusion)
    model.bn_slices = cfg.bn_split
    model = method.prepare_model(init_norm_weights(model, cfg.bn_init)).to(device)
    opt, sched, progress = build_optimizer(cfg, model, method.expands, len(ds["train"]))
    ctx = Context(config=cfg, modalities=list(cfg.modalities), num_classes=num_classes, device=device, model=model,
                  n_train=len(ds["train"]), train_labels=ds["train"].labels(),
                  loaders=_eval_loaders(index, cfg, ds["val"], dict(mel_mean=mel_mean, mel_std=mel_std, **frames),
                                        device, seed),
                  to_inputs=lambda batch: to_inputs(batch, list(cfg.modalities), device),
                  all_sum=lambda t: distributed.all_sum_tensor(d, t),
                  merge_disjoint=lambda a: distributed.merge_disjoint(a, d), world_size=d.world_size,
                  is_main=d.is_main, work_dir=work_dir, fingerprint=fingerprint,
                  steps_per_epoch=max(1, -(-len(ds["train"]) // cfg.batch_size)))
    meta = {"class_names": list(index.class_names), "mel_mean": mel_mean, "mel_std": mel_std, "fingerprint": fingerprint}
    run = Run(cfg=cfg, name=name, seed=seed, d=d, device=device, out_dir=out_dir, work_dir=work_dir, key=key,
              model=model, method=method, opt=opt, sched=sched, sampler=sampler, loader=loader, ctx=ctx, meta=meta,
              progress=progress)
    _take_over(work_dir, saved, d)
    return run, saved


def _eval_loaders(index, cfg: TrainConfig, val_ds, kwargs: dict, device, seed: int) -> dict:
    """Whole-split loaders, every modality, eval transform, the WHOLE split on every rank (identical weights,
    identical results): "val" (validation), "train_eval" (scoring passes), "test" with ``train.log_test_acc``."""
    sets = {"val": val_ds, "train_eval": loaders.dataset(index, "train", cfg.decode, train=False, **kwargs)}
    if cfg.log_test_acc:
        sets["test"] = loaders.dataset(index, "test", cfg.decode, train=False, **kwargs)
    return {k: loaders.whole_split_loader(x, batch_size=max(cfg.batch_size, 64), workers=cfg.workers,
                                          num_modalities=len(cfg.modalities), device=device, seed=seed)
            for k, x in sets.items()}


def _take_over(work_dir: Path, saved: dict | None, d: distributed.Dist) -> None:
    """A fresh run empties the work folder (nothing of an earlier run may survive), once everything is built and
    every rank has read the state: an error found while setting up leaves it as it was."""
    if d.enabled:
        torch.distributed.barrier()
    if saved is None and d.is_main:
        checkpoint.clear(work_dir)
    if d.enabled:
        torch.distributed.barrier()


def _restore(run: Run, saved: dict | None) -> RunState:
    """A fresh run's state (after the method's setup), or the saved one with weights, optimizer and RNG restored."""
    if saved is None:
        run.method.setup(run.ctx)
        return RunState()
    run.method.load_state_dict(saved["method"])
    run.model.load_state_dict(saved["model"])
    if saved.get("rank_buffers") is not None:  # this rank's own running statistics, as they were
        with torch.no_grad():
            for name, b in run.model.named_buffers():
                b.copy_(saved["rank_buffers"][run.d.rank][name])
    run.opt.load_state_dict(saved["opt"])
    run.sched.load_state_dict(saved["sched"])
    checkpoint.set_rng_state(saved["rng"])
    state = saved["run"]
    log.info("%s: resuming at epoch %d, step %d (global step %d)", run.name, state.epoch, state.step, state.global_step)
    return state


def _save_state(run: Run, state: RunState) -> None:
    rank_buffers = distributed.gather_buffers(run.model, run.d)  # mid-epoch, the ranks' BatchNorm statistics differ
    if run.d.is_main:
        checkpoint.save(run.work_dir / checkpoint.RESUME,
                        {"key": run.key, "world_size": run.d.world_size, "run": state, "model": run.model.state_dict(),
                         "opt": run.opt.state_dict(), "sched": run.sched.state_dict(), "rng": checkpoint.rng_state(),
                         "method": run.method.state_dict(), "rank_buffers": rank_buffers})


def _set_sampler(run: Run, state: RunState) -> None:
    plan, sampler = state.plan, run.sampler
    sampler.set_assignment(plan.modality, len(run.mods), pure=plan.pure)
    if plan.copies is not None or sampler.repeats is not None:
        sampler.set_repeats(plan.copies)
    sampler.set_epoch(state.epoch, start=state.step)


@contextlib.contextmanager
def _step_log(run: Run, state: RunState):
    """This rank's per-step record (modality, samples); a resumed run keeps only the steps its state has done."""
    path = run.work_dir / f"steps-rank{run.d.rank}.jsonl"
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["global_step"] <= state.global_step]
        path.write_text("".join(ln + "\n" for ln in lines))
    with open(path, "a", buffering=1) as f:
        yield f


@contextlib.contextmanager
def _live(run: Run, state: RunState):
    """dvclive on rank 0 (None elsewhere); a resumed run rewrites the metrics of the epochs already done."""
    if not run.d.is_main:
        yield None
        return
    with Live(str(run.work_dir / "live"), save_dvc_exp=False, dvcyaml=None) as live:
        for row in state.history:
            _log_row(live, row)
        yield live


def _log_row(live, row: dict) -> None:
    for k, v in row.items():
        if k not in ("epoch", "phase") and np.isfinite(v):
            live.log_metric(f"train/{k}", v)
    live.next_step()


# -- step helpers ----------------------------------------------------------------------------------

def _mask_gradient(encoder: torch.nn.Module, how: str) -> None:
    """The gradient of an encoder masked for the whole step: ``zero`` (the official code's: its features were
    zeroed, so the optimizer still applies its moments and L2 decay) or ``none`` (grad None: the optimizer skips
    it, no momentum, no decay: not moved)."""
    for p in encoder.parameters():
        if how == "none":
            p.grad = None
        elif p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


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
