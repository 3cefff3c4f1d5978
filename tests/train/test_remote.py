"""train.source over a real HTTP server: nginx (Debian's, with Range) serving a features/ folder on 127.0.0.1, and
tests/servers.py's FaultProxy in front of it for the faults. The samples a remote index gives are the local
index's, bit for bit; the cache fetches what the sampler's plan needs, in its order, within its limit; every
failure ends in one error naming the shard and its URL, and nothing is read from partial bytes.

The S3 / DVC remote end to end (moto's server, `dvc push`, a clone that never pulls) is tests/test_remote_dvc.py.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets import prepare_dataset
from pipeline.extract import extract
from pipeline.manifest import write_classes, write_manifest
from pipeline.params import ConfigError
from pipeline.shards import IndexReader, sha256_file
from pipeline.synth import SynthConfig, generate
from tests.conftest import TINY
from tests.servers import FaultProxy, Nginx, nginx_binary
from tests.train.test_data import CFG, SPLIT
from train import loaders, shard_cache
from train.config import TrainConfig
from train.data import estimate_mel_stats
from train.remote import ShardFetchError
from train.sampler import RemixBatchSampler
from train.shard_cache import MIB, CacheTooSmall

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed: `apt-get install nginx-light` "
                                                                 "(.ci/run installs it)")
_FEATURES: dict[str, Path] = {}


def one_clip_shards(tmp_path_factory) -> Path:
    """A small CREMA-D tree (3 classes x 8 clips) extracted with one clip per shard (many shards: batches span
    several); once per session. Returns the features folder."""
    key = "one_clip_shards"
    if key not in _FEATURES:
        root = tmp_path_factory.mktemp("remote_features")
        generate(out_dir=root / "raw", seed=0, config=SynthConfig(layout="cremad", **{**TINY, "clips_per_class": 8}))
        records, classes = prepare_dataset(dataset="cremad", root=str(root / "raw"), **SPLIT)
        write_manifest(root / "manifest.csv", records)
        write_classes(root / "classes.txt", classes)
        extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=root / "features",
                config=CFG, shard_size=1, workers=1, max_reject_fraction=0.5)
        _FEATURES[key] = root / "features"
    return _FEATURES[key]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return one_clip_shards(tmp_path_factory)


@pytest.fixture(scope="module")
def nginx(features, tmp_path_factory):
    with Nginx(features, tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture
def proxy(nginx):
    with FaultProxy(nginx.url) as p:
        yield p


def split_bytes(index: IndexReader, split: str) -> int:
    return int(index.shard_bytes[index.shard_split == index.splits.index(split)].sum())


def remote(url: str, cache: Path, **settings) -> shard_cache.RemoteIndex:
    cfg = TrainConfig(source=url, **{"fetch_retries": 2, "fetch_timeout_s": 2.0, **settings})
    return shard_cache.open_index("features/index.h5", cfg, cache)


def sampler_of(ds, *, window: int, epoch: int = 0, rank: int = 0, world: int = 1, batch: int = 4):
    s = RemixBatchSampler(ds.shard_ids(), batch_size=batch, drop_last=False, seed=0, shuffle_window=window,
                          rank=rank, world_size=world)
    s.set_assignment(np.arange(len(ds)) % 2, 2)
    s.set_epoch(epoch)
    return s


def batches(index, split: str = "train", *, workers: int = 0, decode: str = "sample", window: int = 0,
            epoch: int = 0, **kw) -> list[dict]:
    ds = loaders.dataset(index, split, decode, train=split == "train", frame_size=24, seed=0)
    return list(loaders.loader(ds, sampler_of(ds, window=window, epoch=epoch, **kw), workers=workers, device="cpu"))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            assert torch.equal(x[k], y[k]), k


def shard_requests(proxy: FaultProxy) -> list[str]:
    return [p.rsplit("/", 1)[1] for p, status, _ in proxy.requests(".tar") if status in (200, 206)]


# -- the setting ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("good", ["local", "dvc", "dvc:team", "http://127.0.0.1:8000/features",
                                  "https://example.org/f", "s3://bucket/prefix", "gs://bucket/f"])
def test_source_accepts_local_dvc_and_url_prefixes(good):
    assert TrainConfig(source=good).source == good


@pytest.mark.parametrize("bad", ["features", "dvc:", "http:/x", "nosuchproto://x/y", ""])
def test_source_refuses_anything_else_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^train\.source: "):
        TrainConfig(source=bad)


# -- the same bytes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers,decode", [(0, "sample"), (2, "sample"), (1, "batch")])
def test_remote_batches_equal_local_ones_bitwise(features, nginx, tmp_path, workers, decode):
    local = IndexReader(features / "index.h5")
    in_flight = 2 * workers if workers else 1  # batches the DataLoader reads ahead, + the one dispatched
    limit = (in_flight + 1) * 2 * int(local.shard_bytes.max())  # batches of 2 one-clip shards
    assert limit < split_bytes(local, "train")
    index = remote(nginx.url, tmp_path / "cache", cache_mb=limit / MIB)
    assert index.shard_names.tolist() == local.shard_names.tolist()
    assert estimate_mel_stats(index, "train") == estimate_mel_stats(local, "train")  # ranged reads
    for split in ("train", "val"):
        want = batches(local, split, workers=workers, decode=decode, batch=2)
        assert_same_batches(batches(index, split, workers=workers, decode=decode, batch=2), want)
    assert index.cache.stats["peak_bytes"] <= limit
    for p in (tmp_path / "cache").glob("*.tar"):  # whatever stays is a verified, complete shard
        assert sha256_file(p) == p.name.partition("-")[0]


# -- the plan drives the cache ---------------------------------------------------------------------------------

def plan_shards(index, *, window: int, epoch: int, **kw) -> list[list[int]]:
    """The shard rows of each batch of the sampler's plan, in order."""
    ds = loaders.dataset(index, "train", "sample", train=True, frame_size=24)
    return [sorted({int(ds.shard_ids()[it[0]]) for it in b}) for b in sampler_of(ds, window=window, epoch=epoch, **kw)]


