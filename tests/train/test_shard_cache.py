"""The shard cache's policy on a plan, over real files (a file:// source): what it keeps, what it evicts, its limit.

A plan is the list of shard rows each batch reads, in order (what train/prefetch.py hands the cache); a batch is
dispatched when the reader is about to get it, and read (completed) when the next one is dispatched (workers 0).
"""
from __future__ import annotations

import hashlib
import os

import pytest

from train.remote import Fetcher, UrlSource
from train.shard_cache import CacheTooSmall, ShardCache

SIZE = 1000


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    names, sha = [], []
    for j in range(6):
        data = os.urandom(SIZE)
        names.append(f"train-{j:06d}.tar")
        (folder / names[-1]).write_bytes(data)
        sha.append(hashlib.sha256(data).hexdigest())
    return folder, names, sha


def cache_over(shards, tmp_path, limit_shards: float, threads: int = 2) -> ShardCache:
    folder, names, sha = shards
    source = UrlSource(f"file://{folder}", "index.h5", timeout_s=5)
    return ShardCache(tmp_path / "cache", limit_bytes=int(limit_shards * SIZE), names=names, sizes=[SIZE] * 6,
                      sha256=sha, locate=lambda j: source.shard(names[j]), fetcher=Fetcher(retries=0), threads=threads)


def run(cache: ShardCache, plan: list[list[int]]) -> None:
    cache.begin_pass(plan)
    for n, batch in enumerate(plan):
        cache.dispatch(n, completed=n - 1)
        assert all(cache.path(j).is_file() for j in batch)  # the reader finds every shard of its batch
    cache.end_pass()


def test_a_shard_read_again_later_is_kept_over_one_the_pass_is_done_with(shards, tmp_path):
    cache = cache_over(shards, tmp_path, limit_shards=2)
    run(cache, [[0], [1], [2], [0]])
    assert cache.fetch_log == [0, 1, 2]  # 1 went after its last use; 0 stayed for batch 3
    assert cache.stats["peak_bytes"] <= 2 * SIZE


def test_a_sequential_remix_epoch_reads_each_shard_twice_and_refetches_only_what_did_not_fit(shards, tmp_path):
    """All batches of one modality, then the other's, over the same shard order: with room for 4 of the 6 shards,
    Belady's choice keeps the ones needed first in the second half; only the others are fetched again."""
    plan = [[j] for j in range(6)] * 2
    cache = cache_over(shards, tmp_path, limit_shards=4)
    run(cache, plan)
    assert cache.fetch_log[:6] == list(range(6))
    refetched = cache.fetch_log[6:]
    assert len(refetched) <= 6 - 4 + 1  # a least-recently-used cache would fetch all 6 again
    assert cache.stats["peak_bytes"] <= 4 * SIZE


def test_prefetch_fills_free_room_in_plan_order(shards, tmp_path):
    cache = cache_over(shards, tmp_path, limit_shards=6, threads=1)
    cache.begin_pass([[3], [1], [4], [0]])
    cache.dispatch(0, completed=-1)
    cache.dispatch(1, completed=0)
    cache.dispatch(2, completed=1)
    cache.dispatch(3, completed=2)
    assert cache.fetch_log == [3, 1, 4, 0]
    run(cache, [[3], [1], [4], [0]])  # the next pass: everything is here
    assert cache.fetch_log == [3, 1, 4, 0] and cache.stats["evicted"] == 0


def test_a_batch_that_cannot_fit_is_refused_naming_the_setting(shards, tmp_path):
    cache = cache_over(shards, tmp_path, limit_shards=2.5)
    cache.begin_pass([[0, 1, 2]])
    with pytest.raises(CacheTooSmall, match=r"^train\.cache_mb: .* cannot hold the shards of the batches being read "
                                            r"plus batch 0's"):
        cache.dispatch(0, completed=-1)
    small = cache_over(shards, tmp_path / "small", limit_shards=0.5)
    with pytest.raises(CacheTooSmall, match=r"^train\.cache_mb: .* cannot hold shard train-000000\.tar"):
        small.ensure(0)
