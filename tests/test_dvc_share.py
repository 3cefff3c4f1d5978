"""Team sharing with real `git` and `dvc` (the slow tests, with tests/test_dvc.py).

User A works in a git repository of the project (test_dvc.py's fixture, tiny params) with a
local-directory DVC remote committed as the default and a cache directory shared on the machine
(`--local` config, so clones do not inherit it): A runs `dvc repro`, `dvc push` and commits dvc.lock.

- B, a fresh clone with its own empty cache, pulls from the remote: nothing reruns, the features are
  A's bytes, and a `train` param change reruns exactly train@* and evaluate@*.
- C, a fresh clone pointed at the same shared cache, checks the outputs out without any remote: they
  are symlinks to the one copy A's run put there, and a `train` param change reruns exactly
  train@* and evaluate@*, whose new outputs go to the shared cache too.

And docs/sharing.md's remote section run as written (its code blocks, with a local folder for the remote and
a bare repository for the team's): the teammate's `dvc status` is clean and `dvc repro` runs nothing (issue 20's
defect 5: the documented commit left out runs/*/metrics.json, so evaluate@* reran).
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_dvc import CHECK, TRAIN_STAGES, dvc, dvc_env, edit_params, make_project, project, ran  # noqa: F401

TRAIN_ONLY = sorted(TRAIN_STAGES | {CHECK})  # a train param: the check (every value), train@* and evaluate@*


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def use_shared_cache(repo: Path, cache: Path) -> None:
    """The one-machine setup of docs/sharing.md, in the clone's git-ignored .dvc/config.local."""
    dvc(repo, "cache", "dir", "--local", str(cache))
    dvc(repo, "config", "--local", "cache.shared", "group")
    dvc(repo, "config", "--local", "cache.type", "symlink")


def clone(origin: Path, dest: Path) -> Path:
    git(origin.parent, "clone", "-q", str(origin), str(dest))
    return dest


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


@dataclasses.dataclass(frozen=True)
class Team:
    a: Path  # user A's repository (its git history is what B and C clone)
    remote: Path  # the DVC remote, a local directory
    cache: Path  # the cache directory shared on this machine


@pytest.fixture(scope="module")
def team(project, tmp_path_factory) -> Team:
    root = tmp_path_factory.mktemp("team")
    a, remote, cache = project, root / "remote", root / "shared-cache"
    dvc(a, "remote", "add", "-d", "shared", str(remote))
    use_shared_cache(a, cache)
    git(a, "add", "-A")
    git(a, "commit", "-qm", "tiny params, team remote")
    out = ran(dvc(a, "repro"))
    assert out[:4] == [CHECK, "synth", "prepare", "extract"] and sorted(out[4:]) == sorted(TRAIN_STAGES)
    dvc(a, "push")
    git(a, "add", "-A")
    git(a, "commit", "-qm", "dvc.lock")
    assert "dvc.lock" in git(a, "ls-files") and git(a, "status", "--porcelain") == ""
    assert "in sync" in dvc(a, "status", "--cloud")  # every output of the lock is on the remote
    assert not (a / ".dvc" / "cache").exists()  # A's outputs went to the shared cache only
    return Team(a, remote, cache)


def test_teammate_pulls_from_the_remote_and_reruns_only_training(team, tmp_path):
    b = clone(team.a, tmp_path / "b")
    assert not (b / ".dvc" / "cache").exists() and not (b / "features").exists()  # its own, empty cache
    dvc(b, "pull")
    assert any((b / ".dvc" / "cache").rglob("*.dir"))  # pulled into B's cache, not the shared one
    a_features, b_features = files(team.a / "features"), files(b / "features")
    assert [p.name for p in a_features] == [p.name for p in b_features] and len(b_features) > 3
    assert not any(p.is_symlink() for p in b_features)  # B's default cache type: copies
    for pa, pb in zip(a_features, b_features):  # index.h5 and the shards, byte for byte
        assert pa.read_bytes() == pb.read_bytes(), pb.name
    assert ran(dvc(b, "repro")) == []  # pulled outputs match dvc.lock: nothing to recompute

    edit_params(b, train__lr=0.002)
    assert sorted(ran(dvc(b, "repro"))) == TRAIN_ONLY  # no synth, prepare or extract


