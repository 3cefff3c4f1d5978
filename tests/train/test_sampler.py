"""RemixBatchSampler on synthetic arrays: purity, coverage, determinism, locality, orders, DDP slicing."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from pipeline.shards import IndexReader
from tests.train.test_data import extracted_features
from train.config import TrainConfig
from train.sampler import RemixBatchSampler


def make_shard(n: int = 103, shard_size: int = 10) -> np.ndarray:
    return np.arange(n) // shard_size


def make_assignment(n: int, k: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def sampler(shard, assignment=None, k=3, **kw) -> RemixBatchSampler:
    args = dict(batch_size=8, drop_last=False, seed=0) | kw
    s = RemixBatchSampler(shard, **args)
    if assignment is not None or k != 3:
        s.set_assignment(assignment, k)
    return s


def flat(batches) -> list[tuple[int, int]]:
    return [tuple(item[:2]) for b in batches for item in b]  # (i, m): the epoch tag dropped


def test_pure_batches_cover_every_sample_once():
    shard, a = make_shard(), make_assignment(103)
    s = sampler(shard, a)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len({m for _, m, *_ in b}) == 1  # modality-pure
        assert all(a[i] == m for i, m, _ in b)
        assert 1 <= len(b) <= 8
    items = flat(batches)
    assert sorted(i for i, _ in items) == list(range(103))  # exactly once
    # at most one incomplete batch per modality
    sizes = Counter(b[0][1] for b in batches if len(b) < 8)
    assert all(v == 1 for v in sizes.values())
    st = s.stats()
    assert set(st) == {0, 1, 2}
    for m in range(3):
        assert st[m]["samples"] == (a == m).sum() and st[m]["dropped"] == 0
        assert st[m]["batches"] == sum(1 for b in batches if b[0][1] == m) == -(-(a == m).sum() // 8)


def test_drop_last_drops_one_incomplete_batch_per_modality():
    shard, a = make_shard(), make_assignment(103)
    s = sampler(shard, a, drop_last=True)
    batches = list(s)
    assert all(len(b) == 8 for b in batches)
    seen = [i for i, _ in flat(batches)]
    assert len(seen) == len(set(seen))
    missing = set(range(103)) - set(seen)
    st = s.stats()
    for m in range(3):
        n = int((a == m).sum())
        assert st[m]["dropped"] == n % 8 == sum(1 for i in missing if a[i] == m)
        assert st[m]["samples"] == n - n % 8 and st[m]["batches"] == n // 8


def test_deterministic_per_seed_and_epoch():
    shard, a = make_shard(), make_assignment(103)
    s1, s2 = sampler(shard, a), sampler(shard, a)
    assert list(s1) == list(s2)
    assert list(s1) == list(s1)  # iterating again gives the same epoch
    first = list(s1)
    s1.set_epoch(1)
    assert list(s1) != first
    s2.set_epoch(1)
    assert list(s1) == list(s2)
    s3 = sampler(shard, a, seed=5)
    assert list(s3) != first
    # other epoch, same content
    assert sorted(flat(list(s1))) == sorted(flat(first))


def test_shard_local_order():
    shard = np.repeat(np.arange(12), 10)  # 12 shards of 10
    shard = shard[np.random.default_rng(0).permutation(shard.size)]  # sample positions do not follow shards
    a = make_assignment(shard.size)
    s = sampler(shard, a, batch_size=4)
    s.set_epoch(3)
    order = s.epoch_order()
    assert sorted(order) == list(range(shard.size))
    runs = shard[order]
    assert sum(1 for x, y in zip(runs, runs[1:]) if x != y) == 11  # each shard is one contiguous run
    rank = {sh: r for r, sh in enumerate(dict.fromkeys(runs))}  # shard -> place in the epoch's shard order
    spans = {}
    for b in s:
        ranks = [rank[shard[i]] for i, *_ in b]
        assert ranks == sorted(ranks)  # samples in the epoch's shard order
        spans.setdefault(b[0][1], []).append((ranks[0], ranks[-1]))
    # a modality's batches cover consecutive, non-overlapping runs of the shard order
    for m, sp in spans.items():
        sp.sort()
        assert all(hi <= lo for (_, hi), (lo, _) in zip(sp, sp[1:])), (m, sp)
    # sequential order yields each modality's batches in that order
    seq = sampler(shard, a, batch_size=4, order="sequential")
    seq.set_epoch(3)
    last = {}
    for b in seq:
        ranks = [rank[shard[i]] for i, *_ in b]
        assert ranks[0] >= last.get(b[0][1], 0)
        last[b[0][1]] = ranks[-1]
    # one group, shards bigger than the batch: a batch spans at most 2 consecutive shards
    s1 = sampler(shard, batch_size=8)
    s1.set_epoch(3)
    for b in s1:
        ranks = sorted({rank[shard[i]] for i, *_ in b})
        assert len(ranks) <= 2 and ranks[-1] - ranks[0] <= 1


def test_shard_order_changes_with_epoch():
    shard = make_shard(200, 10)
    s = sampler(shard)
    orders = []
    for e in range(3):
        s.set_epoch(e)
        orders.append(tuple(dict.fromkeys(shard[s.epoch_order()])))
    assert len(set(orders)) == 3


def test_sequential_order():
    shard, a = make_shard(), make_assignment(103)
    s = sampler(shard, a, order="sequential", modality_order=[2, 0, 1])
    mods = [b[0][1] for b in s]
    # all batches of modality 2, then 0, then 1
    assert mods == sorted(mods, key=[2, 0, 1].index)
    assert mods[0] == 2 and set(mods) == {0, 1, 2}
    default = sampler(shard, a, order="sequential")
    mods = [b[0][1] for b in default]
    assert mods == sorted(mods)
    interleaved = [b[0][1] for b in sampler(shard, a)]
    assert interleaved != sorted(interleaved)  # interleaved mixes the modalities' batches
    with pytest.raises(ValueError, match="permutation"):
        sampler(shard, a, order="sequential", modality_order=[0, 1])


def test_mixed_batches_keep_each_samples_modality():
    shard, a = make_shard(), make_assignment(103)
    s = sampler(shard, a, pure=False)
    batches = list(s)
    assert any(len({m for _, m, *_ in b}) > 1 for b in batches)
    items = flat(batches)
    assert sorted(i for i, _ in items) == list(range(103))
    assert all(m == a[i] for i, m in items)
    assert len(batches) == -(-103 // 8)
    st = s.stats()
    assert sum(v["samples"] for v in st.values()) == 103


def test_no_assignment_is_multimodal():
    shard = make_shard()
    s = sampler(shard)
    batches = list(s)
    assert all(m == -1 for _, m in flat(batches))
    assert sorted(i for i, _ in flat(batches)) == list(range(103))
    assert s.stats() == {-1: {"samples": 103, "batches": 13, "dropped": 0}}
    s.set_assignment(make_assignment(103), 3)
    assert {m for _, m in flat(s)} == {0, 1, 2}
    s.set_assignment(None, 3)
    assert {m for _, m in flat(s)} == {-1}


def test_empty_modality_has_no_batches():
    shard = make_shard()
    a = np.where(make_assignment(103, k=2) == 0, 0, 2)  # modality 1 gets nothing
    s = sampler(shard, a, k=3)
    assert {b[0][1] for b in s} == {0, 2}
    assert s.stats()[1] == {"samples": 0, "batches": 0, "dropped": 0}
    seq = sampler(shard, a, k=3, order="sequential")
    assert [b[0][1] for b in seq] == sorted(b[0][1] for b in seq)
    empty = sampler(np.zeros(0, np.int64), np.zeros(0, np.int64), k=2)
    assert list(empty) == [] and len(empty) == 0


@pytest.mark.parametrize("drop_last,pure", [(False, True), (True, True), (False, False)])
def test_simulated_ddp(drop_last, pure):
    shard, a = make_shard(), make_assignment(103)
    kw = dict(batch_size=9, drop_last=drop_last, pure=pure, world_size=2)
    ranks = [sampler(shard, a, rank=r, **kw) for r in range(2)]
    single = sampler(shard, a, batch_size=9, drop_last=drop_last, pure=pure)
    for s in ranks + [single]:
        s.set_epoch(4)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == len(ranks[0]) == len(ranks[1])
    for b0, b1, g in zip(r0, r1, ranks[0].global_batches()):
        assert b0 and b1 and abs(len(b0) - len(b1)) <= 1
        assert [it[:2] for it in b0 + b1] == g and {it[2] for it in b0 + b1} == {4}  # contiguous slices; epoch tag
        if pure:
            assert {m for _, m, _ in b0} == {m for _, m, _ in b1} and len({m for _, m, _ in b0}) == 1
    i0, i1 = {i for i, _ in flat(r0)}, {i for i, _ in flat(r1)}
    assert not i0 & i1
    assert i0 | i1 == {i for i, _ in flat(single.global_batches())}
    if not drop_last:
        # a global last batch of 1 sample cannot be split over 2 ranks: the only loss allowed
        dropped = sum(v["dropped"] for v in ranks[0].stats().values())
        assert len(i0 | i1) + dropped == 103 and dropped <= (3 if pure else 1)
    assert ranks[0].stats() == ranks[1].stats()


def test_ddp_drops_batches_smaller_than_world_size():
    shard = make_shard(17, 5)
    s = [sampler(shard, batch_size=8, world_size=2, rank=r) for r in range(2)]
    assert len(s[0]) == len(s[1]) == 2  # 17 = 8 + 8 + 1: the last one cannot be split
    assert s[0].stats()[-1] == {"samples": 16, "batches": 2, "dropped": 1}
    with pytest.raises(ValueError, match="world_size"):
        RemixBatchSampler(shard, batch_size=1, drop_last=False, seed=0, world_size=2, rank=0)


def test_bad_arguments():
    shard = make_shard()
    with pytest.raises(ValueError, match="order"):
        sampler(shard, order="random")
    with pytest.raises(ValueError, match="rank"):
        sampler(shard, rank=2, world_size=2)
    s = sampler(shard)
    with pytest.raises(ValueError, match="shape"):
        s.set_assignment(np.zeros(5, np.int64), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        s.set_assignment(np.full(103, 3), 3)
    a = make_assignment(103)
    s.set_assignment(a, 3)
    before = list(s)
    a[:] = 0  # the sampler keeps its own copy
    assert list(s) == before


def test_works_on_an_index_without_shards(cremad_raw, tmp_path_factory, tmp_path):
    """The sampler only needs the index's arrays: the tar files may be absent."""
    folder = tmp_path / "no_tars"
    shutil.copytree(extracted_features(cremad_raw, tmp_path_factory), folder)
    for p in folder.glob("*.tar"):
        p.unlink()
    index = IndexReader(folder / "index.h5")
    rows = index.indices("train")
    shard = index.shard[rows]
    assert len(np.unique(shard)) > 1
    s = RemixBatchSampler(shard, batch_size=2, drop_last=False, seed=0)
    s.set_assignment(np.arange(rows.size) % 2, 2)
    batches = list(s)
    assert sorted(i for i, _ in flat(batches)) == list(range(rows.size))
    assert all(len({m for _, m, *_ in b}) == 1 for b in batches)


