"""No process outlives its run: kills of a 2-process training under ``dvc repro``, and ranks that lose each other.

The stage (``python -m stages.train --method remix`` with ``train.nproc: 2``) starts torchrun as its child,
which starts both ranks in sessions of their own. The tests SIGKILL the process group of a real ``dvc repro`` (a
one-stage DVC project) or of the stage itself, as a terminal's or a CI's ``kill -9`` would, collect every
process of the run beforehand (the descendants of the group's leader, from /proc: DVC, torchrun, the ranks,
their DataLoader workers), and assert by PID that none is alive 10 seconds later; then that ``dvc repro``
again resumes to the weights of an uninterrupted run (``tests/train/test_resume.py``'s comparison, bitwise).
Issue 20's defect 3: a ``kill -9`` of the dvc process alone (not its group) left torchrun, both ranks and their
workers training, and they published ``runs/<method>/train`` behind DVC's back; now a kill of any one of dvc,
the stage script or torchrun ends every process of the run within 10 s, and nothing is published.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.train.test_data import extracted_features
from tests.train.test_resume import MID_EPOCH, assert_same_run, steps
from pipeline import lifetime
from train.checkpoint import LOCK, RESUME, StateError, default_work_dir, publish
from train.config import TrainConfig
from train.distributed import LAUNCHER_PID, TIMEOUT_ENV
from train.trainer import train

# DataLoader workers too (any worker count gives the same weights): they must die with their rank
CONFIG = {**MID_EPOCH, "methods": ["remix"], "nproc": 2, "workers": 1, "verify_shards": "size"}
GRACE_S = 10.0  # every process of a killed run is gone by then


@pytest.fixture(scope="module")
def index(cremad_raw, tmp_path_factory) -> Path:
    return extracted_features(cremad_raw, tmp_path_factory) / "index.h5"


def start_stage(project: Path, index: Path) -> subprocess.Popen:
    """``python -m stages.train --method remix`` in ``project``, in a new process group (as under ``dvc repro``)."""
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump({"base": {"seed": 0}, "train": CONFIG}))
    log = open(project / "stage.log", "a")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "stages.train", "--method", "remix", "--index", str(index)],
                            cwd=project, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


DVC_YAML = """stages:
  train:
    cmd: python -m stages.train --method remix --index {index} --runs runs
    deps: [{index}]
    params: [train]
    outs: [runs/remix/train]
"""


def start_dvc_repro(project: Path, index: Path, config: dict = CONFIG) -> subprocess.Popen:
    """``dvc repro`` of a one-stage DVC project (no git) training ``remix`` as the real pipeline does."""
    project.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if not (project / ".dvc").exists():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=project, env=env, check=True)
        (project / "dvc.yaml").write_text(DVC_YAML.format(index=index))
        (project / "params.yaml").write_text(yaml.safe_dump({"base": {"seed": 0}, "train": config}))
    log = open(project / "stage.log", "a")
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)


def out_dir(project: Path) -> Path:
    return project / "runs" / "remix" / "train"


def wait_done(proc: subprocess.Popen, project: Path, timeout: float = 240) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError("the stage did not finish in time (a hang)") from None
    text = (project / "stage.log").read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- processes, by PID (a PID is the same process while its start time is) --------------------------------------

def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state, start time) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: PID -> start time."""
    stats = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = stats[pid][2]
        todo += children.get(pid, [])
    return found


def alive(pids: dict[int, int]) -> list[int]:
    """Those of ``pids`` still running (a zombie or a reused PID is not)."""
    return [pid for pid, started in pids.items()
            if (st := _stat(pid)) is not None and st[1] != "Z" and st[2] == started]


def assert_all_die(pids: dict[int, int], within: float = GRACE_S) -> None:
    deadline = time.monotonic() + within
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # leave no stray behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed run still alive after {within:g} s: {left}"


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    return value


def steps_done(project: Path) -> int:
    path = default_work_dir(out_dir(project)) / "steps-rank0.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- the tests -------------------------------------------------------------------------------------------------

