"""pipeline/lifetime.py with real processes: a stage and all it starts die with the process that runs it.

The owner here stands in for DVC: it starts the stage with ``DVC_STAGE`` in the stage's environment only, as DVC
does; the stage binds to it and starts a child of its own (a worker). ``tests/faults/test_train_kill.py`` does
the same with a real ``dvc repro`` of the train stage.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import lifetime
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl: Linux only")

STAGE = r"""
import subprocess, sys, time
from pipeline import lifetime
owner = lifetime.bind_to_owner("test stage")
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(owner[0] if owner else None, worker.pid, flush=True)
time.sleep(600)
"""

OWNER = r"""
import os, subprocess, sys, time
env = dict(os.environ, **({"DVC_STAGE": "train@remix"} if sys.argv[1] == "dvc" else {}))
stage = subprocess.Popen([sys.executable, "-c", sys.argv[2]], env=env)
print(stage.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    st = lifetime._stat(pid)
    return st is not None and st[1] != "Z"


def start(kind: str) -> tuple[subprocess.Popen, int, str, int]:
    """The owner, the stage's PID, the owner the stage found, the stage's worker's PID."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("DVC_STAGE", None)
    env.pop(lifetime.OWNER_ENV, None)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, kind, STAGE], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    stage = int(owner.stdout.readline())
    found, worker = owner.stdout.readline().split()
    return owner, stage, found, int(worker)


def wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_stage_under_dvc_and_its_workers_die_with_the_dvc_process():
    owner, stage, found, worker = start("dvc")
    try:
        assert found == str(owner.pid)  # the first ancestor whose environment lacks DVC_STAGE
        os.kill(owner.pid, signal.SIGKILL)  # the owner alone: the stage and its worker get no signal from here
        owner.wait()
        assert wait_gone([stage, worker], within=3) == []
        assert "the dvc process that started it (PID" in owner.stderr.read()
    finally:
        for p in (stage, worker):
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_stage_outside_dvc_has_no_owner():
    owner, stage, found, worker = start("none")
    try:
        assert found == "None"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        time.sleep(1)
        assert alive(stage) and alive(worker)  # its caller's business
    finally:
        for p in (stage, worker):
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_owner_alive_reads_the_inherited_owner(monkeypatch):
    start_time = lifetime._stat(os.getpid())[2]
    monkeypatch.delenv(lifetime.STAGE_ENV, raising=False)  # not under DVC: the inherited owner
    monkeypatch.setenv(lifetime.OWNER_ENV, f"{os.getpid()}:{start_time}")
    assert lifetime.owner_alive() and lifetime.find_owner() == (os.getpid(), start_time)
    monkeypatch.setenv(lifetime.OWNER_ENV, f"{os.getpid()}:{start_time + 1}")  # this PID, another start: reused
    assert not lifetime.owner_alive()
    monkeypatch.delenv(lifetime.OWNER_ENV)
    assert lifetime.owner_alive()