def test_resume_skips_the_batches_already_done():
    shard = np.repeat(np.arange(4), 10)
    a = np.random.default_rng(0).integers(0, 2, 40)
    full = sampler(shard, a, batch_size=6, drop_last=False)
    full.set_epoch(3)
    whole = list(full)
    resumed = sampler(shard, a, batch_size=6, drop_last=False)
    resumed.set_epoch(3, start=4)
    assert len(resumed) == len(whole) - 4 and list(resumed) == whole[4:]
    resumed.set_epoch(4)  # the next epoch starts from its first batch
    assert len(resumed) == len(list(resumed)) == len(full)


# -- shuffle_window: blocks of shards shuffled together --------------------------------------------

def reference_order(shard: np.ndarray, seed: int, epoch: int, window: int) -> list[int]:
    """The documented plan, written out: the shard permutation, cut into blocks of ``window`` shards (0: one
    block), each block's samples ordered by the epoch's per-sample random keys (the same two draws)."""
    rng = np.random.default_rng([seed, epoch])
    shards = np.unique(shard)
    shard_order = shards[rng.permutation(shards.size)]
    keys = rng.permutation(shard.size)
    step = window or shards.size
    out = []
    for start in range(0, shards.size, step):
        block = set(shard_order[start:start + step].tolist())
        members = [i for i in range(shard.size) if shard[i] in block]
        out += sorted(members, key=lambda i: keys[i])
    return out


