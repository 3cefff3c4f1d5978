"""Data-parallel training under ``torchrun``: process group, gradient and buffer averaging.

Launch: ``torchrun --nproc_per_node=N -m stages.train --method remix`` (or ``train.nproc: N``, which
makes the stage relaunch itself so). Every rank builds the same model from the same seed and runs
the same global plan of :class:`train.sampler.RemixBatchSampler`, taking its slice of every global
batch; so at every optimizer step all ranks hold the same modality. Gradients are averaged by
hand (:func:`average_gradients`) rather than by ``DistributedDataParallel``: a parameter whose
encoder was masked for the step has no gradient on ANY rank (the step is globally modality-pure),
so the set of gradients to reduce is the same everywhere and such a parameter keeps ``grad=None``;
the optimizer then skips it (AdamW and SGD leave a parameter without gradient untouched: no
momentum, no weight decay), so a masked encoder is not moved by the step. DDP's
``find_unused_parameters`` machinery is not needed. BatchNorm running statistics are averaged
over ranks at the end of every epoch (:func:`average_buffers`), so all ranks hold identical
weights, and validation and scoring, each run over the whole split on every rank, agree.

No rank outlives its launcher: :func:`launch` (``stages/train.py`` under ``train.nproc > 1``) runs torchrun
as a child that gets SIGKILL when the stage dies (:func:`pipeline.lifetime.spawn_bound`), and
:func:`die_with_launcher` makes each rank (which torchrun starts in a session of its own, out of reach of a
kill of the launcher's process group) get SIGKILL when torchrun dies, and exit at once if it is already
gone; so a kill of the stage or of torchrun ends every rank (and its DataLoader workers, which stop when
their rank is gone), and the stage's owner watch (:func:`pipeline.lifetime.bind_to_owner`) ends them all
when the dvc process dies. The rendezvous and every collective time out after :func:`timeout_s` seconds
with an error naming what timed out (:func:`setup`, :func:`watchdog`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import sys
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from pipeline import lifetime
from pipeline.params import ConfigError

log = logging.getLogger(__name__)

# torchrun's PID, set in its environment by :func:`launch`: the parent each rank checks it still has
LAUNCHER_PID = "AVREMIX_LAUNCHER_PID"
TIMEOUT_ENV = "AVREMIX_DIST_TIMEOUT_S"  # overrides TIMEOUT_S (seconds)
# the rendezvous, and any one collective: ranks wait for each other at every step, so a rank that waits longer has
# lost a peer (dead or hung); generous for a skewed start (every rank verifies the shards' SHA-256 first)
TIMEOUT_S = 300.0


class DistError(RuntimeError):
    """The ranks lost each other: a rendezvous or collective timed out, or a peer died (message names which)."""


@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """The number of processes of this run: torchrun's ``WORLD_SIZE``, 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun); known before :func:`setup`."""
    return int(os.environ.get("RANK", "0"))


def timeout_s() -> float:
    """Seconds the rendezvous and any collective may wait: ``$AVREMIX_DIST_TIMEOUT_S``, else :data:`TIMEOUT_S`."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else TIMEOUT_S
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV}: seconds expected, got {value!r}") from None


def die_with_launcher() -> None:
    """Under torchrun: this rank gets SIGKILL when its parent (torchrun) dies, and exits now if it already has.

    torchrun starts every rank in a session of its own, so a SIGKILL of the launcher's process group (``kill -9``
    of ``dvc repro``'s group, a CI timeout) kills torchrun but not the ranks, and torchrun killed cannot forward
    the signal: the parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``) does. A parent that died before the
    call is caught by checking, after it, that the parent is still torchrun, whose PID :func:`launch` passes
    down (``$AVREMIX_LAUNCHER_PID``; torchrun started by hand passes none: no such check, as PID 1 may be a
    container's torchrun). A no-op outside torchrun (no ``LOCAL_RANK``).
    """
    if "LOCAL_RANK" not in os.environ:
        return
    if sys.platform.startswith("linux") and not lifetime.set_parent_death_signal(signal.SIGKILL):
        log.warning("prctl(PR_SET_PDEATHSIG) failed: this rank may outlive torchrun")
    launcher = int(os.environ.get(LAUNCHER_PID, "0") or 0)
    if launcher and os.getppid() != launcher:  # reparented: torchrun died before the prctl
        raise SystemExit(f"rank {os.environ.get('RANK', '?')}: its launcher (torchrun, PID {launcher}) is gone; "
                         f"this rank stops")


def launch(nproc: int, args: Sequence[str], pythonpath: str) -> int:
    """Run ``torchrun --standalone --nproc_per_node=<nproc> <args>`` as a child bound to this process (it gets
    SIGKILL when this process dies, and its ranks die with it: :func:`die_with_launcher`), with ``pythonpath``
    first on ``$PYTHONPATH``; wait for it. Its exit status (negative: the signal that killed it)."""
    os.environ["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = lifetime.spawn_bound([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={nproc}", *args], pid_env=LAUNCHER_PID)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # this process is stopping (Ctrl-C): so does the run
            proc.kill()
            proc.wait()


def setup(backend: str = "auto", timeout: float | None = None) -> Dist:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); a no-op otherwise.

    backend: ``auto`` (``nccl`` when CUDA is available, else ``gloo``), ``gloo`` or ``nccl``. timeout: seconds the
    rendezvous and every later collective may wait (default :func:`timeout_s`); past it, an error naming the
    rendezvous or the collective and ``train.nproc``.
    """
    world = env_world_size()
    if world <= 1:
        return Dist()
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend", "nccl needs CUDA, which this machine lacks; use gloo (or auto)", "train")
    timeout = timeout_s() if timeout is None else timeout
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, TimeoutError) as err:  # DistStoreError, DistNetworkError: RuntimeError subclasses
            raise DistError(f"rank {env_rank()}: the rendezvous of the {world} processes (train.nproc: {world}) "
                            f"did not complete within {timeout:g} s (${TIMEOUT_ENV}): a rank failed to start or "
                            f"died (see its error above), or the port is blocked; {err}") from err
    d = Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if backend == "nccl":
        torch.cuda.set_device(d.local_rank)
    return d


