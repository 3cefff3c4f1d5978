"""Data Remixing's per-sample scoring (paper §3.2, eq. 2-3) and the scores file the sampler reads.

Shapes: N samples, K modalities, C classes, B batch.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SCORES_FORMAT_VERSION = 1


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || uniform) per row: sum_c p_c log(p_c C). [B, C] -> [B], >= 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (logp.exp() * (logp + math.log(logits.shape[-1]))).sum(-1).clamp_min(0.0)


def assign_weakest(kl: np.ndarray) -> np.ndarray:
    """Each sample's weakest modality: the one whose prediction is closest to uniform (eq. 3). [N, K] -> [N]."""
    return np.argmin(kl, axis=1).astype(np.int8)


def dataset_fingerprint(index) -> str:
    """SHA-256 over the shards' hashes and the feature params: a scores file is valid only for these features."""
    h = hashlib.sha256()
    for name, sha in zip(index.shard_names, index.shard_sha256):
        h.update(f"{name}:{sha}\n".encode())
    h.update(repr(sorted(index.feature_params.items())).encode())
    return h.hexdigest()


class ScoresFile:
    """``scores.h5``: per remix epoch, the N x K divergences and the N assignments of the training split.

    Datasets ``epoch_EEEE/kl`` [N, K] float32 and ``epoch_EEEE/assign`` [N] int8 (modality code,
    column order = attribute ``modalities``); attributes ``format_version``, ``modalities``,
    ``num_samples``, ``fingerprint`` (:func:`dataset_fingerprint` of the index it scores).
    """

    def __init__(self, path: str | os.PathLike, *, modalities: Sequence[str], num_samples: int, fingerprint: str):
        import h5py

        self.path = Path(path)
        self.modalities, self.num_samples, self.fingerprint = list(modalities), num_samples, fingerprint
        if self.path.exists():
            with h5py.File(self.path, "r") as f:
                got = (list(f.attrs["modalities"]), int(f.attrs["num_samples"]), f.attrs["fingerprint"])
            if got != (self.modalities, num_samples, fingerprint):
                raise ValueError(f"{self.path}: scores of another dataset, feature set or modalities "
                                 f"({got[0]}, N={got[1]}); delete it or point the trainer elsewhere")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(self.path, "w") as f:
                f.attrs["format_version"] = SCORES_FORMAT_VERSION
                f.attrs["modalities"] = self.modalities
                f.attrs["num_samples"] = num_samples
                f.attrs["fingerprint"] = fingerprint

    def write(self, epoch: int, kl: np.ndarray, assign: np.ndarray) -> None:
        import h5py

        if kl.shape != (self.num_samples, len(self.modalities)) or assign.shape != (self.num_samples,):
            raise ValueError(f"scores of shape {kl.shape}/{assign.shape}, expected ({self.num_samples}, "
                             f"{len(self.modalities)})")
        with h5py.File(self.path, "a") as f:
            name = f"epoch_{epoch:04d}"
            if name in f:
                del f[name]
            g = f.create_group(name)
            g.create_dataset("kl", data=kl.astype(np.float32))
            g.create_dataset("assign", data=assign.astype(np.int8))

    def epochs(self) -> list[int]:
        import h5py

        with h5py.File(self.path, "r") as f:
            return sorted(int(k.split("_")[1]) for k in f if k.startswith("epoch_"))

    def read(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(kl [N, K], assign [N]) of one epoch."""
        import h5py

        with h5py.File(self.path, "r") as f:
            g = f[f"epoch_{epoch:04d}"]
            return g["kl"][:], g["assign"][:]
