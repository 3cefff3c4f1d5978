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
from train.data import ShardDataset, make_loader, whole_split_sampler
from train.gpu_batch import BatchDecoder, DecodedLoader, ShardBytesDataset, make_bytes_loader

DECODES = ("sample", "batch")  # the choices of train.decode


def dataset(index: IndexReader, split: str, decode: str, **kwargs) -> ShardDataset:
    """The dataset of ``split`` for ``decode`` (``kwargs``: those of :class:`train.data.ShardDataset`)."""
    if decode not in DECODES:
        raise ValueError(f"train.decode: must be one of {' | '.join(DECODES)}, got {decode!r}")
    cls = ShardBytesDataset if decode == "batch" else ShardDataset
    return cls(index, split, **kwargs)


def loader(ds: ShardDataset, batch_sampler, *, workers: int, device: torch.device) -> Iterable[dict]:
    """The batches of ``batch_sampler`` over ``ds``: a DataLoader (``sample``), or a byte loader whose batches
    are decoded on ``device`` (``batch``: ``ds`` a :class:`ShardBytesDataset`)."""
    if isinstance(ds, ShardBytesDataset):
        return DecodedLoader(make_bytes_loader(ds, batch_sampler, workers=workers), BatchDecoder.of(ds),
                             torch.device(device))
    return make_loader(ds, batch_sampler, workers=workers)


def whole_split_loader(ds: ShardDataset, *, batch_size: int, workers: int, num_modalities: int,
                       device: torch.device, seed: int = 0) -> Iterable[dict]:
    """Every sample of ``ds``'s split with every modality (validation, scoring and test passes)."""
    sampler = whole_split_sampler(ds, batch_size=batch_size, num_modalities=num_modalities, seed=seed)
    return loader(ds, sampler, workers=workers, device=device)