def test_clones_on_one_machine_share_one_cache(team, tmp_path):
    c = clone(team.a, tmp_path / "c")
    use_shared_cache(c, team.cache)
    dvc(c, "checkout")  # no remote: everything is in the shared cache
    assert ran(dvc(c, "repro")) == []

    cache = team.cache.resolve()
    c_features = files(c / "features")
    assert len(c_features) > 3
    for p in c_features:  # symlinks to the copy A's run put in the shared cache: one copy on disk
        assert p.is_symlink() and p.resolve().is_relative_to(cache), p
        assert p.resolve() == (team.a / "features" / p.name).resolve(), p.name
        assert stat.S_IMODE(p.resolve().stat().st_mode) == 0o444  # cache files are read-only
    assert not (c / ".dvc" / "cache").exists()
    assert all(stat.S_IMODE(d.stat().st_mode) & 0o2070 == 0o2070  # cache.shared group: group rw dirs, setgid
               for d in (cache / "files" / "md5").iterdir())
    objects = files(cache / "files")
    assert len({p.read_bytes() for p in objects}) == len(objects)  # no content stored twice

    edit_params(c, train__lr=0.003)
    assert sorted(ran(dvc(c, "repro"))) == TRAIN_ONLY
    assert all(p.resolve() == (team.a / "features" / p.name).resolve() for p in c_features)  # untouched
    model = c / "runs" / "baseline" / "train" / "model.pt"
    assert model.is_symlink() and model.resolve().is_relative_to(cache)  # new outputs: into the shared cache
    assert model.resolve() != (team.a / "runs" / "baseline" / "train" / "model.pt").resolve()

    # an output to edit by hand is unlinked from the cache first
    index = c / "features" / "index.h5"
    cached = index.resolve()
    dvc(c, "unprotect", "features/index.h5")
    assert not index.is_symlink() and index.read_bytes() == cached.read_bytes()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o444 and os.path.exists(cached)


# ---- docs/sharing.md, as written

def doc_blocks(section: str) -> list[str]:
    """The ```bash blocks of a section of docs/sharing.md."""
    text = (REPO / "docs" / "sharing.md").read_text()
    assert f"\n## {section}\n" in text, f"docs/sharing.md has no section {section!r}"
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", part, re.S)


def shell(block: str, cwd: Path) -> str:
    """Run a documented block with bash (stopping at the first failing command); its stdout and stderr."""
    env = dict(dvc_env(), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{block}\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def test_sharing_through_a_remote_as_docs_sharing_md_writes_it(tmp_path):
    """The person who runs the pipeline and a teammate, each in a clone of the team's repository, type the two
    blocks of "Through a DVC remote"; substituted: the remote folder, ``<repo>``, and ``make install`` (the venv
    exists)."""
    project = make_project(tmp_path / "project")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "tiny params")
    origin = tmp_path / "team.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(origin))
    a = clone(origin, tmp_path / "a")
    runner, teammate = doc_blocks("Through a DVC remote")[:2]
    assert "/mnt/nfs/avremix-dvc" in runner and "<repo>" in teammate and "make install" in teammate
    shell(runner.replace("/mnt/nfs/avremix-dvc", str(tmp_path / "remote")), a)
    assert git(a, "status", "--porcelain") == ""  # the documented commit took everything DVC left to git

    home = tmp_path / "teammate"
    home.mkdir()
    out = shell(teammate.replace("<repo>", str(origin)).replace("make install", ":"), home)
    b = home / "avremix"
    assert "dvc repro" in teammate and ran(out) == [], out  # "nothing runs"
    assert "Data and pipelines are up to date." in dvc(b, "status")
    assert git(b, "status", "--porcelain") == ""
    assert (b / "runs" / "remix" / "train" / "model.pt").read_bytes() == \
        (a / "runs" / "remix" / "train" / "model.pt").read_bytes()