def test_shards_come_in_plan_order_within_the_limit_once_per_epoch(features, proxy, tmp_path):
    """Shard-local plan (shuffle_window 1), cache below the split: each epoch fetches each of its shards once (bytes
    per epoch = the split's shard bytes), in the order of first use, never above the limit."""
    local = IndexReader(features / "index.h5")
    train_bytes = split_bytes(local, "train")
    limit = 7 * int(local.shard_bytes.max())  # workers 1: 3 batches of 2 one-clip shards in flight
    assert limit < train_bytes
    index = remote(proxy.url, tmp_path / "cache", cache_mb=limit / MIB, fetch_threads=2)
    for epoch in range(2):
        start, before = len(index.cache.fetch_log), index.fetcher.stats["bytes"]
        got = batches(index, workers=1, window=1, epoch=epoch, batch=2)
        assert sum(len(b["label"]) for b in got) == len(local.indices("train"))
        fetched = index.cache.fetch_log[start:]
        first_use = list(dict.fromkeys(j for b in plan_shards(index, window=1, epoch=epoch, batch=2) for j in b))
        held = [j for j in first_use if j not in fetched]  # still cached from the epoch before
        assert held == [] if epoch == 0 else len(held) < len(first_use)
        assert fetched == [j for j in first_use if j not in held]  # each once, in the plan's order
        assert index.fetcher.stats["bytes"] - before <= 1.05 * train_bytes
        assert index.cache.stats["peak_bytes"] <= limit and index.cache.stats["evicted"] > 0
    assert index.fetcher.stats["failed_attempts"] == 0


def test_a_full_shuffle_refetches_below_the_split_and_never_above_it(features, nginx, tmp_path):
    """shuffle_window 0 spreads a shard over the epoch: a cache holding the split fetches it once and keeps it
    (the next epoch fetches nothing); a smaller one stays within its limit but fetches shards again."""
    local = IndexReader(features / "index.h5")
    train_bytes = split_bytes(local, "train")
    big = remote(nginx.url, tmp_path / "big", cache_mb=2 * train_bytes / MIB)
    small = remote(nginx.url, tmp_path / "small", cache_mb=5 * int(local.shard_bytes.max()) / MIB)
    for epoch in range(2):
        before = big.fetcher.stats["bytes"]
        assert_same_batches(batches(big, epoch=epoch), batches(local, epoch=epoch))
        assert big.fetcher.stats["bytes"] - before == (train_bytes if epoch == 0 else 0)
        assert_same_batches(batches(small, epoch=epoch), batches(local, epoch=epoch))
    assert small.cache.stats["peak_bytes"] <= small.cache.limit
    assert len(small.cache.fetch_log) > len(big.cache.fetch_log)