def mixed_shards(sizes=(10, 7, 12, 10, 3, 10, 9, 10, 11, 10, 4, 10), seed=0) -> np.ndarray:
    """Shards of unequal sizes whose samples do not follow the shard order."""
    shard = np.repeat(np.arange(len(sizes)), sizes)
    return shard[np.random.default_rng(seed).permutation(shard.size)]


@pytest.mark.parametrize("window", [0, 1, 2, 4, 5, 12, 40])
def test_epoch_order_is_the_documented_block_shuffle(window):
    shard = mixed_shards()
    s = sampler(shard, shuffle_window=window)
    for epoch in (0, 3):
        s.set_epoch(epoch)
        assert s.epoch_order().tolist() == reference_order(shard, 0, epoch, window)


def test_window_one_is_the_default_plan():
    """Samplers built without a window (evaluation, scoring, benchmarks) keep the shard-local plan of window 1."""
    shard, a = mixed_shards(), make_assignment(106)
    for kw in (dict(), dict(order="sequential"), dict(pure=False), dict(drop_last=True)):
        old, one = sampler(shard, a, **kw), sampler(shard, a, shuffle_window=1, **kw)
        for e in (0, 2):
            old.set_epoch(e), one.set_epoch(e)
            assert list(old) == list(one)
    # and window 1 keeps each shard one contiguous run of the epoch order
    runs = shard[sampler(shard, shuffle_window=1).epoch_order()]
    assert sum(1 for x, y in zip(runs, runs[1:]) if x != y) == 11