def ranks_of(launcher: int) -> list[int]:
    """The ranks: children of torchrun, which stages/train.py became (``python -m torch.distributed.run``)."""
    run = [launcher, *descendants(launcher)]
    torchrun = [p for p in run if "torch.distributed.run" in _cmdline(p)]
    return [p for p in run if torchrun and (st := _stat(p)) and st[0] == torchrun[0]]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def test_kill_9_of_dvc_repro_mid_training_leaves_no_process_and_the_rerun_resumes_exactly(index, tmp_path):
    clean = tmp_path / "clean"
    log = wait_done(start_stage(clean, index), clean)
    check_logged_once_with_global_losses(log, out_dir(clean))
    records = steps(out_dir(clean), 0)
    middle = [s for prev, s, nxt in zip(records, records[1:], records[2:])
              if prev["epoch"] == s["epoch"] == nxt["epoch"] and s["epoch"] >= CONFIG["warmup_epochs"]]
    kill = random.Random(2).choice(middle)

    killed = tmp_path / "killed"
    proc = start_dvc_repro(killed, index)
    wait_for(lambda: steps_done(killed) >= kill["global_step"], proc, f"step {kill['global_step']}")
    run = descendants(proc.pid)  # DVC, torchrun, the ranks and their DataLoader workers
    assert len(ranks_of(proc.pid)) == 2, run
    # a second run on the same folder is refused while this one lives, naming its rank 0
    with pytest.raises(StateError, match=r"train\.work: another training run is working in this folder \(PID (\d+)") as e:
        train(index_path=index, out_dir=out_dir(killed), method="remix", config=TrainConfig(**CONFIG), seed=0)
    assert int(re.search(r"PID (\d+)", str(e.value))[1]) in ranks_of(proc.pid)
    kill_group(proc)  # DVC and torchrun die; the ranks, in sessions of their own, are out of reach of the group kill
    assert_all_die(run)
    work = default_work_dir(out_dir(killed))
    assert not out_dir(killed).exists() and (work / "resume.pt").exists() and (work / LOCK).exists()

    log = wait_done(start_dvc_repro(killed, index), killed)  # the kill's lock file is stale: no obstacle
    assert re.search(r"resuming at epoch (\d+), step (\d+)", log), log[-3000:]
    assert_same_run(out_dir(clean), out_dir(killed))


def check_logged_once_with_global_losses(log: str, out: Path) -> None:
    """Rank 0 alone logs (the other rank warns and errs only); the losses are the global batch's, on every rank."""
    assert len(re.findall(r"INFO train\.trainer: remix epoch 0 ", log)) == 1, log[-3000:]
    history = json.loads((out / "log.json").read_text())["history"]
    r0, r1 = steps(out, 0), steps(out, 1)
    assert [s["losses"] for s in r0] == [s["losses"] for s in r1]  # a rank's own loss would differ: its samples do
    for row in history:
        losses = [x for s in r0 if s["epoch"] == row["epoch"] for x in s["losses"]]
        assert row["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)


def test_kill_9_while_the_ranks_start_leaves_no_process(index, tmp_path):
    """Killed before the ranks could bind to torchrun (importing): each finds its launcher gone, and stops."""
    project = tmp_path / "starting"
    proc = start_stage(project, index)
    wait_for(lambda: len(ranks_of(proc.pid)) == 2, proc, "the two ranks", timeout=60)
    run = descendants(proc.pid)
    kill_group(proc)
    assert_all_die(run)
    time.sleep(1.0)
    assert not out_dir(project).exists()


def test_a_rank_whose_launcher_is_gone_stops_at_once(tmp_path):
    env = dict(os.environ, LOCAL_RANK="0", RANK="1", **{LAUNCHER_PID: str(os.getpid() + 10**6)})
    proc = subprocess.run([sys.executable, "-c", "from train import distributed; distributed.die_with_launcher()"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"rank 1: its launcher (torchrun, PID {os.getpid() + 10**6}) is gone; this rank stops" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int, timeout_s: float) -> dict:
    return dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), OMP_NUM_THREADS="1", **{TIMEOUT_ENV: str(timeout_s)})


def test_a_rank_alone_at_the_rendezvous_times_out_naming_it(index, tmp_path):
    """torchrun by hand with one rank of two missing: rank 0 stops after the timeout, naming the rendezvous."""
    out = tmp_path / "alone" / "train"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.train.run_train", str(index), str(out), "remix",
                           json.dumps(MID_EPOCH)], cwd=REPO, env=rank_env(0, free_port(), 3), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    assert re.search(r"DistError: rank 0: the rendezvous of the 2 processes \(train\.nproc: 2\) did not complete "
                     r"within 3 s", proc.stderr), proc.stderr[-3000:]
    assert not out.exists() and not default_work_dir(out).exists()  # nothing left behind, the lock file neither


