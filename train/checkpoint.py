"""What survives a training process: the resume state, RNG states, the selected model, publishing finished outputs.

A run works in a scratch folder (``work_dir``, default ``<out_dir>.work``): ``resume.pt`` every
``train.checkpoint_every`` steps and at every epoch end, the model selected on validation so far,
the per-step logs and whatever the method writes. Only a finished run's files reach ``out_dir``
(:func:`publish`, which replaces it whole), so ``out_dir`` is never half-written and DVC can cache
and share it (no ``persist``); a killed run resumes from ``work_dir``. One run at a time holds
``work_dir`` (:func:`work_lock`, a ``lockf`` lock on ``work_dir/.lock``, released by the kernel when its holder
dies): a second run started meanwhile is refused, naming the holder's PID.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import random
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

import numpy as np
import torch

from pipeline import lifetime
from pipeline.fileio import atomic_path, remove_path, staged_dir

log = logging.getLogger(__name__)

RESUME = "resume.pt"  # the training state in the work folder
MODEL = "model.pt"  # the checkpoint selected on validation
LOCK = ".lock"  # held by the run working in the folder; names its PID and host
# settings that do not change the result: a resume state saved under other values is still valid
NOT_IN_KEY = ("methods", "workers", "checkpoint_every", "nproc", "verify_shards", "source", "cache_mb",
              "fetch_threads", "fetch_retries", "fetch_timeout_s")


class StateError(RuntimeError):
    """The work folder's state stops this run (an unreadable or foreign resume state, a folder held by another
    run); the message names the file and what to do."""


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
        raise StateError(f"{path}: unreadable resume state ({type(e).__name__}: {e}); delete it to start "
                         f"afresh (the run's progress is lost; the published outputs are untouched)") from e
    if not isinstance(state, dict) or not {"key", "world_size", "run"} <= set(state):
        raise StateError(f"{path}: not a resume state of this trainer; delete it to start afresh")
    if state["key"] != key:
        log.warning("%s is from another configuration, method, seed or feature set: starting afresh", path)
        return None
    if state["world_size"] != world_size:
        raise StateError(f"{path}: saved by a run on {state['world_size']} process(es), this run has {world_size}; "
                         f"resume with the same train.nproc / torchrun --nproc_per_node (the sampler's split of "
                         f"every global batch depends on it), or delete {path} to start afresh")
    return state


def save(path: Path, payload: dict) -> None:
    """``torch.save`` under a temporary name, then renamed: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def clear(work_dir: Path) -> None:
    """Empty the work folder but its lock (a fresh run: nothing of an earlier one may survive)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for p in work_dir.iterdir():
        if p.name != LOCK:
            remove_path(p)


def publish(work_dir: Path, out_dir: Path) -> None:
    """Move a finished run's files from ``work_dir`` (all but the resume state and the lock) to ``out_dir``,
    replacing it whole (:func:`pipeline.fileio.staged_dir`: ``out_dir`` is the old or the new one at every
    moment), then remove ``work_dir``; the lock stays held until ``work_dir`` is gone. Nothing is published once the
    dvc process that started the run is gone (:func:`pipeline.lifetime.owner_alive`): DVC would not record it."""
    if not lifetime.owner_alive():
        raise StateError(f"{out_dir}: not published: the dvc process that started this run is gone; {work_dir} "
                         f"keeps the finished run, which the next run resumes from")
    (work_dir / RESUME).unlink(missing_ok=True)  # from here a kill means a fresh rerun, never a resume without files
    with staged_dir(out_dir) as staging:
        for p in work_dir.iterdir():
            if p.name != LOCK:
                p.rename(staging / p.name)
    shutil.rmtree(work_dir)


@contextlib.contextmanager
def work_lock(work_dir: Path, hold: bool = True):
    """Hold ``work_dir/.lock`` (``lockf``, exclusive) for the block: one run at a time in a work folder.

    The lock file names the holder (PID, host, start time); the kernel releases the lock when the holder dies,
    so a killed run leaves no stale lock. A folder held by a live process is refused with an error naming it and
    the holder's PID. The lock file is removed when the block ends (and the work folder, if that leaves it
    empty). ``hold=False`` (ranks but 0, which share rank 0's lock): a no-op.
    """
    if not hold or fcntl is None:
        yield
        return
    path = work_dir / LOCK
    fd = _acquire(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still held: a run that opened it meanwhile sees it held, then gone
        if work_dir.is_dir() and not os.listdir(work_dir):
            work_dir.rmdir()
        os.close(fd)  # releases the lock


def _acquire(path: Path) -> int:
    """Lock ``path`` (created if missing) without waiting; the locked descriptor. Raise naming the holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:  # a POSIX record lock: held by this process alone (not by its forked DataLoader workers)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a process that has not named itself yet"
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise StateError(f"{path.parent}: another training run is working in this folder ({holder}; lock "
                             f"{path}); wait for it to finish or stop it, then rerun") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed by its last holder as we locked it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}, since "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
                return fd
        os.close(fd)