def test_each_rank_fetches_only_the_shards_of_its_slices(features, nginx, tmp_path):
    local = IndexReader(features / "index.h5")
    fetched = []
    for rank in range(2):
        index = remote(nginx.url, tmp_path / f"rank{rank}", cache_mb=1.0)
        n = len(batches(index, workers=1, window=1, rank=rank, world=2))
        assert n == len(sampler_of(loaders.dataset(local, "train", "sample", train=True, frame_size=24), window=1))
        need = {j for b in plan_shards(index, window=1, epoch=0, rank=rank, world=2) for j in b}
        assert set(index.cache.fetch_log) == need and len(index.cache.fetch_log) == len(need)
        fetched.append(need)
    train = set(np.flatnonzero(local.shard_split == local.splits.index("train")).tolist())
    assert fetched[0] | fetched[1] == train and fetched[0] != train  # one clip per shard: the ranks' are disjoint
    assert not fetched[0] & fetched[1]


def test_a_limit_below_the_batches_in_flight_is_refused_naming_the_setting(features, nginx, tmp_path):
    local = IndexReader(features / "index.h5")
    index = remote(nginx.url, tmp_path / "cache", cache_mb=1.5 * int(local.shard_bytes.max()) / MIB)
    with pytest.raises(CacheTooSmall, match=r"^train\.cache_mb: .* cannot hold the shards of the batches being read"):
        batches(index, workers=2, window=0)
    tiny = remote(nginx.url, tmp_path / "tiny", cache_mb=100 / MIB)
    with pytest.raises(CacheTooSmall, match=r"^train\.cache_mb: .* cannot hold shard train-"):
        batches(tiny, window=1)


def test_a_new_process_reuses_what_the_cache_holds(features, proxy, tmp_path):
    """After a kill, the next run's cache takes over the complete shards (no refetch) and deletes the debris: a
    temporary file of a fetch cut short, a shard file of the wrong size, shards of another index."""
    local = IndexReader(features / "index.h5")
    first = remote(proxy.url, tmp_path / "cache", cache_mb=1.0)
    got = batches(first, window=1)
    held = sorted(p.name for p in (tmp_path / "cache").glob("*.tar"))
    assert len(held) == len(set(first.cache.fetch_log)) > 2
    cut = tmp_path / "cache" / held[0]
    cut.write_bytes(cut.read_bytes()[:100])  # as if a disk filled up: wrong size, not adopted
    (tmp_path / "cache" / f".tmp-{held[1]}-123-456").write_bytes(b"partial")
    (tmp_path / "cache" / shard_cache.shard_file("0" * 64, "train-000000.tar")).write_bytes(b"another index's")
    proxy.log.clear()
    second = remote(proxy.url, tmp_path / "cache", cache_mb=1.0)
    assert second.cache.stats["adopted"] == len(held) - 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "index.h5") == held[1:]
    assert_same_batches(batches(second, window=1), got)
    j = local.shard_names.tolist().index(held[0].partition("-")[2])
    assert shard_requests(proxy) == [local.shard_names[j]]  # the damaged one, nothing else
    assert sha256_file(cut) == held[0].partition("-")[0]


# -- faults ------------------------------------------------------------------------------------------------

def first_shard(index, window: int = 1) -> str:
    return index.shard_names[plan_shards(index, window=window, epoch=0)[0][0]]


def later_shard(index, window: int = 1) -> tuple[str, int]:
    """A shard first needed by a later batch (not the first), and the batches before it."""
    plan = plan_shards(index, window=window, epoch=0)
    seen = set(plan[0])
    for n, b in enumerate(plan[1:], 1):
        new = [j for j in b if j not in seen]
        if new:
            return index.shard_names[new[0]], n
        seen |= set(b)
    raise AssertionError("every shard is in the first batch")


@pytest.mark.parametrize("fault", [dict(status=503), dict(status=500), dict(cut_after=100), dict(flip_byte=700)])
def test_a_transient_fault_is_retried_and_the_samples_are_intact(features, proxy, tmp_path, fault):
    local = IndexReader(features / "index.h5")
    index = remote(proxy.url, tmp_path / "cache", cache_mb=1.0, fetch_retries=2)
    name = first_shard(index)
    proxy.inject(name, times=2, **fault)
    assert_same_batches(batches(index, window=1), batches(local, window=1))
    assert len(proxy.requests(name)) == 3 and index.fetcher.stats["failed_attempts"] == 2


