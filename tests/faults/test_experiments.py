"""Faults of the experiments runner (``python -m experiments.grid``): bad grids, a bad params.yaml, a kill.

A bad method, fusion, seed list or ``--set`` used to be queued and fail minutes later inside DVC's queue; now
every experiment's params are checked (the stages' config classes) before the first ``dvc`` command, and the
error names the experiment and the key. A runner killed part-way leaves its experiments queued; rerunning it
refuses to queue them twice (naming them) unless ``--skip-existing``, which waits for them, and the workspace
(params.yaml, dvc.lock, the outputs) is never touched. The kill case runs one real tiny DVC experiment.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments import grid
from tests.conftest import REPO
from tests.faults.tiny import group_alive, snapshot, write_params


@pytest.fixture
def no_dvc(tmp_path, monkeypatch):
    """A folder with the tiny params.yaml as the working folder, and ``grid.dvc`` recording instead of running."""
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(grid, "dvc", lambda args, cwd=".", check=True: calls.append(list(args)))
    return calls


@pytest.mark.parametrize("argv, named", [
    (["--methods", "nosuch"], "experiment grid-nosuch-concat-s0: train.methods: 'nosuch' is not one of"),
    (["--methods", "baseline", "--fusions", "concat", "nofusion"],
     "experiment grid-baseline-nofusion-s0: train.fusion: must be one of"),
    (["--methods", "baseline", "--seeds", "0", "-5"], "experiment grid-baseline-concat-s-5: train.seed: must be >= -1, got -5"),
    (["--methods", "baseline", "--seeds", "1", "1"], "the grid repeats experiment names: ['grid-baseline-concat-s1']"),
    (["--methods", "baseline", "--set", "train.epoch=3"], "train: unknown key(s) ['epoch']"),
    (["--methods", "baseline", "--set", "train.epochs=0"], "train.epochs: must be >= 1, got 0"),
    (["--methods", "baseline", "--set", "train.lr=fast"], "train.lr: expected float, got str 'fast'"),
    (["--methods", "baseline", "--set", "features.num_frames=0"], "features.num_frames: must be >= 1, got 0"),
    (["--methods", "baseline", "--set", "train.seed=3"], "train.seed is a grid axis; use --methods / --fusions / --seeds"),
    (["--methods", "baseline", "--jobs", "0"], "--jobs: must be >= 1, got 0"),
    (["--methods", "baseline", "--poll", "0"], "--poll and --timeout: must be > 0 seconds"),
])
def test_bad_grid_fails_naming_the_key_before_anything_is_queued(no_dvc, argv, named):
    with pytest.raises(SystemExit) as exc:
        grid.main([*argv, "--seeds", "0"] if "--seeds" not in argv else argv)
    assert named in str(exc.value.code), exc.value.code
    assert str(exc.value.code).startswith("experiments.grid: ")
    assert no_dvc == []  # not one dvc command ran


def test_bad_seed_type_fails_at_the_command_line(no_dvc, capsys):
    with pytest.raises(SystemExit):
        grid.main(["--methods", "baseline", "--seeds", "zero"])
    assert "argument --seeds: invalid int value: 'zero'" in capsys.readouterr().err and no_dvc == []


def test_bad_params_file_fails_naming_it(no_dvc, tmp_path):
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "trian": {"epochs": 1}}))
    with pytest.raises(SystemExit, match=r"params\.yaml: unknown section\(s\) \['trian'\].*did you mean 'trian' -> 'train'"):
        grid.main(["--methods", "baseline", "--dry-run"])
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(SystemExit, match=rf"params\.yaml not found in {tmp_path}: run the stages from the project folder"):
        grid.main(["--methods", "baseline"])
    assert no_dvc == []


# -- a real runner in a tiny git + DVC project, killed just before it starts DVC's queue worker -------------------
def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


def sh(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def git_commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    out = sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC project of the tiny params after `dvc repro` (committed with dvc.lock): an experiment that varies
    ``train.seed`` reruns train and evaluate only."""
    repo = tmp_path_factory.mktemp("faults-grid") / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    tracked = sh(REPO, "git", "ls-files", "stages", "pipeline", "train", "experiments").stdout.split()
    untracked = sh(REPO, "git", "ls-files", "--others", "--exclude-standard", "stages", "pipeline", "train").stdout.split()
    for rel in tracked + untracked:  # as a queued experiment sees them once committed: the working tree's files
        if rel.endswith(".py") and (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / rel, repo / rel)
    write_params(repo)
    assert sh(repo, "git", "init", "-q").returncode == 0
    assert sh(repo, sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    git_commit(repo, "init")
    out = sh(repo, sys.executable, "-m", "dvc", "repro")
    assert out.returncode == 0, out.stdout + out.stderr
    git_commit(repo, "repro")
    yield repo
    sh(repo, sys.executable, "-m", "dvc", "queue", "stop")


# Runs the grid runner; stops itself (SIGSTOP) just before `dvc queue start`, for the test to SIGKILL its group.
GRID_PAUSER = r"""
import os, signal, sys
from experiments import grid
real = grid.dvc
def dvc(args, cwd=".", check=True):
    if list(args[:2]) == ["queue", "start"]:
        os.kill(os.getpid(), signal.SIGSTOP)
    return real(args, cwd, check)
grid.dvc = dvc
grid.main(sys.argv[1:])
"""


def workspace(repo: Path) -> dict[str, str]:
    """Every file of the project but git's and DVC's own (whose queue and temporary files change)."""
    return {k: v for k, v in snapshot(repo).items() if not k.startswith((".git/", ".dvc/"))}


def test_killed_runner_leaves_the_workspace_and_a_rerun_finishes_the_grid(repo):
    before = workspace(repo)
    args = ["--methods", "baseline", "--seeds", "1", "--name", "kill", "--poll", "1", "--timeout", "240"]
    proc = subprocess.Popen([sys.executable, "-c", GRID_PAUSER, *args], cwd=repo, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # wait until it stops itself, its experiment queued
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        assert not (pid and not os.WIFSTOPPED(status)), "the runner ended before it started the queue"
        if pid:
            break
        assert time.monotonic() < deadline, "the runner never reached `dvc queue start`"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not group_alive(proc.pid)
    assert workspace(repo) == before and sh(repo, "git", "status", "--porcelain").stdout == ""
    status = sh(repo, sys.executable, "-m", "dvc", "queue", "status").stdout
    assert grid.parse_queue_status(status, ["kill-baseline-concat-s1"])[-1][1:] == ("kill-baseline-concat-s1", "Queued")

    again = sh(repo, sys.executable, "-m", "experiments.grid", *args)  # would queue it twice: refused, named
    assert again.returncode == 1 and ("experiment(s) ['kill-baseline-concat-s1'] are already queued or running"
                                      in again.stderr), again.stdout + again.stderr
    assert "--skip-existing waits for them" in again.stderr

    done = sh(repo, sys.executable, "-m", "experiments.grid", *args, "--skip-existing")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting for 1 experiment(s) already queued or running: kill-baseline-concat-s1" in done.stdout
    refs = [r for r in sh(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
            if r.endswith("/kill-baseline-concat-s1")]
    assert len(refs) == 1  # run once
    metrics = json.loads(sh(repo, "git", "show", f"{refs[0]}:runs/baseline/metrics.json").stdout,
                         parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}: not strict JSON"))
    assert metrics["num_classes"] == 3 and metrics["method"] == "baseline"
    assert workspace(repo) == before  # the experiment ran in DVC's own clone
