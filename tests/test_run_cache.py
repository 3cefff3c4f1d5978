"""Trained results shared through DVC's run-cache, and a killed `dvc exp run` resuming (real git and dvc, tiny data).

The train stage's output ``runs/<method>/train`` is not ``persist`` (DVC neither saves nor restores
run-cache entries of a stage with a persistent output): the trainer works in the git-ignored
``runs/<method>/train.work/`` and publishes ``train/`` whole when training completes.

- A runs ``dvc repro train@remix`` on a commit without dvc.lock and pushes the run-cache to a local remote.
- B, a clone of that commit with its own empty cache, gets everything with ``dvc repro --pull train@remix``:
  each stage "is cached - skipping run" (restored from the run-cache), none runs, model.pt is A's bytes.
  (DVC 3.67: ``dvc fetch --run-cache`` / ``dvc pull --run-cache`` bring the run-cache entries but not the
  outputs they name, so a plain ``dvc repro`` afterwards would still run the stage; ``--pull`` fetches them.
  Without a dvc.lock ``dvc pull --run-cache`` also exits 1: "Checkout failed" for outputs with no hash.)
- C, restored like B, changes a setting that does not change the result and runs ``dvc exp run``, killed
  (SIGKILL, the whole process group) after the first resume state: DVC has deleted ``train/`` before the
  run, the work folder survives, and the next ``dvc exp run`` resumes from it to A's weights.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_dvc import dvc, edit_params, project, ran  # noqa: F401  (project: the fixture)
from tests.test_dvc_share import clone, files, git

TRAIN = Path("runs") / "remix" / "train"
WORK = Path("runs") / "remix" / "train.work"  # the trainer's default work folder: <out_dir>.work
UPSTREAM = ["synth", "prepare", "extract", "train@remix"]


def restored(output: str) -> list[str]:
    """Stages that `dvc repro` restored from the run-cache (DVC 3's wording)."""
    return re.findall(r"Stage '([^']+)' is cached - skipping run, checking out outputs", output)


def lock_entry(repo: Path, stage: str) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]


@dataclasses.dataclass(frozen=True)
class Shared:
    a: Path  # A's repository: its git commit has no dvc.lock, its workspace A's results
    remote: Path  # the DVC remote (a local folder) with A's outputs and run-cache


@pytest.fixture(scope="module")
def shared(project, tmp_path_factory) -> Shared:
    a, remote = project, tmp_path_factory.mktemp("runcache") / "remote"
    dvc(a, "remote", "add", "-d", "shared", str(remote))
    git(a, "add", "-A")
    git(a, "commit", "-qm", "tiny params, team remote")
    assert ran(dvc(a, "repro", "train@remix")) == ["check", *UPSTREAM]
    dvc(a, "push", "--run-cache")
    assert any((remote / "runs").rglob("*")), "no run-cache entry pushed"
    return Shared(a, remote)


def test_training_publishes_its_output_and_leaves_no_work_folder(shared):
    a = shared.a
    assert (a / TRAIN / "model.pt").is_file() and (a / TRAIN / "log.json").is_file()
    assert not (a / TRAIN / "resume.pt").exists()  # the resume state stays in the work folder
    assert not (a / WORK).exists()  # deleted once published
    assert "train.work" not in git(a, "status", "--porcelain", "--ignored")
    assert any((a / ".dvc" / "cache" / "runs").rglob("*")), "DVC saved no run-cache entry (a persist output?)"


def test_teammate_restores_training_from_the_run_cache(shared, tmp_path):
    b = clone(shared.a, tmp_path / "b")  # A's commit (no dvc.lock), the remote from its config, an empty cache
    assert not (b / "dvc.lock").exists() and not (b / ".dvc" / "cache").exists()
    out = dvc(b, "repro", "--pull", "train@remix")  # pulls the run-cache, then the outputs its entries name
    # nothing trained, extracted or synthesised again; check and prepare (persist outputs: data/params.checked,
    # data/inputs/ links to the files prepare reads, never stored in the run-cache) rerun, in seconds
    assert ran(out) == ["check", "prepare"], out
    assert restored(out) == [s for s in UPSTREAM if s != "prepare"], out
    assert (b / TRAIN / "model.pt").read_bytes() == (shared.a / TRAIN / "model.pt").read_bytes()
    a_features, b_features = files(shared.a / "features"), files(b / "features")
    assert [p.name for p in a_features] == [p.name for p in b_features]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a_features, b_features))
    assert lock_entry(b, "train@remix") == lock_entry(shared.a, "train@remix")  # same deps, params and outs
    assert "up to date" in dvc(b, "status", "train@remix")
    assert not (b / WORK).exists()


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"`dvc exp run` ended (rc {proc.returncode}) before writing {path}:\n"
                                 + log.read_text())
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


def test_killed_exp_run_resumes_from_the_work_folder(shared, tmp_path):
    torch = pytest.importorskip("torch")
    c = clone(shared.a, tmp_path / "c")
    dvc(c, "repro", "--pull", "train@remix")  # A's results: runs/remix/train exists before the experiment
    assert (c / TRAIN / "model.pt").exists()

    # a setting that does not change the result (not in the resume key) but reruns the stage:
    # resume states every optimizer step, so the kill lands mid-training
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.checkpoint_every=1",
                                 "train@remix"], cwd=c, env=env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
    _wait_for(c / WORK / "resume.pt", proc, log)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc, the stage and its children: nothing gets to clean up
    proc.wait()
    killed_output = log.read_text()
    assert "Running stage 'train@remix'" in killed_output, killed_output
    assert not (c / TRAIN).exists()  # DVC removed the (non-persist) output before running the stage
    assert (c / WORK / "resume.pt").exists()  # the work folder survives: DVC knows nothing of it
    assert yaml.safe_load((c / "params.yaml").read_text())["train"]["checkpoint_every"] == 1  # -S stays applied
    status = git(c, "status", "--porcelain", "--untracked-files=all")
    assert "train.work" not in status, status  # git-ignored: `dvc exp run` never stashes or commits it

    proc2 = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "train@remix"], cwd=c, env=env,
                           capture_output=True, text=True)  # stale rwlock entries of the killed dvc: DVC drops them
    out = proc2.stdout + proc2.stderr  # (the trainer logs to stderr)
    assert proc2.returncode == 0, out
    assert ran(out) == ["train@remix"], out
    assert "resuming at" in out, out  # from the work folder, not afresh
    assert (c / TRAIN / "model.pt").exists() and not (c / WORK).exists()
    resumed = torch.load(c / TRAIN / "model.pt", map_location="cpu", weights_only=False)["model"]
    reference = torch.load(shared.a / TRAIN / "model.pt", map_location="cpu", weights_only=False)["model"]
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), "resumed weights differ from A's run"