@pytest.mark.parametrize("window", [2, 3, 5])
def test_blocks_are_contiguous_runs_of_window_shards(window):
    shard = mixed_shards()
    s = sampler(shard, shuffle_window=window, batch_size=6)
    s.set_epoch(1)
    order = s.epoch_order()
    place = np.empty(order.size, np.int64)
    place[order] = np.arange(order.size)
    first = {sh: place[shard == sh].min() for sh in np.unique(shard)}
    by_start = sorted(first, key=first.get)  # shards in the order their blocks come
    blocks = [by_start[k:k + window] for k in range(0, len(by_start), window)]
    start = 0
    for block in blocks:  # each block's samples fill one contiguous run, in turn
        n = int(np.isin(shard, block).sum())
        assert set(shard[order[start:start + n]].tolist()) == set(block)
        start += n
    # the samples of a block are mixed: shards alternate inside the run
    runs = shard[order]
    assert sum(1 for x, y in zip(runs, runs[1:]) if x != y) > 3 * 11
    # a batch holds samples of one block or two consecutive ones: at most 2 * window shards
    block_of = {sh: k for k, b in enumerate(blocks) for sh in b}
    for b in s:
        ks = sorted({block_of[shard[i]] for i, *_ in b})
        assert len(ks) <= 2 and ks[-1] - ks[0] <= 1