@pytest.mark.parametrize("fault,says", [(dict(status=503), "ClientResponseError: 503"),
                                        (dict(cut_after=100), "ClientPayloadError"),
                                        (dict(flip_byte=700), "SHA-256 differs from the one in index.h5"),
                                        (dict(stall_s=30.0), "TimeoutError: no answer within train.fetch_timeout_s")])
def test_a_lasting_fault_stops_the_pass_at_its_batch_naming_shard_and_url(features, proxy, tmp_path, fault, says):
    """Bounded retries, then one error naming the shard and its URL, raised when the batch that needs it is next:
    the batches before it were read, nothing of the shard is left in the cache."""
    index = remote(proxy.url, tmp_path / "cache", cache_mb=1.0, fetch_retries=2, fetch_timeout_s=1.0)
    name, n_before = later_shard(index)
    proxy.inject(name, times=10, **fault)
    ds = loaders.dataset(index, "train", "sample", train=True, frame_size=24, seed=0)
    got, t0 = [], time.monotonic()
    with pytest.raises(ShardFetchError) as err:
        for b in loaders.loader(ds, sampler_of(ds, window=1), workers=0, device="cpu"):
            got.append(b)
    msg = str(err.value)
    assert msg.startswith(f"shard {name}: fetching {proxy.url}/{name} failed 3 times, the last with ")
    assert says in msg and len(proxy.requests(name)) == 3
    assert len(got) == n_before
    assert time.monotonic() - t0 < 30  # 3 attempts of at most the 1 s timeout, backoff 0.5 + 1 s
    j = index.shard_names.tolist().index(name)
    assert not (tmp_path / "cache" / shard_cache.shard_file(index.shard_sha256[j], name)).exists()
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_a_missing_object_fails_at_once(features, proxy, tmp_path):
    index = remote(proxy.url, tmp_path / "cache", cache_mb=1.0, fetch_retries=3)
    name = first_shard(index)
    proxy.inject(name, times=10, status=404)
    with pytest.raises(ShardFetchError, match=rf"^shard {name}: {re.escape(proxy.url)}/{name}: FileNotFoundError"):
        batches(index, window=1)
    assert len(proxy.requests(name)) == 1


def test_a_server_that_stops_then_comes_back(features, proxy, tmp_path):
    """The server goes away mid-pass: the pass ends with the error naming the shard and URL; once it is back, a
    new pass (a rerun) reads the split, the same samples as the local index."""
    local = IndexReader(features / "index.h5")
    limit = 5 * int(local.shard_bytes.max())  # the fetches of later batches wait for room
    index = remote(proxy.url, tmp_path / "cache", cache_mb=limit / MIB, fetch_retries=1, fetch_threads=1)
    ds = loaders.dataset(index, "train", "sample", train=True, frame_size=24, seed=0)
    it = iter(loaders.loader(ds, sampler_of(ds, window=1), workers=0, device="cpu"))
    next(it)
    proxy.stop()  # refused from now on; a kept-alive connection is cut (its client sees a disconnect)
    lost = "(ClientConnectorError|ServerDisconnectedError|ClientOSError)"
    with pytest.raises(ShardFetchError, match=rf"^shard train-\d+\.tar: fetching {re.escape(proxy.url)}/train-\d+\.tar "
                                              rf"failed 2 times, the last with {lost}"):
        list(it)
    proxy.start()
    fresh = remote(proxy.url, tmp_path / "cache", cache_mb=1.0)
    assert_same_batches(batches(fresh, window=1), batches(local, window=1))


def test_the_index_itself_is_fetched_with_the_same_retries(features, proxy, tmp_path):
    proxy.inject("index.h5", times=1, status=502)
    index = remote(proxy.url, tmp_path / "cache", cache_mb=1.0)
    assert index.keys.tolist() == IndexReader(features / "index.h5").keys.tolist()
    proxy.inject("index.h5", times=5, status=502)
    with pytest.raises(ShardFetchError, match=rf"^index\.h5: fetching {re.escape(proxy.url)}/index\.h5 failed 3 times"):
        remote(proxy.url, tmp_path / "other", cache_mb=1.0)


def test_a_remote_index_pickles_without_its_cache(features, nginx, tmp_path):
    """A spawned worker gets the index's arrays and cache folder, not its threads: it reads what is in place."""
    import pickle

    index = remote(nginx.url, tmp_path / "cache", cache_mb=1.0)
    batches(index, window=1)
    copy = pickle.loads(pickle.dumps(index))
    assert copy.cache is None and copy.read_sample(0) == IndexReader(features / "index.h5").read_sample(0)
