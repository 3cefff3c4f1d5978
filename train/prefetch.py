"""The sampler's plan drives the shard cache: a loader over a remote feature set fetches ahead what it will read.

:func:`train.loaders.loader` wraps a loader's batch sampler and the loader built on it when the dataset's index is
remote (:class:`train.shard_cache.RemoteIndex`, :func:`cache_of`); over a local index nothing changes. Per
iteration of the loader:

- :class:`PlannedSampler` lists the batches the wrapped sampler yields this time (``list(sampler)``: whatever
  its order, e.g. :class:`train.sampler.RemixBatchSampler`'s with this rank's slices, a resumed epoch's
  remaining batches, a shuffle window), maps them to the shard rows they read, and starts a cache pass with
  them (:meth:`train.shard_cache.ShardCache.begin_pass`): the cache fetches the shards of the next batches in
  that order. Before it hands batch n to the DataLoader it waits until batch n's shards are in the cache
  (:meth:`~train.shard_cache.ShardCache.dispatch`). So each rank fetches the shards of its own slices only.
- When is a batch read? The DataLoader asks its batch sampler for batch n only after it has received batch
  ``n - lag`` from its workers (``lag`` = ``prefetch_factor x workers``: the batches it keeps in flight; 1
  without workers, where it reads batch n - 1 before asking for batch n). So at batch n the shards of the
  batches up to ``n - lag`` can be evicted, not those of the batches still in flight.
- :class:`PlannedLoader` ends the pass when the loader is exhausted (every batch read).

A cache serves one pass at a time: a new iteration of any loader over the same index starts a new pass, and
the previous one counts as read (the trainer iterates its loaders one after the other; two loaders of one
index iterated in lockstep would let the second pass evict shards the first still reads, and a worker would
then fail loudly on the missing file).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


class PlannedSampler(torch.utils.data.Sampler):
    """``sampler``'s batches, each handed out once its shards are in ``cache``; ``shard`` [N]: the shard row of
    each split position (the items' first element)."""

    def __init__(self, sampler, shard: np.ndarray, cache):
        super().__init__()
        self.sampler, self.shard, self.cache = sampler, np.asarray(shard, np.int64), cache
        self.lag = 1  # set by train.loaders.loader (lag_of): batches the DataLoader keeps in flight

    def __len__(self) -> int:
        return len(self.sampler)

    def positions(self, batch) -> np.ndarray:
        return np.array([it[0] if isinstance(it, (tuple, list)) else it for it in batch], np.int64)

    def __iter__(self) -> Iterator:
        batches = list(self.sampler)
        self.cache.begin_pass([self.shard[self.positions(b)] for b in batches])
        for n, b in enumerate(batches):
            self.cache.dispatch(n, completed=n - self.lag)
            yield b


class PlannedLoader:
    """A loader over a :class:`PlannedSampler`: iterated like the loader; its pass ends with the last batch."""

    def __init__(self, loader: Iterable[dict], sampler: PlannedSampler):
        self.loader, self.sampler = loader, sampler

    def __iter__(self) -> Iterator[dict]:
        yield from self.loader
        self.sampler.cache.end_pass()

    def __len__(self) -> int:
        return len(self.loader)


def lag_of(loader: torch.utils.data.DataLoader) -> int:
    """Batches a DataLoader has asked its sampler for beyond those it returned (see the module docstring)."""
    return loader.num_workers * (loader.prefetch_factor or 2) if loader.num_workers > 0 else 1


def cache_of(dataset):
    """The shard cache of ``dataset``'s index, None for a local index."""
    return getattr(getattr(dataset, "index", None), "cache", None)
