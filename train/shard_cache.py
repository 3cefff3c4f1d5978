"""The bounded local cache of a remote feature set's shards, filled ahead of the reads by the sampler's plan.

:func:`open_index` is where every reader (training, validation, scoring, evaluate) gets its index: with
``train.source: local`` the plain :class:`pipeline.shards.IndexReader`; otherwise a :class:`RemoteIndex`, whose
``index.h5`` is fetched first (small) and whose shards are read from a :class:`ShardCache` folder
(``<out_dir>.cache/rank<r>/``, e.g. ``runs/<method>/train.cache/rank0/``, kept between runs, so a resumed run
reuses what it holds; git-ignored). The reads themselves are those of the local index, on local files, so the
samples are the same bytes.

:class:`ShardCache`:

- a shard is fetched whole (one request; :class:`train.remote.Fetcher`) into a temporary name, checked against
  the size and SHA-256 of ``index.h5``, then renamed to ``<sha256>-<shard name>``: a file under its final name is
  always complete and verified, also after a kill;
- the bytes on disk (shards landed plus shards being fetched, which are reserved before they start) never exceed
  the limit (``train.cache_mb``, per process); ``index.h5`` is not counted;
- a *pass* (one iteration of a loader: :mod:`train.prefetch`) declares its batches' shards in order; the cache
  then fetches the shards of the next batches in that order with ``train.fetch_threads`` threads (at most twice
  that many queued), as far ahead as the limit allows. A shard is *in use* while a batch that reads it is
  dispatched and not yet known to be read; it is never evicted then. Room is made by evicting the shards the
  pass no longer needs (least recently used first: after their last use in the pass); for the batch being
  dispatched (:data:`HORIZON_BATCHES`) also shards whose next use is later (farthest first, as Belady's
  policy does). When even that cannot make room for the batch about to be read, nothing being fetched, the
  limit is too small for the batches in flight and a ValueError names ``train.cache_mb`` and the bytes
  needed;
- a failed fetch (after its retries) is raised when the batch that needs the shard is about to be read: the
  batches before it are trained on, then the run stops with the error naming the shard and the URL.

Outside a pass (the main process reading a shard, e.g. ``verify``), :meth:`ShardCache.ensure` fetches the shard
synchronously. DataLoader worker processes only read files the main process put in place; a missing one in a
worker is a bug and fails loudly. The mel statistics read one member of up to 256 samples: those are ranged
reads (:meth:`RemoteIndex.read_member`), each checked against the tar header in front of the member, in
parallel, so the time to the first batch does not grow with the dataset.
"""
from __future__ import annotations

import bisect
import collections
import concurrent.futures
import logging
import os
import re
import tarfile
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.shards import IndexReader
from train.remote import LOCAL, Fetcher, Location, UrlSource, DvcSource, open_source

log = logging.getLogger(__name__)
MIB = 1 << 20
SHARD_FILE = re.compile(r"^[0-9a-f]{64}-.+\.tar$")  # <sha256>-<shard name>
RANGED_THREADS = 16  # concurrent ranged reads of single members (mel statistics): small, latency-bound requests
NEVER = float("inf")
# batches past the one being dispatched for which a prefetch may evict a shard the pass needs again later: 0, as
# the DataLoader's own in-flight batches (prefetch_factor x workers) already run that far ahead of the reads, and
# a shard fetched early pushes out one needed before it is (a sequential remix epoch reads a shard once per
# modality: tests/train/test_shard_cache.py)
HORIZON_BATCHES = 0


def shard_file(sha256: str, name: str) -> str:
    """A cached shard's file name: ``<sha256>-<shard name>`` (two shards with the same bytes stay two files)."""
    return f"{sha256}-{name}"


def cache_dir_of(out_dir: str | os.PathLike, rank: int = 0) -> Path:
    """The cache folder of a run whose output is ``out_dir`` (``runs/<method>/train``), for process ``rank``:
    ``runs/<method>/train.cache/rank<r>/``; evaluate uses the training run's (rank 0)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.cache") / f"rank{int(rank)}"


def open_index(index_path: str | os.PathLike, cfg, cache_dir: str | os.PathLike) -> IndexReader:
    """The index readers use, by ``cfg.source`` (a :class:`train.config.TrainConfig`): local, or remote
    through a cache in ``cache_dir`` limited to ``cfg.cache_mb`` MiB."""
    if cfg.source == LOCAL:
        return IndexReader(index_path)
    source = open_source(cfg.source, index_path, cfg.fetch_timeout_s)
    return RemoteIndex(source, cache_dir, limit_bytes=int(cfg.cache_mb * MIB), threads=cfg.fetch_threads,
                       fetcher=Fetcher(retries=cfg.fetch_retries))


class CacheTooSmall(ValueError):
    """The limit cannot hold the shards of the batches in flight plus the next one's."""


