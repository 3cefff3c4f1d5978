"""The Data Remixing batch sampler: modality-pure batches drawn from windows of shards, from metadata alone.

In Data Remixing (ICML 2025) every training sample is assigned, each epoch, to ONE
modality (the one it learns worst); training then streams *modality-pure* batches:
every sample of a batch has the same assigned modality and the other modalities are
masked. :class:`RemixBatchSampler` turns a per-sample assignment into such batches. It
only sees numpy arrays (the shard id of each sample, the assignment): no file is opened,
so it works on an index whose shards are absent.

Epoch plan, deterministic for ``(seed, epoch)`` (rank and world size do not change it)::

    rng = numpy.random.default_rng([seed, epoch])
    shard order     = a random permutation of the shards present
    blocks          = the shard order cut into runs of ``shuffle_window`` shards
                      (0: one block of all shards)
    epoch order     = the blocks in that order, the samples of each block shuffled
                      together (a shuffle block, as MosaicML Streaming's py1b/py1e)
    groups          = per modality code m (ascending), its samples in epoch order;
                      one group with code -1 when the assignment is None (multimodal)
    global batches  = each group cut into consecutive runs of ``batch_size``; a group's
                      last, incomplete run is kept, or dropped with ``drop_last``
    batch order     = "interleaved": a seeded shuffle of all groups' batches;
                      "sequential": all batches of modality_order[0], then [1], ...
                      (the official code's order)

Every sample appears exactly once per epoch (never repeated, never padded) unless it
falls in a dropped incomplete batch. Since a group is cut from the epoch order, a batch's
samples come from one block, or two consecutive ones, of the epoch's shard order.
``shuffle_window`` trades read locality for mixing (the trainer passes ``train.shuffle_window``,
default 0): 1 (this class's default, kept by the evaluation and scoring loaders, and the plan
before the window existed, bit for bit) shuffles each shard on its own, so a batch holds one or two shards
(when a shard holds at least ``batch_size`` samples of the batch's modality): shard-local reads,
but a batch is as homogeneous as a shard; w > 1 mixes w shards per block, so a batch is a random
sample of w shards (a streaming reader keeps w shards open); 0 is a full shuffle of the split
every epoch (the official code's ``DataLoader(shuffle=True)``). The shard permutation is drawn
for every window, so the other random numbers of the plan do not depend on it. Extraction writes
each split's clips in a seeded random order (pipeline/extract.py), so a shard is a random sample
of its split, not one actor's clips.

Repeats (Resample, :meth:`set_repeats`): with ``copies`` [N] set, position ``i`` enters the
epoch ``copies[i]`` times (0: left out). The copies are drawn in the same plan: the same shard
permutation, then every copy of the block's samples shuffled within its block's run, so batches
stay within their blocks and copies of one sample usually fall in different batches; every copy carries
the sample's assigned modality. Items then are ``(i, m, epoch, c)`` with ``c`` the copy's number
(0, 1, ...; in epoch order), so the copies draw different augmentations (``c = 0`` draws what the
plain item would). With ``copies`` None (the default) the plan and the items are exactly those
above; all-ones copies give the same plan with ``c = 0`` on every item.

``pure=False`` (the "decouple only" ablation) cuts a single group, all samples in epoch
order, into mixed batches; every item still carries its own assigned modality.

Distributed training and DataLoader workers:

- ``batch_size`` is the GLOBAL batch. Every rank computes the same global plan and
  yields, for each global batch, its contiguous slice: the ``rank``-th of
  ``world_size`` near-equal chunks (``numpy.array_split``). So all ranks run the same
  number of steps with the same modality at every step, on disjoint samples whose union
  is the global batch. With ``world_size > 1`` an incomplete batch smaller than
  ``world_size`` is dropped (some rank would get nothing), and counted as dropped.
  Chunks of an incomplete batch differ in size by at most one sample: average the loss
  over the global count (or accept the tiny bias).
- The DataLoader uses this object as ``batch_sampler``: the sampler runs in the main
  process (so :meth:`set_epoch` / :meth:`set_assignment` take effect at the next
  ``iter(loader)``, even with persistent workers), and hands each (per-rank) batch, in
  order, to one worker, round-robin. That worker reads and decodes every sample of the
  batch and collates it; the loader returns batches in sampler order.

Items are ``(i, m, epoch)``: ``i`` the position of the sample in the ``shard`` array (the
split's sample list, i.e. ``index.indices(split)[i]`` is its index row), ``m`` its modality
code, or -1 for multimodal, and the epoch (it seeds the sample's augmentation, so a resumed
run draws the same crops); :meth:`global_batches` gives ``(i, m)`` pairs.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

ORDERS = ("interleaved", "sequential")
MULTIMODAL = -1  # modality code of an unassigned sample: all modalities present


class RemixBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of ``(i, m)`` for one rank; see the module docstring for the plan.

    Args:
        shard: [N] shard id of each sample (used for read locality only).
        batch_size: the GLOBAL batch size (sum over ranks), >= ``world_size``.
        drop_last: drop each group's last, incomplete batch.
        seed: base seed; the epoch plan depends on ``(seed, epoch)`` only.
        order: ``"interleaved"`` or ``"sequential"``.
        modality_order: modality codes in the order "sequential" yields them; default
            ``0, 1, ..., K-1``. Must be a permutation of ``range(K)``.
        pure: modality-pure batches (True) or mixed batches (False).
        rank, world_size: this process's slice of every global batch.
        shuffle_window: shards whose samples are shuffled together (>= 1), or 0: all of them (a full
            shuffle); 1: shard-local batches.

    Until :meth:`set_assignment` is called, the assignment is None (multimodal).
    """

    def __init__(
        self,
        shard: np.ndarray,
        *,
        batch_size: int,
        drop_last: bool,
        seed: int,
        order: str = "interleaved",
        modality_order: Sequence[int] | None = None,
        pure: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shuffle_window: int = 1,
    ):
        super().__init__()
        shard = np.asarray(shard)
        if shard.ndim != 1 or (shard.size and not np.issubdtype(shard.dtype, np.integer)):
            raise ValueError(f"shard must be a 1-D integer array, got shape {shard.shape} dtype {shard.dtype}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < world_size:
            raise ValueError(f"the global batch_size ({batch_size}) must be >= world_size ({world_size})")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, (int, np.integer)) or shuffle_window < 0:
            raise ValueError(f"shuffle_window must be an integer >= 0 (0: all shards), got {shuffle_window!r}")
        self.shard = shard.astype(np.int64)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.order = order
        self.modality_order = None if modality_order is None else tuple(int(m) for m in modality_order)
        self.pure = bool(pure)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle_window = int(shuffle_window)
        self.epoch = 0
        self.start = 0  # global batches of this epoch to skip (resume)
        self.assignment: np.ndarray | None = None
        self.num_modalities = 0
        self.repeats: np.ndarray | None = None  # [N] copies of each sample this epoch, None: once each
        self._version = 0  # bumped by set_assignment / set_repeats: invalidates the cached plan
        self._cache: tuple[tuple[int, int], list[tuple[int | None, np.ndarray]], dict] | None = None
        self._copy_of: list[np.ndarray] = []  # per planned batch: its entries' copy numbers

    def __repr__(self) -> str:
        return (f"RemixBatchSampler(N={len(self.shard)}, batch_size={self.batch_size}, drop_last={self.drop_last}, "
                f"order={self.order!r}, pure={self.pure}, shuffle_window={self.shuffle_window}, "
                f"rank={self.rank}/{self.world_size}, epoch={self.epoch}, "
                f"modalities={self.num_modalities if self.assignment is not None else 'multimodal'})")

    @property
    def num_samples(self) -> int:
        """N, the samples of the split."""
        return len(self.shard)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's plan (call before each epoch, on every rank); ``start``: the global
        batches of the epoch already done (a resumed run), which the next iteration skips."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def set_assignment(self, assignment: np.ndarray | None, num_modalities: int, pure: bool | None = None) -> None:
        """Set the modality of every sample: [N] ints in [0, K), or None (all multimodal, code -1);
        ``pure``: modality-pure (True) or mixed (False) batches from now on (None: unchanged)."""
        k = int(num_modalities)
        if k < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        if assignment is not None:
            a = np.asarray(assignment)
            if a.shape != self.shard.shape:
                raise ValueError(f"assignment has shape {a.shape}, the sampler has {self.shard.shape} samples")
            if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= k):
                raise ValueError(f"assignment must hold integers in [0, {k}), got dtype {a.dtype}, "
                                 f"range [{a.min()}, {a.max()}]")
            assignment = a.astype(np.int64)  # a copy: later edits of the caller's array do not leak in
        if self.modality_order is not None and sorted(self.modality_order) != list(range(k)):
            raise ValueError(f"modality_order {self.modality_order} is not a permutation of range({k})")
        self.assignment, self.num_modalities = assignment, k
        if pure is not None:
            self.pure = bool(pure)
        self._version += 1

    def set_repeats(self, copies: np.ndarray | None) -> None:
        """Each position ``i`` appears ``copies[i]`` times per epoch ([N] integers >= 0), or None: once each."""
        if copies is not None:
            c = np.asarray(copies)
            if c.shape != self.shard.shape:
                raise ValueError(f"copies has shape {c.shape}, the sampler has {self.shard.shape} samples")
            if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0):
                raise ValueError(f"copies must hold integers >= 0, got dtype {c.dtype}"
                                 + (f", min {c.min()}" if np.issubdtype(c.dtype, np.number) else ""))
            copies = c.astype(np.int64)  # a copy: later edits of the caller's array do not leak in
        self.repeats = copies
        self._version += 1

    # -- the plan ------------------------------------------------------------------------

    def epoch_order(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """[N] sample positions in the epoch's order: shards shuffled, cut into blocks of ``shuffle_window``
        shards, samples shuffled within each block ([sum(copies)] positions, each repeated, with
        :meth:`set_repeats`). The batches of a modality are its samples in this order, cut into runs."""
        return self._order(rng)[0]

    def _order(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The epoch order as ([M] positions, [M] copy numbers); M = N without repeats, else sum(copies)."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, self.epoch])
        shards = np.unique(self.shard)
        rank_of = np.empty(shards.size, np.int64)
        rank_of[rng.permutation(shards.size)] = np.arange(shards.size)
        n = len(self.shard)
        if self.repeats is None:
            pos, copy = np.arange(n), np.zeros(n, np.int64)
        else:  # [M] entries: position i repeated copies[i] times, numbered 0, 1, ... within i
            pos = np.repeat(np.arange(n), self.repeats)
            copy = np.arange(pos.size) - np.repeat(np.cumsum(self.repeats) - self.repeats, self.repeats)
        shard_rank = rank_of[np.searchsorted(shards, self.shard[pos])]  # [M] position of each entry's shard
        block = shard_rank // self.shuffle_window if self.shuffle_window else np.zeros_like(shard_rank)
        within = rng.permutation(pos.size)  # unique keys: a shuffle within each block
        order = np.lexsort((within, block))
        return pos[order], copy[order]

    def _codes(self) -> list[int]:
        if self.assignment is None:
            return [MULTIMODAL]
        return list(self.modality_order) if self.modality_order is not None else list(range(self.num_modalities))

    def _plan(self) -> tuple[list[tuple[int | None, np.ndarray]], dict]:
        """Global batches ``(code, positions)`` (code None = mixed) in yield order, and the stats (cached per
        epoch, assignment and repeats). With repeats, ``self._copy_of`` maps each batch (by its place) to
        its entries' copy numbers."""
        key = (self.epoch, self._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, self.epoch])
        order, copy = self._order(rng)  # [M] positions and copy numbers in epoch order
        codes = self._codes()
        assigned = (np.full(len(self.shard), MULTIMODAL, np.int64) if self.assignment is None
                    else self.assignment)
        entries = np.arange(order.size)  # [M] places in the epoch order
        if self.pure:
            groups = [(c, entries[assigned[order] == c]) for c in codes]
        else:
            groups = [(None, entries)]
        batches: list[tuple[int | None, np.ndarray]] = []
        copies: list[np.ndarray] = []
        dropped = np.zeros(0, np.int64)
        for code, members in groups:
            for start in range(0, members.size, self.batch_size):
                e = members[start : start + self.batch_size]
                b = order[e]
                if b.size < self.batch_size and (self.drop_last or b.size < self.world_size):
                    dropped = np.concatenate([dropped, b])
                else:
                    batches.append((code, b))
                    copies.append(copy[e])
        if self.order == "interleaved":
            perm = rng.permutation(len(batches))
            batches, copies = [batches[j] for j in perm], [copies[j] for j in perm]
        # "sequential": groups were cut in modality_order, so the batches already are in that order
        stats = {}
        for c in codes:
            in_batches = [b for _, b in batches if (assigned[b] == c).any()]
            stats[c] = {
                "samples": int(sum((assigned[b] == c).sum() for b in in_batches)),
                "batches": len(in_batches),
                "dropped": int((assigned[dropped] == c).sum()),
            }
        self._cache = (key, batches, stats)
        self._copy_of = copies
        return batches, stats

    def global_batches(self) -> list[list[tuple[int, int]]]:
        """This epoch's GLOBAL batches (all ranks' slices together), in order."""
        assigned = self.assignment
        return [[(int(i), MULTIMODAL if assigned is None else int(assigned[i])) for i in b]
                for _, b in self._plan()[0]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches, _ = self._plan()
        assigned = self.assignment
        for j, (_, b) in enumerate(batches[self.start:], self.start):
            part = np.array_split(b, self.world_size)[self.rank]
            if self.repeats is not None:  # (i, m, epoch, copy number)
                c = np.array_split(self._copy_of[j], self.world_size)[self.rank]
                yield [(int(i), MULTIMODAL if assigned is None else int(assigned[i]), self.epoch, int(k))
                       for i, k in zip(part, c)]
            elif assigned is None:
                yield [(int(i), MULTIMODAL, self.epoch) for i in part]
            else:
                yield [(int(i), int(assigned[i]), self.epoch) for i in part]

    def __len__(self) -> int:
        """Batches (steps) this epoch still yields (all of them unless resumed); the same on every rank."""
        return max(len(self._plan()[0]) - self.start, 0)

    def stats(self) -> dict[int, dict[str, int]]:
        """This epoch's GLOBAL counts per modality code (all of ``range(K)``, or just -1 when multimodal).

        ``{code: {"samples": yielded samples, "batches": batches holding the code,
        "dropped": samples left out by drop_last}}``. With ``pure=False`` batches are mixed,
        so one batch counts for every code it holds.
        """
        return {c: dict(v) for c, v in sorted(self._plan()[1].items())}
