"""Training and evaluate from a remote source (nginx on 127.0.0.1): the same run as from the local folder, bit for
bit, with a cache smaller than the dataset; a run killed (SIGKILL) or cut off by a server that stops resumes, and
the resumed run reuses the shards its cache holds."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.shards import IndexReader, sha256_file
from tests.conftest import REPO
from tests.servers import FaultProxy
from tests.train.test_remote import features, nginx, pytestmark  # noqa: F401  (fixtures, the nginx skip)
from tests.train.test_resume import assert_same_run, steps_done
from train.evaluate import evaluate
from train.shard_cache import MIB

TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, guard="none", checkpoint_every=1)


def limit_below_the_dataset(index: IndexReader) -> float:
    """MiB: 14 of the 24 one-clip shards; the scoring pass reads the 12 train shards as one batch (64 > 12)."""
    return 14 * int(index.shard_bytes.max()) / MIB


def launch(index: str, out: Path, config: dict, log: Path) -> subprocess.Popen:
    """tests/train/run_train.py (one torch thread) training remix, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_train", index, str(out), "remix",
                             json.dumps(config)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            start_new_session=True)


def trained(index: str, run: Path, config: dict) -> str:
    """Train (a process, as above) and evaluate (here) into ``run``; the training log."""
    log = run / "train.log"
    proc = launch(index, run / "train", config, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    evaluate(index_path=index, run_dir=run)
    return log.read_text()


@pytest.fixture(scope="module")
def local_run(features, tmp_path_factory) -> Path:
    """Remix trained and evaluated on the local folder (workers 0)."""
    run = tmp_path_factory.mktemp("local_run")
    trained(str(features / "index.h5"), run, TINY)
    return run


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streamed_run_equals_the_local_run_bitwise(features, nginx, local_run, tmp_path, workers):
    local = IndexReader(features / "index.h5")
    limit = limit_below_the_dataset(local)
    assert limit * MIB < local.shard_bytes.sum()
    before = len(nginx.requests())
    # evaluate reads the checkpoint's source (nginx); with workers 1 the augmentation streams are the same
    text = trained("features/index.h5", tmp_path, {**TINY, "workers": workers, "source": nginx.url, "cache_mb": limit})
    assert f"features from {nginx.url}" in text
    assert_same_run(local_run / "train", tmp_path / "train")  # weights, scores, log, steps
    assert (json.loads((tmp_path / "metrics.json").read_text()) == json.loads((local_run / "metrics.json").read_text()))
    assert (tmp_path / "eval" / "predictions.csv").read_text() == (local_run / "eval" / "predictions.csv").read_text()
    assert not (tmp_path / "features").exists() and not (tmp_path / "train" / "index.h5").exists()
    cache = tmp_path / "train.cache" / "rank0"
    held = sorted(cache.glob("*.tar"))
    assert 0 < sum(p.stat().st_size for p in held) <= limit * MIB and not list(cache.glob(".tmp-*"))
    assert all(sha256_file(p) == p.name.partition("-")[0] for p in held)
    got = [r for r in nginx.requests()[before:] if r["path"].endswith(".tar")]
    whole = [r for r in got if r["range"] is None]
    assert {r["status"] for r in whole} == {200} and len(whole) > 24  # whole shards, some refetched: cache < data
    ranged = [r for r in got if r["range"] is not None]  # the mel statistics: one member of each train sample
    assert {r["status"] for r in ranged} == {206} and len(ranged) == len(local.indices("train"))


def wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_streamed_run_resumes_reusing_its_cache(features, nginx, local_run, tmp_path):
    """SIGKILL mid-run (a fetch may be cut short): the rerun takes over the verified shards left in the cache,
    deletes any partial one, and ends with the uninterrupted local run's weights."""
    config = {**TINY, "source": nginx.url, "cache_mb": limit_below_the_dataset(IndexReader(features / "index.h5"))}
    out, log = tmp_path / "train", tmp_path / "first.log"
    proc = launch("features/index.h5", out, config, log)
    work = tmp_path / "train.work"
    wait_for(lambda: steps_done(out) >= 5 and (work / "resume.pt").exists(), proc, log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    held = {p.name for p in (tmp_path / "train.cache" / "rank0").glob("*.tar")}
    assert held
    second = tmp_path / "second.log"
    rerun = launch("features/index.h5", out, config, second)
    assert rerun.wait(timeout=600) == 0, second.read_text()[-3000:]
    text = second.read_text()
    assert "resuming at epoch" in text
    adopted = int(re.search(r"holds (\d+) shards .* of an earlier run", text).group(1))
    assert adopted == len(held)
    assert_same_run(local_run / "train", out)


def test_a_server_that_stops_mid_run_then_a_rerun_resumes(features, nginx, local_run, tmp_path):
    """The server goes down mid-epoch: the run stops with one error naming the shard and its URL (after its
    retries), having trained only on whole, verified shards; with the server back, the rerun resumes and ends with
    the uninterrupted local run's weights."""
    with FaultProxy(nginx.url) as proxy:
        config = {**TINY, "source": proxy.url, "fetch_retries": 1, "fetch_timeout_s": 2.0,
                  "cache_mb": limit_below_the_dataset(IndexReader(features / "index.h5"))}
        out, log = tmp_path / "train", tmp_path / "first.log"
        proc = launch("features/index.h5", out, config, log)
        wait_for(lambda: steps_done(out) >= 3, proc, log)
        proxy.stop()
        assert proc.wait(timeout=300) != 0
        text = log.read_text()
        assert re.search(rf"ShardFetchError: shard (train|val)-\d+\.tar: fetching {re.escape(proxy.url)}/"
                         rf"(train|val)-\d+\.tar failed 2 times", text), text[-3000:]
        proxy.start()
        second = tmp_path / "second.log"
        rerun = launch("features/index.h5", out, config, second)
        assert rerun.wait(timeout=600) == 0, second.read_text()[-3000:]
        assert "resuming at epoch" in second.read_text()
    assert_same_run(local_run / "train", out)