class ShardCache:
    """Shard files ``<sha256>.tar`` in ``directory``, at most ``limit_bytes`` of them; see the module docstring.

    Args:
        names, sizes, sha256: the index's shard table (row j: shard j).
        locate: shard row -> its remote :class:`train.remote.Location`.
    """

    def __init__(self, directory: str | os.PathLike, *, limit_bytes: int, names: Sequence[str],
                 sizes: Sequence[int], sha256: Sequence[str], locate: Callable[[int], Location], fetcher: Fetcher,
                 threads: int):
        if limit_bytes <= 0 or threads < 1:
            raise ValueError(f"need limit_bytes > 0 and threads >= 1, got {limit_bytes}, {threads}")
        self.dir = Path(directory)
        self.limit, self.threads = int(limit_bytes), int(threads)
        self.horizon = HORIZON_BATCHES
        self.names, self.sizes, self.sha256 = list(names), [int(s) for s in sizes], list(sha256)
        self.locate, self.fetcher = locate, fetcher
        self._cond = threading.Condition()
        self._present: collections.OrderedDict[int, int] = collections.OrderedDict()  # j -> bytes, LRU first
        self._inflight: dict[int, concurrent.futures.Future] = {}
        self._failed: dict[int, BaseException] = {}
        self._reserved = 0  # bytes of present + in-flight shards
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pass: _Pass | None = None
        self.stats = {"fetched": 0, "evicted": 0, "adopted": 0, "peak_bytes": 0}
        self.fetch_log: list[int] = []  # shard rows, in the order their fetches started
        self._adopt()

    # -- files -------------------------------------------------------------------------------------------

    def path(self, j: int) -> Path:
        return self.dir / shard_file(self.sha256[j], self.names[j])

    def _adopt(self) -> None:
        """Take over what an earlier run left: verified shards of this index (by name and size), least recently
        written first; temporary files of a killed fetch and shards of other indexes are deleted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        known = {shard_file(sha, name): j for j, (sha, name) in enumerate(zip(self.sha256, self.names))}
        found = []
        for p in self.dir.iterdir():
            j = known.get(p.name)
            if j is not None and p.stat().st_size == self.sizes[j]:
                found.append((p.stat().st_mtime, j))
            elif p.name.startswith(".tmp-") or SHARD_FILE.match(p.name):
                p.unlink(missing_ok=True)
        for _, j in sorted(found):
            self._present[j] = self.sizes[j]
            self._reserved += self.sizes[j]
        self.stats["adopted"] = len(found)
        while self._reserved > self.limit:
            self._evict(next(iter(self._present)))

    def cached_bytes(self) -> int:
        with self._cond:
            return sum(self._present.values())

    def has(self, j: int) -> bool:
        with self._cond:
            return j in self._present

    # -- fetching --------------------------------------------------------------------------------------

    def _admit(self, j: int) -> None:
        self.fetch_log.append(j)
        self._reserved += self.sizes[j]
        self.stats["peak_bytes"] = max(self.stats["peak_bytes"], self._reserved)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="shard-fetch")
        self._inflight[j] = self._pool.submit(self._fetch, j)

    def _fetch(self, j: int) -> None:
        try:
            self.fetcher.get_file(self.locate(j), self.path(j), what=f"shard {self.names[j]}", size=self.sizes[j],
                                  sha256=self.sha256[j])
        except BaseException as err:  # noqa: BLE001  handed to the reader that needs the shard
            with self._cond:
                self._inflight.pop(j, None)
                self._reserved -= self.sizes[j]
                self._failed[j] = err
                self._cond.notify_all()
            return
        with self._cond:
            self._inflight.pop(j, None)
            self._present[j] = self.sizes[j]
            self.stats["fetched"] += 1
            self._schedule()
            self._cond.notify_all()

    def _evict(self, j: int) -> None:
        self.path(j).unlink(missing_ok=True)
        self._reserved -= self._present.pop(j)
        self.stats["evicted"] += 1

    def _make_room(self, need: int, use: float, later: bool = True) -> bool:
        """Evict what must go for ``need`` more bytes, for a shard first needed by batch ``use``: shards the pass
        no longer needs (least recently used first), then, with ``later``, those next needed after ``use``
        (farthest first); never one in use. False (nothing evicted) when that cannot free enough."""
        free = self.limit - self._reserved
        if need <= free:
            return True
        p = self._pass
        unused, needed = [], []
        for k in self._present:
            nxt = p.next_use(k) if p is not None else NEVER
            if p is not None and p.in_use[k]:
                continue
            if nxt == NEVER:
                unused.append(k)
            elif nxt > use:
                needed.append((nxt, k))
        victims = unused + ([k for _, k in sorted(needed, reverse=True)] if later else [])
        take = []
        for k in victims:
            if free >= need:
                break
            take.append(k)
            free += self._present[k]
        if free < need:
            return False
        for k in take:
            self._evict(k)
        return True

    def _schedule(self) -> None:
        """Start fetching the shards of the pass's next batches, in order, while the limit and the queue allow."""
        p = self._pass
        if p is None:
            return
        i = max(p.scan, p.dispatched, 0)
        while i < len(p.batches):
            for j in p.batches[i]:
                if j in self._present or j in self._inflight or j in self._failed:
                    continue
                # past the horizon, only free room and shards the pass is done with (HORIZON_BATCHES)
                near = i <= p.dispatched + self.horizon
                if len(self._inflight) >= 2 * self.threads or not self._make_room(self.sizes[j], i, later=near):
                    p.scan = i
                    return
                self._admit(int(j))
            i += 1
        p.scan = i

    # -- passes ----------------------------------------------------------------------------------------

    def begin_pass(self, batches: list[np.ndarray]) -> None:
        """A loader's iteration starts: ``batches[n]`` are the shard rows batch n reads. The pass before it (if
        any) is over: everything it dispatched has been read."""
        with self._cond:
            self._pass = _Pass(batches)
            self._schedule()

    def dispatch(self, n: int, completed: int) -> None:
        """Batch ``n`` of the pass is about to go to the reader, batches up to ``completed`` are read: return
        when batch n's shards are all here (fetching ahead meanwhile); raise the fetch error of one that failed,
        or :class:`CacheTooSmall`."""
        with self._cond:
            p = self._pass
            p.advance(n, completed)
            for j in p.batches[n]:
                if j in self._present:
                    self._present.move_to_end(j)
            while True:
                self._schedule()
                missing = [int(j) for j in p.batches[n] if j not in self._present]
                if not missing:
                    return
                for j in missing:
                    if j in self._failed:
                        raise self._failed[j]
                if not self._inflight:
                    raise self._too_small(p, n, missing)
                self._cond.wait()

    def _too_small(self, p: _Pass, n: int, missing: list[int]) -> CacheTooSmall:
        held = sum(self.sizes[k] for k in self._present if p.in_use[k])
        need = held + sum(self.sizes[j] for j in missing)
        largest = max(self.sizes[j] for j in missing)
        if largest > self.limit:
            return CacheTooSmall(f"train.cache_mb: {self.limit / MIB:.3g} MiB cannot hold shard "
                                 f"{self.names[missing[0]]} ({largest / MIB:.3g} MiB); raise it")
        return CacheTooSmall(f"train.cache_mb: {self.limit / MIB:.3g} MiB cannot hold the shards of the batches "
                             f"being read plus batch {n}'s ({need / MIB:.3g} MiB); raise it (or lower train.workers, "
                             f"which sets the batches in flight)")

    def end_pass(self) -> None:
        """The pass's batches have all been read: its shards stay, evictable, until room is needed."""
        with self._cond:
            self._pass = None

    def ensure(self, j: int) -> Path:
        """Shard ``j``'s file, fetched now (synchronously) if it is not here."""
        with self._cond:
            while j not in self._present:
                if j in self._failed:
                    raise self._failed.pop(j)
                if j not in self._inflight:
                    if not self._make_room(self.sizes[j], -1):
                        raise CacheTooSmall(f"train.cache_mb: {self.limit / MIB:.3g} MiB cannot hold shard "
                                            f"{self.names[j]} ({self.sizes[j] / MIB:.3g} MiB) besides those in use")
                    self._admit(j)
                self._cond.wait()
            self._present.move_to_end(j)
            return self.path(j)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Pass:
    """One loader iteration's plan as the cache sees it: the shard rows of each batch, where it stands."""

    def __init__(self, batches: list[np.ndarray]):
        self.batches = [np.unique(np.asarray(b, np.int64)) for b in batches]
        uses: dict[int, list[int]] = collections.defaultdict(list)
        for n, b in enumerate(self.batches):
            for j in b:
                uses[int(j)].append(n)
        self.uses = dict(uses)
        self.in_use: collections.Counter[int] = collections.Counter()  # shard -> batches dispatched, not yet read
        self.dispatched = -1  # last batch handed to the reader
        self.completed = -1  # every batch up to this one has been read
        self.scan = 0  # the shards of batches [dispatched, scan) are all here or being fetched

    def advance(self, n: int, completed: int) -> None:
        for c in range(self.completed + 1, min(completed, n - 1) + 1):
            for j in self.batches[c]:
                self.in_use[int(j)] -= 1
        self.completed = max(self.completed, min(completed, n - 1))
        for j in self.batches[n]:
            self.in_use[int(j)] += 1
        self.dispatched = n

    def next_use(self, j: int) -> float:
        """The first batch after the dispatched one that reads shard ``j`` (NEVER: none)."""
        u = self.uses.get(int(j))
        if not u:
            return NEVER
        k = bisect.bisect_right(u, self.dispatched)
        return u[k] if k < len(u) else NEVER


