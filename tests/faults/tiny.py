"""What the data-side fault tests share: a tiny project, a stage run as a user runs it, a kill at a chosen moment.

- :func:`built`: a project folder (params.yaml, data/, features/, runs/baseline/) after synth, prepare, extract,
  train and evaluate on the tiny embedded dataset (3 classes x 3 clips, 2 actors), made once per session;
  :func:`copy_of` gives each test its own copy.
- :func:`run`: ``python <repo>/stages/<stage>.py ...`` as a file (not ``-m``) in the project folder, in a new
  session (process group); with ``pause_at=<name>`` the stage stops itself (SIGSTOP) just before the
  ``os.replace`` that would create ``<name>``, and the test SIGKILLs its whole group there (``os.killpg``).
- :func:`start` and :func:`kill_when`: a run killed (``os.killpg``, SIGKILL) when a condition on its folder holds.
- :func:`snapshot`: every file under a folder with its SHA-256, to compare the outputs before and after.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.conftest import REPO
from tests.test_dvc import TINY_SYNTH, TINY_TRAIN

PARAMS: dict[str, Any] = {  # dotted key -> value, over the repository's params.yaml
    **{f"synth.{k}": v for k, v in TINY_SYNTH.items()},
    "features.workers": 1, "features.short_side": 32, "prepare.ratios": [0.7, 0.1, 0.2],
    **{f"train.{k}": v for k, v in TINY_TRAIN.items()}, "train.methods": ["baseline"],
}
STAGES = {"synth": (), "prepare": (), "extract": (), "train": ("--method", "baseline"),
          "evaluate": ("--method", "baseline")}

# Runs a stage script as __main__; with a name in argv[1], stops itself (SIGSTOP) just before the os.replace
# that creates a file or folder of that name, for the test to SIGKILL its process group there.
PAUSER = r"""
import os, runpy, signal, sys
pause_at, script = sys.argv[1], sys.argv[2]
if pause_at:
    replace = os.replace
    def paused_replace(src, dst, *a, **kw):
        if os.path.basename(os.fspath(dst)) == pause_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        return replace(src, dst, *a, **kw)
    os.replace = paused_replace
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def set_key(params: dict, dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    node = params
    for s in sections:
        node = node.setdefault(s, {})
    node[key] = value


def write_params(project: Path, **changes: Any) -> None:
    """``project/params.yaml``: the repository's, with :data:`PARAMS` and ``changes`` (``section__key=value``)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in {**PARAMS, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
        set_key(params, dotted, value)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def edit_params(project: Path, **changes: Any) -> None:
    """Change keys (``section__key=value``) of ``project/params.yaml`` in place."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for k, v in changes.items():
        set_key(params, k.replace("__", "."), v)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@dataclasses.dataclass
class Result:
    returncode: int  # -9: killed
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """The stage's one-line error (its last stderr line)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def _command(stage: str, args: tuple[str, ...], pause_at: str = "") -> list[str]:
    return [sys.executable, "-c", PAUSER, pause_at, str(REPO / "stages" / f"{stage}.py"), *args]


def start(project: Path, stage: str, *args: str, pause_at: str = "", env: dict | None = None) -> subprocess.Popen:
    """The stage running in ``project`` in a new session; its output goes to files (``proc.out``, ``proc.err``)."""
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    proc = subprocess.Popen(_command(stage, args or STAGES[stage], pause_at), cwd=project, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})
    proc.out, proc.err = out, err
    return proc


def _result(proc: subprocess.Popen, code: int) -> Result:
    proc.out.seek(0)
    proc.err.seek(0)
    return Result(code, proc.out.read(), proc.err.read())


def group_alive(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes of process group ``pgid``."""
    alive = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(d.name))
    return alive


def killpg(proc: subprocess.Popen) -> Result:
    """SIGKILL the run's whole process group, reap it, and check that no process of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    code = proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, f"processes of the killed run survive: {group_alive(proc.pid)}"
        time.sleep(0.05)
    return _result(proc, code)


def run(project: Path, stage: str, *args: str, pause_at: str = "", timeout: float = 180, env: dict | None = None) -> Result:
    """Run the stage to its end; with ``pause_at``, SIGKILL its group where it pauses (returncode -9), or fail
    the test if it ends without pausing there."""
    proc = start(project, stage, *args, pause_at=pause_at, env=env)
    if not pause_at:
        try:
            return _result(proc, proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            killpg(proc)
            raise
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid and os.WIFSTOPPED(status):
            return killpg(proc)
        if pid:  # ended without pausing: the rename never came
            proc.returncode = os.waitstatus_to_exitcode(status)
            res = _result(proc, proc.returncode)
            raise AssertionError(f"{stage} never renamed anything to {pause_at!r} (exit {res.returncode}):\n{res.stderr}")
        assert time.monotonic() < deadline, f"{stage}: no pause at {pause_at!r} within {timeout} s"
        time.sleep(0.01)


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 120) -> Result:
    """SIGKILL the run's group as soon as ``condition()`` holds; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            res = _result(proc, proc.returncode)
            raise AssertionError(f"the run ended (exit {res.returncode}) before it could be killed:\n{res.stderr}")
        assert time.monotonic() < deadline, "the kill condition never held"
        time.sleep(0.002)
    res = killpg(proc)
    assert res.returncode == -signal.SIGKILL, res
    return res


def ok(res: Result) -> Result:
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def fails(res: Result, *fragments: str) -> str:
    """The one-line error of a run that must fail cleanly (exit 1, no traceback), naming every fragment."""
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for f in fragments:
        assert f in res.error, f"{f!r} not in the error: {res.error}"
    return res.error


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden and temporary ones included) by relative path -> SHA-256."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def outputs(project: Path) -> dict[str, str]:
    """:func:`snapshot` of the whole project but params.yaml."""
    return {k: v for k, v in snapshot(project).items() if k != "params.yaml"}


_BUILT: dict[str, Path] = {}


def built(tmp_path_factory) -> Path:
    """The project after every stage, made once per session (do not modify it: use :func:`copy_of`)."""
    if "all" not in _BUILT:
        project = tmp_path_factory.mktemp("faults-built") / "project"
        write_params(project)
        for stage in STAGES:
            ok(run(project, stage))
        _BUILT["all"] = project
    return _BUILT["all"]


def copy_of(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, symlinks=True)
    return dest
