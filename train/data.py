"""The streaming reader: samples of the extracted shards, decoded and augmented, by index seeks.

:class:`ShardDataset` is a map-style dataset over one split of an ``index.h5``
(:class:`pipeline.shards.IndexReader`); item ``(i, m)`` reads sample ``i`` of the split
(``index.indices(split)[i]``) with one open and one seek per member, never parsing a tar.
Paired with :class:`train.sampler.RemixBatchSampler` as the DataLoader's
``batch_sampler``, each worker reads whole batches whose samples lie in one or two
shuffle windows of shards (``train.shuffle_window``). :func:`make_loader` builds that DataLoader.

Item (a dict; the default collate stacks it into a batch):

============  ====================  ==================================================
key           type / shape          meaning
============  ====================  ==================================================
``mel``       float32 [1, F, L]     stored log-mel, ``(x - mel_mean) / mel_std``
``frames``    float32 [T, 3, S, S]  RGB frames in [0, 1], ImageNet-normalised
``label``     int                   class index
``index``     int                   i, the sample's position in the split
``modality``  int                   m, the assigned modality code, -1 = multimodal
============  ====================  ==================================================

Frame transforms (torchvision.transforms.v2 functional ops, on the [T, 3, H, W] stack):

- train: RandomResizedCrop(S, scale=(crop_scale_min, 1), ratio=(3/4, 4/3)) then RandomHorizontalFlip
  (p=0.5). ``crop="clip"``: the crop box and the flip are drawn ONCE per clip and applied to all T
  frames, so the frames stay spatially aligned (the field's clip-level augmentation); ``crop="frame"``:
  one draw per frame (the official Data Remixing code). The draws come from a generator seeded by
  (seed, epoch, sample, copy) (:func:`augmentation_generator`): a resumed run, any worker count and any
  rank draw the same crops.
- eval: resize the short side to S (aspect kept), then center crop S x S (``eval_resize="crop"``), or resize the
  whole frame to S x S (``"squash"``: the official code's ``Resize((224, 224))``): deterministic.

Frames per clip (``clip_frames``): 0 feeds every stored frame; n > 0 cuts the T stored frames into n
segments of ``T // n`` and feeds one frame of each: a random one in training (its own seeded stream,
:func:`frame_choice_generator`), the segment's middle at eval (the official code's 2-frame sampling).
Only the chosen frames are decoded.

Frames are stored as JPEG (``frame<i>.jpg``) or raw uint8 arrays (``frame<i>.npy``, ``features.frame_codec:
raw``); the reader dispatches on the members' extensions (:func:`frame_payload`, :func:`decode_payloads`).
Decoding is on the CPU by default. ``gpu_decode=True`` decodes the JPEGs with
``torchvision.io.decode_jpeg(device="cuda")`` and transforms them there, only when
``torch.cuda.is_available()``; it needs ``workers=0`` (CUDA does not work in forked
DataLoader workers) and the item's ``frames`` then lie on the GPU. For decoding on the GPU with
workers, see :mod:`train.gpu_batch` (workers read bytes, the main process decodes whole batches).
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from pipeline.shards import IndexReader
from train.sampler import MULTIMODAL, RemixBatchSampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
MEL_MEMBER = "mel.npy"
# modality name -> the batch key holding its encoder's input (the one map from modalities to items)
BATCH_KEYS = {"audio": "mel", "video": "frames"}


def random_resized_crop_params(height: int, width: int, scale=CROP_SCALE, ratio=CROP_RATIO,
                               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop, torchvision's RandomResizedCrop algorithm.

    Area a fraction in ``scale`` of the image, aspect ratio log-uniform in ``ratio``;
    after 10 failed draws, the central crop of the clamped ratio.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_frames(frames: torch.Tensor, size: int, generator: torch.Generator | None = None, *,
                 per_frame: bool = False, scale_min: float = CROP_SCALE[0]) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: one random resized crop (area share in [scale_min, 1]) and
    one flip for all T frames, or (``per_frame``) one of each per frame, drawn in frame order."""
    if per_frame:
        return torch.cat([train_frames(f[None], size, generator, scale_min=scale_min) for f in frames])
    top, left, h, w = random_resized_crop_params(frames.shape[-2], frames.shape[-1], scale=(scale_min, 1.0),
                                                 generator=generator)
    out = TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
    if torch.rand(1, generator=generator).item() < 0.5:
        out = TF.horizontal_flip(out)
    return out