class RemoteIndex(IndexReader):
    """An :class:`pipeline.shards.IndexReader` of a remote feature set: ``index.h5`` fetched into ``cache_dir``,
    shards read through a :class:`ShardCache` there (its ``cache``); see the module docstring."""

    def __init__(self, source: UrlSource | DvcSource, cache_dir: str | os.PathLike, *, limit_bytes: int,
                 threads: int, fetcher: Fetcher):
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        loc = source.index()
        fetcher.get_file(loc, cache_dir / "index.h5", what=source.index_name)
        super().__init__(cache_dir / "index.h5", shard_dir=cache_dir)
        self.source, self.url, self.fetcher = source, loc.url, fetcher
        self.cache = ShardCache(cache_dir, limit_bytes=limit_bytes, names=self.shard_names, sizes=self.shard_bytes,
                                sha256=self.shard_sha256, locate=lambda j: source.shard(self.shard_names[j]),
                                fetcher=fetcher, threads=threads)
        self._owner = os.getpid()
        held = self.cache.cached_bytes()
        log.info("features from %s; shard cache %s (limit %.4g MiB) holds %d shards (%.4g MiB) of an earlier run",
                 source.describe(), cache_dir, limit_bytes / MIB, self.cache.stats["adopted"], held / MIB)

    def __getstate__(self) -> dict:  # a spawned worker gets the index without the cache's threads and locks
        state = dict(self.__dict__)
        state["cache"] = state["source"] = state["fetcher"] = None
        return state

    def __repr__(self) -> str:
        return f"RemoteIndex({self.url}, cache {self.shard_dir})"

    def verify(self, splits: Sequence[str] | None = None, *, content: bool = True) -> None:
        """Nothing to check on disk: every shard's size and SHA-256 are checked as it lands in the cache."""

    def shard_path(self, row: int) -> Path:
        j = int(self.shard[row])
        if os.getpid() == self._owner and self.cache is not None:
            return self.cache.ensure(j)
        path = self.shard_dir / shard_file(self.shard_sha256[j], self.shard_names[j])
        if not path.is_file():
            raise RuntimeError(f"{path}: shard {self.shard_names[j]} is not in the cache although its batch was "
                               f"dispatched: a bug of train/prefetch.py (the reader ran ahead of the plan)")
        return path

    def read_member(self, row: int, member: str) -> bytes:
        """One member: from the cached shard when it is here, else by one ranged read (header + data)."""
        j = self.shard[row]
        if self.cache is None or self.cache.has(int(j)):
            try:
                return super().read_member(row, member)
            except FileNotFoundError:  # evicted meanwhile (the prefetch threads make room): read it remotely
                if self.cache is None:
                    raise
        m = self.members.index(member)
        offset, size = int(self.offset[row, m]), int(self.size[row, m])
        name = f"{self.keys[row]}.{member}"

        def check(data: bytes) -> None:  # the tar header block in front of the data names this member
            info = tarfile.TarInfo.frombuf(data[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
            if info.size != size or not info.name or not name.startswith(info.name):
                raise ValueError(f"the tar header at {offset - tarfile.BLOCKSIZE} is {info.name!r} ({info.size} "
                                 f"bytes), not {name!r} ({size} bytes)")

        loc = self.source.shard(self.shard_names[j])
        data = self.fetcher.get_range(loc, offset - tarfile.BLOCKSIZE, size + tarfile.BLOCKSIZE,
                                      what=f"shard {self.shard_names[j]}, member {name}", check=check)
        return data[tarfile.BLOCKSIZE:]

    def read_members(self, rows: Sequence[int], member: str) -> list[bytes]:
        """:meth:`read_member` of each row, ``RANGED_THREADS`` at a time."""
        with concurrent.futures.ThreadPoolExecutor(RANGED_THREADS, thread_name_prefix="member-fetch") as pool:
            return list(pool.map(lambda r: self.read_member(int(r), member), rows))
