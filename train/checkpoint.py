"""What survives a training process: the resume state, RNG states, the selected model, publishing finished outputs.

A run works in a scratch folder (``work_dir``, default ``<out_dir>.work``): ``resume.pt`` every
``train.checkpoint_every`` steps and at every epoch end, the model selected on validation so far,
the per-step logs and whatever the method writes. Only a finished run's files reach ``out_dir``
(:func:`publish`, which replaces it whole), so ``out_dir`` is never half-written and DVC can cache
and share it (no ``persist``); a killed run resumes from ``work_dir``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

RESUME = "resume.pt"  # the training state in the work folder
MODEL = "model.pt"  # the checkpoint selected on validation
# settings that do not change the result: a resume state saved under other values is still valid
NOT_IN_KEY = ("methods", "workers", "checkpoint_every", "nproc", "verify_shards")


def default_work_dir(out_dir: Path) -> Path:
    """``<out_dir>.work``: beside the output folder, never inside it."""
    return out_dir.with_name(out_dir.name + ".work")


def dataset_fingerprint(index) -> str:
    """SHA-256 over the shards' hashes and the feature params: a model or scores file is valid only for these features."""
    h = hashlib.sha256()
    for name, sha in zip(index.shard_names, index.shard_sha256):
        h.update(f"{name}:{sha}\n".encode())
    h.update(repr(sorted(index.feature_params.items())).encode())
    return h.hexdigest()


def run_key(cfg, method: str, seed: int, fingerprint: str) -> dict:
    """What a resume state must match: every setting that changes the result (not ``workers``)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_KEY}
    return {"method": method, "seed": seed, "fingerprint": fingerprint, "config": settings}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume(work_dir: Path, key: dict, world_size: int) -> dict | None:
    """The saved state of an interrupted run with the same key, or None (start afresh)."""
    path = work_dir / RESUME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # written under a temporary name and renamed: a torn file is not expected
        raise RuntimeError(f"{path}: unreadable resume state ({e}); delete it to start afresh") from e
    if state["key"] != key:
        log.warning("%s is from another configuration, method, seed or feature set: starting afresh", path)
        return None
    if state["world_size"] != world_size:
        raise RuntimeError(f"{path}: saved by a run on {state['world_size']} process(es), this run has {world_size}; "
                           f"resume with the same train.nproc / torchrun --nproc_per_node (the sampler's split of "
                           f"every global batch depends on it), or delete {path} to start afresh")
    return state


def save(path: Path, payload: dict) -> None:
    """``torch.save`` under a temporary name, then renamed: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def clear(work_dir: Path) -> None:
    """Empty the work folder (a fresh run: nothing of an earlier one may survive)."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)


def publish(work_dir: Path, out_dir: Path) -> None:
    """Move a finished run's files from ``work_dir`` (all but the resume state) to ``out_dir``, replacing it whole,
    then remove ``work_dir``. Until the last rename the old ``out_dir`` is intact."""
    staging = out_dir.with_name(f".{out_dir.name}.new")
    old = out_dir.with_name(f".{out_dir.name}.old")
    for p in (staging, old):
        if p.exists():
            shutil.rmtree(p)
    (work_dir / RESUME).unlink(missing_ok=True)
    work_dir.rename(staging)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