def test_window_zero_is_a_full_shuffle():
    shard = mixed_shards()
    full, all_shards = sampler(shard, shuffle_window=0), sampler(shard, shuffle_window=12)
    for e in range(3):
        full.set_epoch(e), all_shards.set_epoch(e)
        assert full.epoch_order().tolist() == all_shards.epoch_order().tolist()  # one block of every shard
    # over many epochs every sample is about equally likely at every place (a uniform permutation)
    n, epochs = shard.size, 400
    first_half = np.zeros(n)
    for e in range(epochs):
        full.set_epoch(e)
        first_half[full.epoch_order()[: n // 2]] += 1
    share = first_half / epochs  # each sample's share of epochs in the first half: 0.5 expected (sd 0.025)
    assert abs(share.mean() - 0.5) < 0.01 and share.min() > 0.35 and share.max() < 0.65
    # neighbours in the epoch order: mostly of one shard with window 1, of any shard with window 0
    one = sampler(shard, shuffle_window=1)
    one.set_epoch(7), full.set_epoch(7)
    o1, o0 = one.epoch_order(), full.epoch_order()
    assert (shard[o1[:-1]] == shard[o1[1:]]).mean() > 0.85 and (shard[o0[:-1]] == shard[o0[1:]]).mean() < 0.3


@pytest.mark.parametrize("window", [0, 1, 3])
@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_batches_of_a_modality_are_its_samples_in_epoch_order(window, order):
    """What the oracle test relies on: modality m's batches, in yield order, are the m-assigned samples of
    ``epoch_order()`` cut into runs of batch_size (every sample once, any window)."""
    shard, a = mixed_shards(), make_assignment(106)
    s = sampler(shard, a, batch_size=5, order=order, shuffle_window=window)
    s.set_epoch(2)
    order_ = s.epoch_order()
    batches = list(s)
    assert sorted(i for b in batches for i, *_ in b) == list(range(106))
    for m in range(3):
        mine = [[int(i) for i, *_ in b] for b in batches if b[0][1] == m]
        expected = [int(i) for i in order_ if a[i] == m]
        runs = [expected[k:k + 5] for k in range(0, len(expected), 5)]
        if order == "sequential":  # in yield order
            assert mine == runs
        else:  # the same batches, interleaved with the other modalities' in a seeded order
            assert sorted(mine) == sorted(runs) and mine != runs


@pytest.mark.parametrize("window", [0, 2, 4])
@pytest.mark.parametrize("pure", [True, False])
def test_every_sample_once_per_epoch_for_any_window(window, pure):
    shard, a = mixed_shards(), make_assignment(106)
    for drop_last in (False, True):
        s = sampler(shard, a, pure=pure, shuffle_window=window, drop_last=drop_last)
        for e in range(3):
            s.set_epoch(e)
            seen = [i for i, _ in flat(s)]
            dropped = sum(v["dropped"] for v in s.stats().values())
            assert len(seen) == len(set(seen)) and len(seen) + dropped == 106
            if not drop_last:
                assert sorted(seen) == list(range(106))


@pytest.mark.parametrize("window", [0, 4])
def test_simulated_ddp_with_a_window(window):
    shard, a = mixed_shards(), make_assignment(106)
    kw = dict(batch_size=9, drop_last=False, world_size=2, shuffle_window=window)
    ranks = [sampler(shard, a, rank=r, **kw) for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1)
    for b0, b1, g in zip(r0, r1, ranks[0].global_batches()):
        assert b0 and b1 and abs(len(b0) - len(b1)) <= 1
        assert [it[:2] for it in b0 + b1] == g  # the ranks' contiguous slices make up the global batch
        assert len({m for _, m, _ in b0 + b1}) == 1
    i0, i1 = {i for i, _ in flat(r0)}, {i for i, _ in flat(r1)}
    assert not i0 & i1 and len(i0 | i1) + sum(v["dropped"] for v in ranks[0].stats().values()) == 106


def test_window_with_repeats_draws_every_copy():
    shard, a = mixed_shards(), make_assignment(106)
    copies = np.random.default_rng(2).integers(0, 4, 106)
    s = sampler(shard, a, shuffle_window=0, batch_size=7)
    s.set_repeats(copies)
    s.set_epoch(1)
    counts = Counter(i for b in s for i, *_ in b)
    assert all(counts[i] == copies[i] for i in range(106))
    runs = shard[s.epoch_order()]
    assert sum(1 for x, y in zip(runs, runs[1:]) if x != y) > 3 * 11  # copies mixed over all shards


def test_windows_change_the_batches_not_the_samples():
    shard, a = mixed_shards(), make_assignment(106)
    plans = {}
    for window in (0, 1, 4):
        s = sampler(shard, a, shuffle_window=window)
        s.set_epoch(3)
        plans[window] = list(s)
    assert plans[0] != plans[1] != plans[4] != plans[0]
    assert len({tuple(sorted(flat(p))) for p in plans.values()}) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_bad_shuffle_window(bad):
    with pytest.raises(ValueError, match="shuffle_window"):
        sampler(make_shard(), shuffle_window=bad)


def test_shuffle_window_setting_is_validated():
    assert TrainConfig().shuffle_window == 0  # the official code's full shuffle
    with pytest.raises(ValueError, match=r"train\.shuffle_window: must be >= 0, got -1"):
        TrainConfig.from_params({"shuffle_window": -1})
