"""No process of a run outlives the command that started it (Linux; elsewhere these are no-ops).

Under ``dvc repro`` (or ``dvc exp run``) a stage is started by DVC through a shell, and its own children (extraction
workers, torchrun, the ranks in sessions of their own, their DataLoader workers) are out of reach of a ``kill -9``
of the dvc process alone: they would run on and write outputs behind DVC's back. So:

- :func:`bind_to_owner` (every stage, first thing): finds the **owner**, the dvc process that runs the stage (the
  nearest ancestor whose environment lacks the stage's ``DVC_STAGE``, which DVC sets for the command only), and
  starts a thread that polls it every :data:`POLL_S` seconds; when it is gone, every descendant of the stage is
  stopped, then killed (SIGSTOP first, so that none can fork meanwhile), then the stage itself. A stage not run by
  DVC has no owner: ending it is its caller's business (its children are bound to it, below). The owner is passed
  down in ``$AVREMIX_OWNER`` (``<pid>:<start time>``), so a child process can ask :func:`owner_alive`.
- :func:`spawn_bound`: a child process that gets SIGKILL when the stage dies (``prctl(PR_SET_PDEATHSIG)``), for
  torchrun, whose ranks die with it in turn (:func:`train.distributed.die_with_launcher`).
- :func:`owner_alive`: false once the owner is gone, for a last check before an output is published.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

OWNER_ENV = "AVREMIX_OWNER"  # "<pid>:<start time in clock ticks>" of the process whose death ends the run
STAGE_ENV = "DVC_STAGE"  # set by DVC in the environment of a stage's command (and so of its children) only
POLL_S = 0.2  # seconds between two looks at the owner
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

Owner = tuple[int, int]  # (PID, start time): a PID alone may be reused by another process


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state, start time) of a live process, None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def is_alive(owner: Owner) -> bool:
    """Whether the process ``owner`` names still runs (not a zombie, not a reused PID)."""
    st = _stat(owner[0])
    return st is not None and st[1] not in ("Z", "X") and st[2] == owner[1]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # not readable: not a process of this run
        return False


def find_owner() -> Owner | None:
    """The process whose death ends this run: under DVC the dvc process that runs this stage, else the owner
    inherited in ``$AVREMIX_OWNER``, else None (also where /proc tells nothing). Raises :class:`OwnerGone` when the
    dvc process died before this look (this process was handed to init)."""
    stage = os.environ.get(STAGE_ENV)
    if stage is None or not sys.platform.startswith("linux"):
        inherited = os.environ.get(OWNER_ENV, "")
        pid, _, start = inherited.partition(":")
        return (int(pid), int(start)) if inherited else None
    entry = f"{STAGE_ENV}={stage}".encode()
    pid = os.getppid()
    while (st := _stat(pid)) is not None:
        if not _environ_has(pid, entry):  # the first ancestor not started for this stage: DVC itself
            if pid == 1 and b"dvc" not in _cmdline(1):  # not dvc as a container's first process: orphaned
                raise OwnerGone(f"the dvc process that ran this stage ({STAGE_ENV}={stage}) is gone: not starting")
            return pid, st[2]
        if pid == 1:
            break
        pid = st[0]
    return None


class OwnerGone(RuntimeError):
    """The command that started the run is gone: the run stops (message says what was not done)."""


def owner_alive() -> bool:
    """False once the owner passed down in ``$AVREMIX_OWNER`` is gone; True without one."""
    value = os.environ.get(OWNER_ENV, "")
    if not value:
        return True
    pid, _, start = value.partition(":")
    return is_alive((int(pid), int(start)))


def descendants(root: int) -> list[int]:
    """PIDs of every live descendant of ``root``, parents before their children."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (st := _stat(int(p.name))) is not None and st[1] not in ("Z", "X"):
            children.setdefault(st[0], []).append(int(p.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_tree(root: int) -> None:
    """SIGKILL every descendant of ``root``: all are stopped first (a stopped process forks no new one, and its
    children stay in the tree), until no new one appears, then killed."""
    stopped: list[int] = []
    for _ in range(20):
        new = [p for p in descendants(root) if p not in stopped]
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        stopped += new
    _signal_all(stopped, signal.SIGKILL)


def _watch(owner: Owner, what: str) -> None:
    while is_alive(owner):
        time.sleep(POLL_S)
    sys.stderr.write(f"{what}: the dvc process that started it (PID {owner[0]}) is gone: stopping this stage and "
                     f"every process it started; nothing more is written\n")
    sys.stderr.flush()
    kill_tree(os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def bind_to_owner(what: str) -> Owner | None:
    """Tie this process and all it starts to the owner (see the module docstring); ``what`` names the stage in the
    line printed when the owner is gone. Exits at once when the dvc process is already gone. Returns the owner."""
    try:
        owner = find_owner()
    except OwnerGone as err:
        sys.exit(f"{what}: {err}")
    if owner is None:
        return None
    if not is_alive(owner):
        sys.exit(f"{what}: the dvc process that started it (PID {owner[0]}) is gone: not starting")
    os.environ[OWNER_ENV] = f"{owner[0]}:{owner[1]}"
    threading.Thread(target=_watch, args=(owner, what), name="owner-watch", daemon=True).start()
    return owner


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # loaded before any fork


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """This process gets ``sig`` when its parent dies (Linux ``prctl``); False where that is not available."""
    return _LIBC is not None and _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def spawn_bound(argv: Sequence[str], pid_env: str = "") -> subprocess.Popen:
    """Start ``argv`` as a child that gets SIGKILL when this process dies; with ``pid_env``, the child finds its
    own PID in that environment variable (set between fork and exec). The child inherits ``os.environ``."""
    def in_child() -> None:  # after fork, before exec: only async-signal-safe work (a syscall, a putenv)
        set_parent_death_signal(signal.SIGKILL)
        if pid_env:
            os.environ[pid_env] = str(os.getpid())

    return subprocess.Popen(list(argv), preexec_fn=in_child)  # noqa: PLW1509 (no other thread runs yet)
