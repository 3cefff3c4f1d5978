"""The datasets and loaders of a run, by ``train.decode``; each loader is iterated the same way whichever it is.

- ``sample``: :class:`train.data.ShardDataset` + :func:`train.data.make_loader`: DataLoader workers read,
  decode and augment each sample on the CPU;
- ``batch``: :class:`train.gpu_batch.ShardBytesDataset` + :func:`train.gpu_batch.make_bytes_loader`, wrapped in
  :class:`train.gpu_batch.DecodedLoader`: workers read bytes, the main process decodes and augments each batch
  on the run's device (on CUDA: one batched ``decode_jpeg`` call, one batch ahead on a side stream). On the CPU
  both give the same batches, bit for bit (``tests/train/test_gpu_batch.py``, ``tests/train/test_decode.py``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from pipeline.shards import IndexReader
from train import prefetch
from train.data import ShardDataset, make_loader, whole_split_sampler
from train.gpu_batch import BatchDecoder, DecodedLoader, ShardBytesDataset, make_bytes_loader

DECODES = ("sample", "batch")  # the choices of train.decode


def dataset(index: IndexReader, split: str, decode: str, **kwargs) -> ShardDataset:
    """The dataset of ``split`` for ``decode`` (``kwargs``: those of :class:`train.data.ShardDataset`)."""
    if decode not in DECODES:
        raise ValueError(f"train.decode: must be one of {' | '.join(DECODES)}, got {decode!r}")
    cls = ShardBytesDataset if decode == "batch" else ShardDataset
    return cls(index, split, **kwargs)


def frame_settings(cfg) -> dict:
    """The dataset keyword arguments of the ``train`` settings that shape the frames (a TrainConfig)."""
    return dict(frame_size=cfg.frame_size, clip_frames=cfg.clip_frames, crop=cfg.crop,
                crop_scale_min=cfg.crop_scale_min, eval_resize=cfg.eval_resize)


def loader(ds: ShardDataset, batch_sampler, *, workers: int, device: torch.device) -> Iterable[dict]:
    """The batches of ``batch_sampler`` over ``ds``: a DataLoader (``sample``), or a byte loader whose batches
    are decoded on ``device`` (``batch``: ``ds`` a :class:`ShardBytesDataset`). Over a remote index
    (``train.source``), the sampler's batches drive the shard cache (:mod:`train.prefetch`)."""
    cache = prefetch.cache_of(ds)
    planned = None if cache is None else prefetch.PlannedSampler(batch_sampler, ds.shard_ids(), cache)
    sampler = batch_sampler if planned is None else planned
    if isinstance(ds, ShardBytesDataset):
        inner = make_bytes_loader(ds, sampler, workers=workers)
        out = DecodedLoader(inner, BatchDecoder.of(ds), torch.device(device))
    else:
        out = inner = make_loader(ds, sampler, workers=workers)
    if planned is None:
        return out
    planned.lag = prefetch.lag_of(inner)
    return prefetch.PlannedLoader(out, planned)


def whole_split_loader(ds: ShardDataset, *, batch_size: int, workers: int, num_modalities: int,
                       device: torch.device, seed: int = 0) -> Iterable[dict]:
    """Every sample of ``ds``'s split with every modality (validation, scoring and test passes)."""
    sampler = whole_split_sampler(ds, batch_size=batch_size, num_modalities=num_modalities, seed=seed)
    return loader(ds, sampler, workers=workers, device=device)