COLLECTIVE = """
import os, sys, time
from train import distributed
d = distributed.setup("gloo")
with distributed.watchdog(d):
    if d.rank == 1:
        if sys.argv[1] == "dies":
            os._exit(3)
        time.sleep(60)
    distributed.all_sum(d, 1.0)
"""


@pytest.mark.parametrize("peer", ["hangs", "dies"])
def test_a_collective_whose_peer_hangs_or_dies_fails_naming_it(peer):
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, "-c", COLLECTIVE, peer], cwd=REPO, env=rank_env(r, port, 3),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        _, err = ranks[0].communicate(timeout=60)
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode != 0
    assert re.search(r"DistError: rank 0: a collective operation of the 2 processes \(train\.nproc: 2\) failed: "
                     r"another rank died or hangs \(timeout 3 s", err), err[-3000:]


# -- a kill of one process alone (not its group): issue 20's defect 3 ------------------------------------------

def stage_of(dvc_pid: int) -> int:
    """The stage script DVC started (``python -m stages.train``, through a shell that may exec it): the first
    process below dvc running stages.train."""
    by_depth = sorted(descendants(dvc_pid).items(), key=lambda kv: kv[1])  # started first = nearest dvc
    return next(pid for pid, _ in by_depth if "stages.train" in _cmdline(pid))


def torchrun_of(dvc_pid: int) -> int:
    return next(pid for pid in descendants(dvc_pid) if "torch.distributed.run" in _cmdline(pid))


@pytest.mark.parametrize("victim, nproc", [("dvc", 2), ("stage", 2), ("torchrun", 2), ("dvc", 1), ("stage", 1)])
def test_kill_9_of_one_process_ends_every_process_of_the_run_and_publishes_nothing(index, tmp_path, victim, nproc):
    project = tmp_path / "killed"  # 40 epochs: a run left alive would still be training 10 s after the kill
    proc = start_dvc_repro(project, index, config={**CONFIG, "nproc": nproc, "epochs": 40})
    wait_for(lambda: steps_done(project) >= 2, proc, "two training steps")
    run = descendants(proc.pid)  # the stage, torchrun, the ranks and their DataLoader workers
    trainers = ranks_of(proc.pid) or [stage_of(proc.pid)]
    workers = [p for p in run if _stat(p) and _stat(p)[0] in trainers]  # DataLoader workers (train.workers: 1)
    assert len(trainers) == nproc and len(workers) == nproc, {p: _cmdline(p) for p in run}
    pid = {"dvc": lambda: proc.pid, "stage": lambda: stage_of(proc.pid), "torchrun": lambda: torchrun_of(proc.pid)}
    os.kill(pid[victim](), signal.SIGKILL)  # that process alone: the others get no signal from the test
    assert_all_die(run)
    code = proc.wait(timeout=60)  # dvc: killed, or it reports the stage's failure
    assert code == -signal.SIGKILL if victim == "dvc" else code != 0, (project / "stage.log").read_text()[-3000:]
    assert not out_dir(project).exists()  # nothing published behind DVC's back
    assert (default_work_dir(out_dir(project)) / RESUME).exists()  # the run so far, for the next run to resume


def test_nothing_is_published_once_the_owner_is_gone(tmp_path, monkeypatch):
    """The last check before publishing: the dvc process named in $AVREMIX_OWNER is gone (a PID reused by another
    process counts as gone: its start time differs)."""
    work, out = tmp_path / "train.work", tmp_path / "train"
    work.mkdir()
    (work / RESUME).write_bytes(b"state")
    (work / "model.pt").write_bytes(b"model")
    start = lifetime._stat(os.getpid())[2]
    monkeypatch.setenv(lifetime.OWNER_ENV, f"{os.getpid()}:{start + 1}")
    with pytest.raises(StateError, match=r"not published: the dvc process that started this run is gone"):
        publish(work, out)
    assert not out.exists() and sorted(p.name for p in work.iterdir()) == ["model.pt", RESUME]
    monkeypatch.setenv(lifetime.OWNER_ENV, f"{os.getpid()}:{start}")  # alive: published
    publish(work, out)
    assert (out / "model.pt").read_bytes() == b"model" and not work.exists()