def choose_frames(stored: int, n: int, generator: torch.Generator | None) -> list[int]:
    """Which of ``stored`` frames a clip feeds: all (``n`` 0), or one per segment of ``stored // n`` frames: a
    random one (``generator``: training) or the segment's middle (None: eval); needs ``stored >= n``."""
    if n == 0:
        return list(range(stored))
    seg = stored // n
    if seg < 1:
        raise ValueError(f"train.clip_frames {n} > the {stored} frames stored per clip (features.num_frames)")
    if generator is None:
        return [min(k * seg + seg // 2, stored - 1) for k in range(n)]
    return [int(torch.randint(k * seg, min((k + 1) * seg, stored), (1,), generator=generator).item())
            for k in range(n)]


EVAL_RESIZES = ("crop", "squash")


def eval_frames(frames: torch.Tensor, size: int, resize: str = "crop") -> torch.Tensor:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: short side to ``size``, then center crop (``"crop"``), or the
    whole frame to ``size`` x ``size`` (``"squash"``)."""
    if resize == "squash":
        return TF.resize(frames, [size, size], antialias=True)
    return TF.center_crop(TF.resize(frames, [size], antialias=True), [size, size])


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32, scaled to [0, 1] then ImageNet-normalised."""
    return TF.normalize(TF.to_dtype(frames, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


def frame_payload(data: bytes, codec: str) -> torch.Tensor:
    """A stored frame member -> what is left to decode: JPEG: its bytes as uint8 [N]; raw: the uint8 [H, W, 3]
    frame itself (the .npy header parsed, no decoding)."""
    if codec == "raw":
        frame = np.load(io.BytesIO(data), allow_pickle=False)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"raw frame member: expected uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
        return torch.from_numpy(frame)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_payloads(payloads: list[torch.Tensor], codec: str, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Frame payloads (:func:`frame_payload`) -> uint8 [3, H, W] frames on ``device``. JPEG on CUDA: one batched
    ``decode_jpeg`` call for the whole list; on the CPU: one image at a time."""
    device = torch.device(device)
    if codec == "raw":
        return [p.to(device, non_blocking=True).permute(2, 0, 1) for p in payloads]
    if device.type == "cuda":
        return decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device)
    return [decode_jpeg(p, mode=ImageReadMode.RGB) for p in payloads]


def parse_item(item: tuple[int, ...] | int) -> tuple[int, int, int, int]:
    """A dataset item -> (i, m, epoch, copy): ``(i, m, epoch, copy)`` or ``(i, m, epoch)`` from the sampler,
    ``(i, m)`` (epoch 0) or ``i`` (multimodal, epoch 0); copy 0 when absent."""
    if isinstance(item, (tuple, list)):
        i, m = int(item[0]), int(item[1])
        epoch = int(item[2]) if len(item) > 2 else 0
        copy = int(item[3]) if len(item) > 3 else 0
        return i, m, epoch, copy
    return int(item), MULTIMODAL, 0, 0


def augmentation_generator(seed: int, epoch: int, i: int, copy: int = 0) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch, i[, copy]): :meth:`ShardDataset.augmentation_generator`."""
    entropy = [seed, epoch, i] if copy == 0 else [seed, epoch, i, copy]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def frame_choice_generator(seed: int, epoch: int, i: int, copy: int = 0) -> torch.Generator:
    """The stream that picks sample ``i``'s training frames (``clip_frames``), apart from its crop stream."""
    state = np.random.SeedSequence([seed, epoch, i, copy, 1]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def decode_mel(data: bytes) -> np.ndarray:
    """``mel.npy`` bytes -> the stored float16 [F, L] array."""
    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardDataset(torch.utils.data.Dataset):
    """One split of an extracted feature set, read by seeks; items as in the module docstring.

    Args:
        index: the index of the feature set (built once in the main process; workers
            inherit it and open the shard files per read).
        split: ``"train"``, ``"val"`` or ``"test"``.
        train: random crop + flip (True) or the deterministic eval transform.
        frame_size: S, the side of the square output frames.
        mel_mean, mel_std: mel normalisation (see :func:`estimate_mel_stats`).
        gpu_decode: decode JPEGs on the GPU when CUDA is available (workers=0 only).
        seed: seeds the training augmentation with the epoch and sample (:meth:`augmentation_generator`).
        clip_frames: frames fed per clip (0: every stored frame; n: one per segment, module docstring).
        crop: ``"clip"`` (one crop and flip per clip) or ``"frame"`` (one per frame).
        crop_scale_min: smallest area share of the training crop.
        eval_resize: ``"crop"`` or ``"squash"``: the eval transform (module docstring).
    """

    def __init__(self, index: IndexReader, split: str, *, train: bool, frame_size: int,
                 mel_mean: float = 0.0, mel_std: float = 1.0, gpu_decode: bool = False, seed: int = 0,
                 clip_frames: int = 0, crop: str = "clip", crop_scale_min: float = CROP_SCALE[0],
                 eval_resize: str = "crop"):
        if split not in index.splits:
            raise ValueError(f"unknown split {split!r}: the index has {index.splits}")
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        if not mel_std > 0:
            raise ValueError(f"mel_std must be > 0, got {mel_std}")
        self.index = index
        self.split = split
        self.train = bool(train)
        self.seed = int(seed)
        self.frame_size = int(frame_size)
        self.mel_mean, self.mel_std = float(mel_mean), float(mel_std)
        self.rows = index.indices(split)  # [N] index rows of the split, in index order
        self.frame_members = tuple(index.frame_members)
        if MEL_MEMBER not in index.members or not self.frame_members:
            raise ValueError(f"{index.path}: members {index.members} lack {MEL_MEMBER} or frames")
        if crop not in ("clip", "frame") or not 0 < crop_scale_min <= 1:
            raise ValueError(f"crop must be clip | frame and 0 < crop_scale_min <= 1, got {crop!r}, {crop_scale_min}")
        self.clip_frames, self.crop, self.crop_scale_min = int(clip_frames), crop, float(crop_scale_min)
        if eval_resize not in EVAL_RESIZES:
            raise ValueError(f"eval_resize must be {' | '.join(EVAL_RESIZES)}, got {eval_resize!r}")
        self.eval_resize = eval_resize
        choose_frames(len(self.frame_members), self.clip_frames, None)  # raises when too few frames are stored
        self.frame_codec = index.frame_codec  # jpeg | raw, from the members' extensions
        if gpu_decode and not torch.cuda.is_available():
            warnings.warn("gpu_decode=True but CUDA is not available: decoding JPEGs on the CPU", stacklevel=2)
        self.gpu_decode = bool(gpu_decode) and torch.cuda.is_available()

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"ShardDataset({self.index.path}, split={self.split!r}, N={len(self)}, train={self.train}, "
                f"frame_size={self.frame_size})")

    def shard_ids(self) -> np.ndarray:
        """[N] shard id of each sample: the ``shard`` argument of the sampler."""
        return self.index.shard[self.rows]

    def labels(self) -> np.ndarray:
        """[N] class index of each sample."""
        return self.index.label[self.rows]

    @property
    def num_frames(self) -> int:
        """T, the frames each item holds."""
        return self.clip_frames or len(self.frame_members)

    def chosen_members(self, epoch: int, i: int, copy: int = 0) -> list[str]:
        """The frame members item ``(i, epoch, copy)`` feeds (``clip_frames``), in time order."""
        gen = frame_choice_generator(self.seed, epoch, i, copy) if self.train and self.clip_frames else None
        return [self.frame_members[k] for k in choose_frames(len(self.frame_members), self.clip_frames, gen)]

    def decode_frames(self, members: dict[str, bytes], names: list[str] | None = None) -> torch.Tensor:
        """The sample's frame members ``names`` (default all; JPEG or raw) -> uint8 [T, 3, H, W] (on the GPU with
        ``gpu_decode``)."""
        data = [frame_payload(members[m], self.frame_codec) for m in (names or self.frame_members)]
        if self.gpu_decode and torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("gpu_decode needs workers=0: CUDA cannot be used in DataLoader workers")
        return torch.stack(decode_payloads(data, self.frame_codec, "cuda" if self.gpu_decode else "cpu"))

    def read_item(self, item: tuple[int, ...] | int) -> tuple[int, int, int, int, int, dict[str, bytes], torch.Tensor]:
        """(i, m, epoch, copy, row, members, mel): the item's sample read (one open, one seek per member) and its
        mel decoded and normalised to float32 [1, F, L]; the frames are left as bytes."""
        i, m, epoch, copy = parse_item(item)
        if not 0 <= i < len(self.rows):
            raise IndexError(f"sample {i} out of range for the {len(self.rows)} samples of split {self.split!r}")
        row = int(self.rows[i])
        members = self.index.read_sample(row)
        mel = torch.from_numpy(decode_mel(members[MEL_MEMBER]).astype(np.float32))
        return i, m, epoch, copy, row, members, ((mel - self.mel_mean) / self.mel_std).unsqueeze(0)

    def transform_frames(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> float32 [T, 3, S, S] with this dataset's (train or eval) transform."""
        frames = (train_frames(frames, self.frame_size, generator, per_frame=self.crop == "frame",
                               scale_min=self.crop_scale_min) if self.train
                  else eval_frames(frames, self.frame_size, self.eval_resize))
        return normalize_frames(frames)

    def augmentation_generator(self, epoch: int, i: int, copy: int = 0) -> torch.Generator:
        """The random stream of sample ``i``'s training augmentation in ``epoch``: a function of
        (seed, epoch, i) alone, so a resumed run, any worker count and any rank draw the same crops.
        ``copy`` > 0: the stream of the sample's extra copy in the epoch (Resample), a different one."""
        return augmentation_generator(self.seed, epoch, i, copy)

    def __getitem__(self, item: tuple[int, ...] | int) -> dict:
        """``item``: ``(i, m, epoch)`` from the sampler, ``(i, m, epoch, copy)`` (its copy number with
        repeats), ``(i, m)`` (epoch 0) or ``i`` (multimodal, epoch 0)."""
        i, m, epoch, copy, row, members, mel = self.read_item(item)  # mel: [1, F, L]
        generator = self.augmentation_generator(epoch, i, copy) if self.train else None
        names = self.chosen_members(epoch, i, copy)
        frames = self.transform_frames(self.decode_frames(members, names), generator)  # [T, 3, S, S]
        return {"mel": mel, "frames": frames, "label": int(self.index.label[row]), "index": i, "modality": m}


def make_loader(dataset: ShardDataset, batch_sampler, *, workers: int,
                pin_memory: bool | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader that reads the batches of ``batch_sampler`` (default collate: dict of stacked tensors).

    ``pin_memory`` defaults to ``torch.cuda.is_available()``; workers are persistent when
    ``workers > 0`` (the sampler runs in the main process, so its epoch and assignment
    still change between epochs; the dataset's settings, e.g. ``train``, are frozen in
    the workers at the first iteration).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    gpu = getattr(dataset, "gpu_decode", False)
    if gpu and workers > 0:
        raise ValueError("gpu_decode needs workers=0: CUDA cannot be used in DataLoader workers")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available() and not gpu
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )


def to_inputs(batch: dict, modalities: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch -> modality name -> that encoder's input on ``device`` (:data:`BATCH_KEYS`)."""
    return {m: batch[BATCH_KEYS.get(m, m)].to(device, non_blocking=True) for m in modalities}


def whole_split_sampler(dataset: ShardDataset, *, batch_size: int, num_modalities: int,
                        seed: int = 0) -> RemixBatchSampler:
    """The batches of a whole split with every modality present (evaluation and scoring passes)."""
    sampler = RemixBatchSampler(dataset.shard_ids(), batch_size=batch_size, drop_last=False, seed=seed)
    sampler.set_assignment(None, num_modalities)
    return sampler


def multimodal_loader(dataset: ShardDataset, *, batch_size: int, workers: int, num_modalities: int, seed: int = 0):
    """A loader over a whole split with every modality present (evaluation and scoring passes)."""
    sampler = whole_split_sampler(dataset, batch_size=batch_size, num_modalities=num_modalities, seed=seed)
    return make_loader(dataset, sampler, workers=workers)


def estimate_mel_stats(index: IndexReader, split: str = "train", max_samples: int = 256) -> tuple[float, float]:
    """(mean, std) of all mel values of up to ``max_samples`` samples of ``split``.

    The subset is deterministic: all samples, or ``max_samples`` evenly spaced over the
    split's index order. A std of 0 (constant mels) is returned as 1.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    rows = index.indices(split)
    if rows.size == 0:
        raise ValueError(f"split {split!r} of {index.path} has no samples")
    if rows.size > max_samples:
        rows = rows[np.linspace(0, rows.size - 1, max_samples).round().astype(np.int64)]
    total = total_sq = count = 0.0
    for data in index.read_members(rows, MEL_MEMBER):
        mel = decode_mel(data).astype(np.float64)
        total += mel.sum()
        total_sq += np.square(mel).sum()
        count += mel.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return float(mean), float(std) if std > 0 else 1.0
