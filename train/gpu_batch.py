"""The byte-batch path: DataLoader workers read bytes, the main process decodes and augments whole batches.

The per-sample path (:class:`train.data.ShardDataset`) decodes and augments every sample in a worker on the
CPU. Here the work is split where a GPU can take the expensive half:

- workers (:class:`ShardBytesDataset`, any number, CPU only): one open and one seek per member, the mel
  decoded and normalised (small), the frame members left undecoded: JPEG bytes, or the raw uint8 frames of
  ``features.frame_codec: raw`` (the .npy header parsed). :func:`collate_payloads` packs a batch's frames into
  one flat uint8 tensor plus offsets (two tensors through the workers' shared memory, not B x T);
- the main process (:func:`decode_batch`): all the batch's JPEGs in one batched
  ``torchvision.io.decode_jpeg(list, device="cuda")`` call on CUDA (one image at a time on the CPU; raw frames
  are copied to the device, nothing to decode), then, on the batch's device, the same transforms as the
  per-sample path: train: the random resized crop and flip drawn from the same per-sample stream
  (:func:`train.data.augmentation_generator` of seed, epoch, sample, copy), eval: resize + center crop; then
  the ImageNet normalisation. On the CPU both paths give the same frames, bit for bit;
- :func:`prefetch`: decodes batch n+1 on a CUDA side stream while the caller's step n runs on the default
  stream (on the CPU it decodes in turn).

Use, per epoch (the batch has the keys of the per-sample loader's batches: ``mel``, ``frames``, ``label``,
``index``, ``modality``; ``mel`` and ``frames`` on ``device``)::

    ds = ShardBytesDataset(index, "train", train=True, frame_size=S, mel_mean=..., mel_std=..., seed=seed)
    loader = make_bytes_loader(ds, batch_sampler, workers=4)
    for batch in prefetch(loader, BatchDecoder.of(ds), device):
        ...  # the step, e.g. train.data.to_inputs(batch, modalities, device)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import torch

from train.data import (
    ShardDataset,
    augmentation_generator,
    decode_payloads,
    eval_frames,
    frame_payload,
    normalize_frames,
    train_frames,
)

INT_KEYS = ("label", "index", "modality", "epoch", "copy")  # per-sample integers, int64 [B] in the batch


class ShardBytesDataset(ShardDataset):
    """:class:`train.data.ShardDataset` whose items keep the frames undecoded (same arguments, but no
    ``gpu_decode``: the decoding device is :func:`decode_batch`'s). Item: ``mel`` float32 [1, F, L] (normalised),
    ``payloads`` (T uint8 tensors: JPEG bytes [N], or raw frames [H, W, 3]), and the ints ``label``, ``index``,
    ``modality``, ``epoch``, ``copy`` (the last two select the augmentation stream)."""

    def __getitem__(self, item: tuple[int, ...] | int) -> dict:
        i, m, epoch, copy, row, members, mel = self.read_item(item)
        payloads = [frame_payload(members[f], self.frame_codec) for f in self.chosen_members(epoch, i, copy)]
        return {"mel": mel, "payloads": payloads, "label": int(self.index.label[row]), "index": i, "modality": m,
                "epoch": epoch, "copy": copy}


def collate_payloads(items: list[dict]) -> dict:
    """Items of :class:`ShardBytesDataset` -> a batch: ``mel`` [B, 1, F, L]; the ints of :data:`INT_KEYS` [B];
    ``frame_data`` uint8 [total bytes], every frame of every sample (sample-major) end to end;
    ``frame_offsets`` int64 [B*T + 1] (frame k is ``frame_data[offsets[k]:offsets[k+1]]``);
    ``frame_shapes`` int64 [B*T, 3] (raw frames: H, W, 3; JPEG: the byte count, 0, 0)."""
    payloads = [p for it in items for p in it["payloads"]]
    sizes = torch.tensor([p.numel() for p in payloads], dtype=torch.int64)
    offsets = torch.zeros(len(payloads) + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=offsets[1:])
    shapes = torch.tensor([list(p.shape) + [0] * (3 - p.dim()) for p in payloads], dtype=torch.int64)
    batch = {"mel": torch.stack([it["mel"] for it in items]),
             "frame_data": torch.cat([p.reshape(-1) for p in payloads]),
             "frame_offsets": offsets, "frame_shapes": shapes,
             "num_frames": torch.tensor([len(it["payloads"]) for it in items], dtype=torch.int64)}
    batch.update({k: torch.tensor([it[k] for it in items], dtype=torch.int64) for k in INT_KEYS})
    return batch


def make_bytes_loader(dataset: ShardBytesDataset, batch_sampler, *, workers: int,
                      pin_memory: bool | None = None) -> torch.utils.data.DataLoader:
    """:func:`train.data.make_loader` for the byte-batch path: :func:`collate_payloads`, any number of
    workers (they never touch CUDA), pinned memory when CUDA is available (default)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                       collate_fn=collate_payloads, pin_memory=pin_memory,
                                       persistent_workers=workers > 0)


