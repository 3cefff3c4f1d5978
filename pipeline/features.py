"""Feature settings and the per-clip feature computation (frames -> JPEG or raw uint8, audio -> a log spectrogram:
log-mel, or the official code's log-magnitude linear STFT).

Shapes: T frames, H/W pixels, S audio samples, F frequency bins (mel bins, or n_fft / 2 + 1), L STFT frames.

A frame member's extension says how it is encoded (:data:`pipeline.shards.FRAME_EXTENSIONS`): ``frame<i>.jpg`` is a JPEG,
``frame<i>.npy`` a raw uint8 [H, W, 3] array in .npy format, so a shard set describes itself.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math

import numpy as np

from pipeline.media import FRAME_TIMES
from pipeline.params import Config, ConfigError, setting
from pipeline.shards import FRAME_EXTENSIONS

SPECTROGRAMS = ("mel", "linear")  # log-mel power (n_mels bins) | log STFT magnitude (n_fft / 2 + 1 bins)


@dataclasses.dataclass(frozen=True)
class FeatureConfig(Config):
    """What ``extract`` computes per clip: the keys of the ``features`` section of params.yaml that change
    the features (every key is documented there); :class:`ExtractConfig` is the whole section."""

    section = "features"

    num_frames: int = setting(3, min=1)
    short_side: int = setting(96, min=8)
    jpeg_quality: int = setting(90, min=1, max=95)
    sample_rate: int = setting(16000, min=1000)
    duration: float = setting(3.0, min=0.0, min_exclusive=True)
    n_fft: int = setting(512, min=16)
    hop_length: int = setting(256, min=1)
    n_mels: int = setting(64, min=1)
    f_min: float = setting(0.0, min=0.0)
    f_max: float = setting(8000.0, min=0.0, min_exclusive=True)
    frame_codec: str = setting("jpeg", choices=tuple(FRAME_EXTENSIONS))
    spectrogram: str = setting("mel", choices=SPECTROGRAMS)
    frame_times: str = setting("centres", choices=FRAME_TIMES)

    def check(self) -> None:
        if self.hop_length > self.n_fft:
            raise ConfigError("hop_length", f"must be <= n_fft ({self.n_fft}), got {self.hop_length}")
        if self.f_max > self.sample_rate / 2:
            raise ConfigError("f_max", f"must be <= sample_rate / 2 ({self.sample_rate / 2:g}), got {self.f_max}")
        if self.f_min >= self.f_max:
            raise ConfigError("f_min", f"must be < f_max ({self.f_max}), got {self.f_min}")

    @property
    def num_samples(self) -> int:
        """S: audio samples kept per clip."""
        return int(round(self.duration * self.sample_rate))

    @property
    def mel_shape(self) -> tuple[int, int]:
        """(F, L) of the stored spectrogram (member ``mel.npy`` whichever :data:`SPECTROGRAMS` it is; centred STFT
        frames)."""
        bins = self.n_mels if self.spectrogram == "mel" else self.n_fft // 2 + 1
        return bins, 1 + self.num_samples // self.hop_length

    @property
    def members(self) -> tuple[str, ...]:
        """Tar member extensions of one sample, in the order they are written."""
        ext = FRAME_EXTENSIONS[self.frame_codec]
        return ("json", "cls", "mel.npy") + tuple(f"frame{i}.{ext}" for i in range(self.num_frames))

    def encode_frame(self, frame: np.ndarray) -> bytes:
        """One decoded [H, W, 3] uint8 frame -> its stored member: resized to ``short_side``, then JPEG or .npy."""
        img = resize_short_side(frame, self.short_side)
        if self.frame_codec == "raw":
            return encode_npy(np.asarray(img, dtype=np.uint8))
        return encode_jpeg(img, self.jpeg_quality)


@dataclasses.dataclass(frozen=True)
class ExtractConfig(FeatureConfig):
    """The whole ``features`` section of params.yaml: :class:`FeatureConfig` plus how the extract stage runs
    (which never changes the features). Every key is documented in params.yaml."""

    shard_size: int = setting(256, min=1)
    workers: int = setting(2, min=1)
    max_reject_fraction: float = setting(0.05, min=0.0, max=1.0)

    @property
    def features(self) -> FeatureConfig:
        """The keys that define the features (stored in index.h5), as a :class:`FeatureConfig`."""
        return FeatureConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FeatureConfig)})


# Conventions of the field, as FeatureConfig presets (documented in the README).
PRESETS: dict[str, FeatureConfig] = {
    # CREMA-D as in OGM-GE / PMR / Data Remixing: frames at 0, 1, 2 s (their 1 fps extraction), 3 s of audio tiled,
    # the 257-bin log-magnitude linear STFT at 22.05 kHz with hop 353 (188 frames); n_mels unused.
    "cremad": FeatureConfig(num_frames=3, short_side=224, jpeg_quality=90, sample_rate=22050, duration=3.0,
                            n_fft=512, hop_length=353, n_mels=128, f_min=0.0, f_max=11025.0,
                            spectrogram="linear", frame_times="seconds"),
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


LINEAR_EPS = 1e-7  # added to the STFT magnitude before the natural log (OGM-GE's CREMA-D preprocessing)


@functools.lru_cache(maxsize=4)
def _linear_transform(cfg: FeatureConfig):
    import torchaudio

    return torchaudio.transforms.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=1.0)  # magnitude


def log_linear(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[S] float32 waveform (fitted to cfg.num_samples) -> [n_fft / 2 + 1, L] float16 log STFT magnitude: the
    official code's audio input, ``log(|STFT| + 1e-7)`` with a Hann window and centred, reflect-padded frames
    (librosa.stft's defaults before 0.10), the waveform clipped to [-1, 1] first as OGM-GE's preprocessing does."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.clip(np.ascontiguousarray(wave, dtype=np.float32), -1.0, 1.0))
        return torch.log(_linear_transform(cfg)(x) + LINEAR_EPS).numpy().astype(np.float16)  # [F, L]


def spectrogram(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[S] -> the stored [F, L] float16 spectrogram of ``cfg.spectrogram`` (:data:`SPECTROGRAMS`)."""
    return log_mel(wave, cfg) if cfg.spectrogram == "mel" else log_linear(wave, cfg)


def encode_npy(array: np.ndarray) -> bytes:
    """numpy array -> .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
