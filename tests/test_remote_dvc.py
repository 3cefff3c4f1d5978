"""Training from an S3-compatible server: moto's S3 server on 127.0.0.1 (tests/servers.py), the project's real
`dvc-s3` remote.

User A extracts the tiny features (`dvc repro extract`, one clip per shard), `dvc push`es them to the S3 remote and
commits dvc.lock; A trains and evaluates from the local folder. B, a fresh `git clone`, never pulls: with
`train.source: dvc` and a cache smaller than the features, its train and evaluate stages read index.h5 and the
shards from the remote through DVC (dvc.lock's hashes), and its metrics and weights equal A's bit for bit.
A plain `s3://` URL prefix (`train.source: s3://bucket/prefix`, endpoint from AWS_ENDPOINT_URL_S3) reads the same.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.shards import IndexReader
from tests.servers import MotoS3
from tests.test_dvc import dvc, edit_params, project  # noqa: F401  (project: the fixture)
from tests.test_dvc_share import clone, git
from tests.train.test_remote import assert_same_batches, batches
from train import shard_cache
from train.config import TrainConfig
from train.shard_cache import MIB

pytest.importorskip("dvc_s3", reason="the S3 plugin of DVC (pip install dvc-s3; in pyproject.toml)")
pytest.importorskip("moto.server", reason="moto's server mode (pip install 'moto[server]'; in pyproject.toml)")
BUCKET = "avremix-remote-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket(BUCKET)
        yield server


def stage(repo: Path, name: str, *args: str) -> str:
    """``python -m stages.<name> ...`` in ``repo``, as the stage's dvc.yaml command runs it."""
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stderr


def credentials(repo: Path, s3: MotoS3) -> None:
    """Each user's own credentials, in the git-ignored .dvc/config.local (docs/sharing.md)."""
    dvc(repo, "remote", "modify", "--local", "team", "access_key_id", "testing")
    dvc(repo, "remote", "modify", "--local", "team", "secret_access_key", "testing")


@pytest.fixture(scope="module")
def team(project, s3) -> Path:
    """A's repository: features pushed to the S3 remote, dvc.lock committed, baseline trained and evaluated."""
    a = project
    edit_params(a, features__shard_size=1, train__methods=["baseline"])
    dvc(a, "remote", "add", "-d", "team", f"s3://{BUCKET}/store")
    dvc(a, "remote", "modify", "team", "endpointurl", s3.url)
    credentials(a, s3)
    dvc(a, "repro", "extract")
    dvc(a, "push")
    git(a, "add", "-A")
    git(a, "commit", "-qm", "features on the S3 remote")
    stage(a, "train", "--method", "baseline")
    stage(a, "evaluate", "--method", "baseline")
    return a


def test_a_clone_that_never_pulls_trains_from_the_s3_remote(team, s3, tmp_path):
    local = IndexReader(team / "features" / "index.h5")
    total = int(local.shard_bytes.sum())
    limit = 7 * int(local.shard_bytes.max())  # 7 of the 9 one-clip shards: the train split (6) in one batch + 1
    assert limit < total
    b = clone(team, tmp_path / "b")
    credentials(b, s3)
    edit_params(b, train__source="dvc", train__cache_mb=limit / MIB)
    text = stage(b, "train", "--method", "baseline")
    assert f"features from DVC remote 'team' (s3://{BUCKET}/store" in text
    stage(b, "evaluate", "--method", "baseline")
    assert not (b / "features").exists()  # nothing pulled, nothing checked out
    in_dvc_cache = [p for p in (b / ".dvc").rglob("*") if p.is_file() and p.stat().st_size in set(local.shard_bytes)]
    assert in_dvc_cache == []  # no shard went through DVC's cache either
    runs_a, runs_b = team / "runs" / "baseline", b / "runs" / "baseline"
    assert json.loads((runs_b / "metrics.json").read_text()) == json.loads((runs_a / "metrics.json").read_text())
    wa, wb = (torch.load(r / "train" / "model.pt", weights_only=False) for r in (runs_a, runs_b))
    assert all(torch.equal(t, wb["model"][k]) for k, t in wa["model"].items())
    assert wb["config"]["source"] == "dvc" and wa["config"]["source"] == "local"
    cache = b / "runs" / "baseline" / "train.cache" / "rank0"
    assert 0 < sum(p.stat().st_size for p in cache.glob("*.tar")) <= limit
    git(b, "check-ignore", "-q", str(next(cache.glob("*.tar")).relative_to(b)))  # the cache stays out of git


def test_a_plain_s3_prefix_reads_the_same_samples(team, s3, tmp_path, monkeypatch):
    import boto3

    features = team / "features"
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    for p in features.iterdir():
        client.upload_file(str(p), BUCKET, f"plain/features/{p.name}")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    cfg = TrainConfig(source=f"s3://{BUCKET}/plain/features", cache_mb=1.0, fetch_retries=1)
    index = shard_cache.open_index("features/index.h5", cfg, tmp_path / "cache")
    local = IndexReader(features / "index.h5")
    for split in ("train", "test"):
        assert_same_batches(batches(index, split, window=1), batches(local, split, window=1))
    assert index.cache.stats["fetched"] == len(local.shard_names) - int((local.shard_split == 1).sum())


def test_a_dvc_add_ed_folder_on_a_local_remote_and_the_errors_of_a_missing_remote(tmp_path, tmp_path_factory):
    """`train.source: dvc` works for any remote DVC supports (here a local folder) and for outputs a `.dvc` file
    tracks; without a remote, or with an unknown one, it fails naming train.source."""
    from tests.train.test_remote import one_clip_shards

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    shutil.copytree(one_clip_shards(tmp_path_factory), repo / "features")
    dvc(repo, "add", "features")
    cfg = TrainConfig(source="dvc", cache_mb=1.0)
    with pytest.raises(ValueError, match=r"^train\.source: dvc: config file error: no remote specified in .* "
                                         r"Create a default remote with dvc remote add -d"):
        shard_cache.open_index(repo / "features" / "index.h5", cfg, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"^train\.source: dvc:elsewhere: .*elsewhere"):
        shard_cache.open_index(repo / "features" / "index.h5", TrainConfig(source="dvc:elsewhere"), tmp_path / "c")
    dvc(repo, "remote", "add", "-d", "folder", str(tmp_path / "remote"))
    dvc(repo, "push", "-q")
    want = batches(IndexReader(repo / "features" / "index.h5"), "val", window=1)
    shutil.rmtree(repo / "features")  # as in a clone that never pulled
    index = shard_cache.open_index(repo / "features" / "index.h5", cfg, tmp_path / "cache")
    assert index.url.startswith(str(tmp_path / "remote")) and "/files/md5/" in index.url
    assert_same_batches(batches(index, "val", window=1), want)