@dataclasses.dataclass(frozen=True)
class BatchDecoder:
    """What :func:`decode_batch` needs of the dataset: codec, train or eval transform, output side S, seed.
    Callable as ``decoder(batch, device)``."""

    frame_codec: str
    train: bool
    frame_size: int
    seed: int
    crop: str = "clip"  # clip | frame: one crop per clip or per frame (ShardDataset's)
    crop_scale_min: float = 0.5  # smallest area share of the training crop (ShardDataset's)
    eval_resize: str = "crop"  # crop | squash: the eval transform (ShardDataset's)

    @classmethod
    def of(cls, dataset: ShardDataset) -> BatchDecoder:
        return cls(dataset.frame_codec, dataset.train, dataset.frame_size, dataset.seed, dataset.crop,
                   dataset.crop_scale_min, dataset.eval_resize)

    def __call__(self, batch: dict, device: str | torch.device) -> dict:
        return decode_batch(batch, self, device)


def unpack_payloads(batch: dict, codec: str, device: torch.device) -> list[torch.Tensor]:
    """The batch's B*T frame payloads, views of ``frame_data``: JPEG bytes stay on the CPU (the decoder reads
    host memory); raw frames [H, W, 3] are views of one copy of ``frame_data`` on ``device``."""
    data, offsets = batch["frame_data"], batch["frame_offsets"].tolist()
    if codec == "raw":
        data = data.to(device, non_blocking=True)
        shapes = batch["frame_shapes"].tolist()
        return [data[a:b].view(*shape) for a, b, shape in zip(offsets[:-1], offsets[1:], shapes)]
    return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _transform(frames: list[torch.Tensor], batch: dict, decoder: BatchDecoder) -> torch.Tensor:
    """B uint8 [T, 3, H, W] stacks -> uint8 [B, T, 3, S, S], the per-sample path's train or eval transform."""
    size = decoder.frame_size
    if decoder.train:
        keys = zip(batch["epoch"].tolist(), batch["index"].tolist(), batch["copy"].tolist())
        return torch.stack([train_frames(f, size, augmentation_generator(decoder.seed, epoch, i, copy),
                                         per_frame=decoder.crop == "frame", scale_min=decoder.crop_scale_min)
                            for f, (epoch, i, copy) in zip(frames, keys)])
    if len({f.shape for f in frames}) == 1:  # one resize call for the whole batch (per image: same result)
        return eval_frames(torch.cat(frames), size, decoder.eval_resize).view(len(frames), -1, 3, size, size)
    return torch.stack([eval_frames(f, size, decoder.eval_resize) for f in frames])


def decode_batch(batch: dict, decoder: BatchDecoder, device: str | torch.device) -> dict:
    """A batch of :func:`collate_payloads` -> the per-sample loader's batch: ``frames`` float32 [B, T, 3, S, S]
    (decoded, transformed and normalised on ``device``) and ``mel`` [B, 1, F, L] on ``device``; ``label``,
    ``index``, ``modality`` stay where the loader put them. JPEGs: one batched ``decode_jpeg`` call on CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("decode_batch: device cuda requested but CUDA is not available")
    counts = batch["num_frames"].tolist()
    frames = decode_payloads(unpack_payloads(batch, decoder.frame_codec, device), decoder.frame_codec, device)
    starts = [sum(counts[:b]) for b in range(len(counts))]
    stacks = [torch.stack(frames[s:s + n]) for s, n in zip(starts, counts)]  # B x uint8 [T, 3, H, W]
    out = {k: batch[k] for k in ("label", "index", "modality")}
    out["mel"] = batch["mel"].to(device, non_blocking=True)
    frames = _transform(stacks, batch, decoder)  # uint8 [B, T, 3, S, S]
    # one call for the batch on a GPU; per sample on the CPU, where the float32 batch would not fit in cache
    on_cpu = device.type == "cpu"
    out["frames"] = torch.stack([normalize_frames(f) for f in frames]) if on_cpu else normalize_frames(frames)
    return out


@dataclasses.dataclass
class DecodedLoader:
    """A byte loader (:func:`make_bytes_loader`) whose batches come out decoded on ``device`` through
    :func:`prefetch`: iterated like the per-sample loader (same batch keys), so whatever iterates a loader (the
    training loop, :func:`train.inference.predict`, a method's pass over ``ctx.loaders``) needs no change."""

    loader: torch.utils.data.DataLoader
    decode: Callable[[dict, torch.device], dict]
    device: torch.device

    def __iter__(self) -> Iterator[dict]:
        return prefetch(self.loader, self.decode, self.device)

    def __len__(self) -> int:
        return len(self.loader)


def prefetch(batches: Iterable[dict], decode: Callable[[dict, torch.device], dict],
             device: str | torch.device) -> Iterator[dict]:
    """Yield ``decode(batch, device)`` for each batch, one batch ahead on CUDA: batch n+1's decode is queued
    on a side stream before batch n is yielded, so it runs while the caller's step n runs on the current
    stream (which waits for the side stream before it uses a batch). Without CUDA: decode, yield, in turn."""
    device = torch.device(device)
    if device.type != "cuda":
        for batch in batches:
            yield decode(batch, device)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def start(batch):  # its inputs are host tensors: nothing to wait for on the main stream
        with torch.cuda.stream(side):
            return decode(batch, device)

    it = iter(batches)
    ready = start(first) if (first := next(it, None)) is not None else None
    while ready is not None:
        main.wait_stream(side)
        for t in ready.values():
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(main)  # allocated on the side stream, used on the main one
        current, nxt = ready, next(it, None)
        ready = start(nxt) if nxt is not None else None
        yield current
