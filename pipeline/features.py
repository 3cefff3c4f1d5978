"""Feature settings and the per-clip feature computation (frames -> JPEG, audio -> log-mel).

Shapes: T frames, H/W pixels, S audio samples, F mel bins, L mel frames.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Any, Mapping

import numpy as np

from pipeline.params import from_mapping


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """What ``extract`` computes per clip. Field names are the keys of ``features`` in params.yaml."""

    num_frames: int = 3  # frames per clip, at evenly spaced times (3 = the field's 1 fps over 3 s)
    short_side: int = 96  # px; frames resized so their short side is this, keeping the aspect ratio
    jpeg_quality: int = 90  # 1..95, PIL JPEG quality of stored frames
    sample_rate: int = 16000  # Hz, audio resampled to this (mono float32)
    duration: float = 3.0  # s of audio kept: shorter clips tiled, longer ones cut
    n_fft: int = 512  # samples per STFT window
    hop_length: int = 256  # samples between STFT frames
    n_mels: int = 64  # mel bins (F)
    f_min: float = 0.0  # Hz, lowest mel filter edge
    f_max: float = 8000.0  # Hz, highest mel filter edge (<= sample_rate / 2)

    def __post_init__(self) -> None:
        checks = {
            "num_frames": self.num_frames >= 1,
            "short_side": self.short_side >= 8,
            "jpeg_quality": 1 <= self.jpeg_quality <= 95,
            "sample_rate": self.sample_rate >= 1000,
            "duration": self.duration > 0,
            "n_fft": self.n_fft >= 16,
            "hop_length": 1 <= self.hop_length <= self.n_fft,
            "n_mels": self.n_mels >= 1,
            "f_min": 0 <= self.f_min < self.f_max,
            "f_max": self.f_max <= self.sample_rate / 2,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"features: invalid value for {', '.join(bad)}: {dataclasses.asdict(self)}")

    @property
    def num_samples(self) -> int:
        """S: audio samples kept per clip."""
        return int(round(self.duration * self.sample_rate))

    @property
    def mel_shape(self) -> tuple[int, int]:
        """(F, L) of the stored log-mel (centred STFT frames)."""
        return self.n_mels, 1 + self.num_samples // self.hop_length

    @property
    def members(self) -> tuple[str, ...]:
        """Tar member extensions of one sample, in the order they are written."""
        return ("json", "cls", "mel.npy") + tuple(f"frame{i}.jpg" for i in range(self.num_frames))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "FeatureConfig":
        """Build from a mapping, failing loudly on an unknown or mistyped key."""
        return from_mapping(cls, params, "features")


# Conventions of the field, as FeatureConfig presets (documented in the README).
PRESETS: dict[str, FeatureConfig] = {
    # CREMA-D as in OGM-GE / PMR / Data Remixing: 3 frames (1 fps), 3 s of audio tiled;
    # they use a 257-bin linear STFT at 22.05 kHz with hop 353 (188 frames); this is its log-mel twin.
    "cremad": FeatureConfig(num_frames=3, short_side=224, jpeg_quality=90, sample_rate=22050, duration=3.0,
                            n_fft=512, hop_length=353, n_mels=128, f_min=0.0, f_max=11025.0),
    # Kinetics-Sounds: 10 s clips, AudioSet-style 128-bin fbank (25 ms window, 10 ms hop at 16 kHz).
    "kinetics_sounds": FeatureConfig(num_frames=3, short_side=224, jpeg_quality=90, sample_rate=16000,
                                     duration=10.0, n_fft=400, hop_length=160, n_mels=128, f_min=0.0,
                                     f_max=8000.0),
}


def resize_short_side(frame: np.ndarray, short_side: int):
    """[H, W, 3] uint8 -> PIL image whose short side is ``short_side`` px (aspect kept)."""
    from PIL import Image

    img = Image.fromarray(frame)
    w, h = img.size
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BILINEAR) if size != (w, h) else img


def encode_jpeg(img, quality: int) -> bytes:
    """PIL image -> baseline JPEG bytes (no EXIF, no timestamps: deterministic)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def fit_duration(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """[S] -> [num_samples]: tile a short clip, cut a long one from the start (as the field does)."""
    if wave.size < num_samples:
        wave = np.tile(wave, math.ceil(num_samples / wave.size))
    return wave[:num_samples]


@functools.lru_cache(maxsize=4)
def _mel_transform(cfg: FeatureConfig):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max, power=2.0,
    )


LOG_EPS = 1e-6  # added to the mel power before the natural log


def log_mel(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[S] float32 waveform (already fitted to cfg.num_samples) -> [F, L] float16 log-mel power."""
    import torch

    with torch.inference_mode():
        mel = _mel_transform(cfg)(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)))  # [F, L]
        return torch.log(mel + LOG_EPS).numpy().astype(np.float16)


def encode_npy(array: np.ndarray) -> bytes:
    """numpy array -> .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