@contextlib.contextmanager
def watchdog(d: Dist):
    """Turn a collective's timeout or lost connection into an error naming it, the timeout and ``train.nproc``."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).lower()
        lost = any(w in text for w in ("timed out", "timeout", "connection closed", "connection reset", "peer"))
        if not d.enabled or isinstance(err, DistError) or not lost:
            raise
        raise DistError(f"rank {d.rank}: a collective operation of the {d.world_size} processes (train.nproc: "
                        f"{d.world_size}) failed: another rank died or hangs (timeout {timeout_s():g} s, "
                        f"${TIMEOUT_ENV}); see the other ranks' errors above. {err}") from err


def quiet_other_ranks(d: Dist) -> None:
    """Rank 0 logs everything; the other ranks only warnings and errors (the same lines would repeat per rank)."""
    if d.enabled and not d.is_main:
        root = logging.getLogger()
        root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(d: Dist, value: float) -> float:
    """The sum of ``value`` over ranks (``value`` itself without DDP)."""
    if not d.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_sum_tensor(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``t`` over ranks (a new tensor; ``t`` itself without DDP)."""
    if not d.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t


def any_over_ranks(flags: torch.Tensor, d: Dist) -> list[bool]:
    """Element-wise OR of a bool vector over ranks (the global step's view of a per-rank fact)."""
    t = flags.detach().to("cpu", torch.int32)
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def merge_disjoint(values: np.ndarray, d: Dist) -> np.ndarray:
    """Merge per-rank arrays whose filled entries (not NaN) are disjoint across ranks: NaN where no rank filled one."""
    if not d.enabled:
        return values
    filled = torch.from_numpy(~np.isnan(values)).to(torch.float64)
    total = torch.from_numpy(np.nan_to_num(values, nan=0.0)).to(torch.float64)
    dist.all_reduce(filled)
    dist.all_reduce(total)
    return np.where(filled.numpy() > 0, total.numpy(), np.nan).astype(values.dtype)


def average_gradients(model: torch.nn.Module, d: Dist) -> None:
    """Average every existing gradient over ranks (one flat all-reduce); parameters without one stay None."""
    if not d.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    if not d.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= d.world_size


def gather_buffers(model: torch.nn.Module, d: Dist) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's buffers (BatchNorm running statistics differ between ranks until the epoch-end average),
    as a list indexed by rank, on every rank; None without DDP. A collective: all ranks must call it."""
    if not d.enabled:
        return None
    mine = {name: b.detach().cpu().clone() for name, b in model.named_buffers()}
    everyone: list = [None] * d.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def check_in_sync(model: torch.nn.Module, d: Dist, where: str) -> None:
    """Raise if the ranks' weights differ (they must be bitwise equal after every step)."""
    if not d.enabled:
        return
    with torch.no_grad():
        s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    lo, hi = s.clone(), s.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if lo.item() != hi.item():
        raise RuntimeError(f"{where}: the ranks' weights diverged (checksums {lo.item()} .. {hi.item()})")
