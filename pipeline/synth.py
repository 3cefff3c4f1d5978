"""Embedded default dataset: synthetic audio-visual clips with *modality imbalance* built in.

:func:`generate` writes real encoded clips in the layout of CREMA-D (``layout="cremad"``) or
Kinetics-Sounds (``layout="kinetics_sounds"``), so the ordinary dataset adapters, the
extractor and the trainer run on it unchanged, plus ``synth_truth.csv`` with the ground truth
of every clip. The signal design reproduces the situation Data Remixing (ICML 2025) is about:
the audio tells the classes apart quickly, the video only slowly, and in some clips only the
video is right, so a model that neglects the video loses accuracy.

Audio (the strong modality)
    Class ``c`` of ``K`` speaks a harmonic "voice" (see :func:`audio_cue`): fundamental
    ``f0 = 110 Hz * 2**(3 c / K)`` (log-spaced over three octaves, 110-880 Hz), a
    class-specific harmonic pattern (all harmonics 1/k, odd harmonics only, or steep 1/k^2
    roll-off) and a class-specific syllable rate (2-6 syllables/s, on/off envelope), with a
    per-clip pitch jitter of +-1.5 % and a slight vibrato. White noise is added at
    ``audio_snr_db`` (voice power / noise power over the clip); the mix is peak-normalised
    to half full scale, so no clip is silent. In a 64-bin log-mel the class shows as a
    stack of horizontal lines with a class-specific spacing and rhythm.

    A share ``ambiguous_fraction`` of each class's clips carries no class cue (half of them
    noise only, half a voice pitched half-way between two class pitches, with a random
    pattern and rate); a share ``misleading_fraction`` carries the full cue of another,
    uniformly drawn class. The counts are exact per class (rounded). The video of these
    clips is still right, so audio alone tops out near
    ``1 - misleading - ambiguous * (1 - 1/K)`` (73 % with the defaults).

Video (the weak modality)
    A background of ``clutter`` random coloured rectangles / ellipses, about half of them
    filled with distractor stripes (random orientation, a cue period), and a soft-edged
    "face" disk (radius ~0.28 * height, random skin-like colour) drifting on a slow smooth
    path. Inside the disk a sinusoidal stripe texture moving with the disk carries the
    class (see :func:`video_cue`): the unsigned angle of its wave vector to the x axis is
    ``90 deg * (c mod 4) / 3`` (0, 30, 60 or 90 deg, +-3 deg jitter, sign drawn per clip) and its
    period (a fraction of the height) is the ``c // 4``-th of eight. The sign is random because the
    field's training augmentation flips frames horizontally, which turns an angle ``a`` into
    ``-a``: a signed-orientation cue would make flipped clips of two classes identical. Up to 8
    classes the periods differ by a factor >= 1.7, more than a random resized crop rescales them;
    beyond (Kinetics-Sounds' 31), neighbouring periods are closer and harder to tell apart.
    The stripes' peak-to-peak luminance is
    ``video_contrast``; grey Gaussian noise of std ``video_noise`` is added to every pixel of
    every frame. Any single frame shows the class, but a CNN must first learn to find the
    disk among the distractors: markedly slower than the audio. The audio kind never
    changes a clip's video (separate random streams).

    A share ``video_ambiguous_fraction`` of each class's clips (exact count, placed
    independently of the audio kinds) shows no class cue (:func:`clip_video_cue`): half a
    plain disk, half stripes at an angle half-way between two class angles (15, 45 or 75 deg)
    with the period of a random class. Only the disk's stripes change (their own random
    stream): background, motion and noise are those the clip has with a clean video. A clip
    with neither cue (ambiguous video and non-clean audio) cannot be classified, so no model
    passes ``1 - (ambiguous + misleading) * video_ambiguous + ambiguous * video_ambiguous / K``
    on average (:mod:`benchmarks.difficulty` computes it per split from ``synth_truth.csv``).

Difficulty (``difficulty``)
    ``custom`` uses the signal knobs as given (their defaults: the demo dataset below, whose
    every method lands between 86 and 98 %). A named profile of :data:`DIFFICULTIES` sets
    them: ``cremad_like`` behaves like CREMA-D under the official baseline (fused accuracy in
    60-75 %, the audio head far above the video head, a best possible accuracy under 92 %;
    targets and measurements in docs/datasets.md, checked by ``benchmarks/difficulty.py``).
    A knob the profile sets must hold its default (or the profile's value): any other value
    is an error naming the knob, never silently replaced.

Calibration of the defaults (6 classes x 100 clips, seed 0, split 0.6/0.2/0.2 by actor; the
trainer's defaults: ResNet-18 width 16 from scratch, AdamW 1e-3 cosine, batch 32, 16 epochs,
3 frames cropped to 80 px with random resized crop and flip; 64-bin log-mel of 3 s)
    audio-only: ~70 % (the ceiling) after 2 epochs.
    video-only (``only_video``): chance for 1-2 epochs, ~80 % after 5, ~100 % after 7.
    Joint training on the fused loss alone leaves the video lazy: its encoder, probed with a
    linear head, reaches ~65-70 % (README, ``benchmarks/remix_quality.py``).
    ``video_contrast`` 0.12 reached only ~50 % video-only in 16 epochs; 0.03 stays at chance (the
    weak-video variant of the benchmark). Until this generator drew the sign of the stripe angle
    per clip, the training flip made 4 of 6 classes pairwise identical in video, which capped
    video-only accuracy near 2/3 and hid the laziness.

Knobs (:class:`SynthConfig`)
    layout, num_classes, clips_per_class: what is written; class names are the first
    ``num_classes`` of :data:`CREMAD_EMOTIONS` or :data:`KINETICS_SOUNDS_CLASSES`.
    actors (cremad): clips of a class go round-robin to actors 1001..1000+actors, so every
    actor has every class when ``clips_per_class >= actors`` (the groups of a group split).
    test_fraction (kinetics_sounds): exact share of each class's clips under ``test/``.
    min/max_duration_s, width, height, fps, sample_rate: the media format.
    audio_snr_db: lower = harder audio (-10 dB still leaves the pitch visible).
    video_contrast, video_noise, clutter: higher contrast / lower noise / less clutter =
    easier video. ambiguous_fraction, misleading_fraction: how much the video is needed;
    video_ambiguous_fraction: how much the audio is needed (and the best possible accuracy).
    difficulty: custom, or a named profile of those knobs (above).
    video_quality: encoder quality (file size vs. fidelity of the faint stripes).
    workers: parallel encoding processes; never changes the bytes.

Layouts (everything under ``out_dir``)
    cremad: ``VideoFlash/<id>.flv`` (flv1 video, no audio) and ``AudioWAV/<id>.wav``
    (16-bit PCM mono), ``<id> = <actor>_<sentence>_<EMO>_<level>`` as in CREMA-D (12 real
    sentence codes, level XX for NEU, else LO/MD/HI/XX; unique).
    kinetics_sounds: ``<train|test>/<class name>/<11-char id>_<start:06d>_<end:06d>.mp4``
    with H.264 (yuv420p) video and AAC audio; the 11-char id uses YouTube's alphabet
    (``A-Za-z0-9-_``), so it may start with ``-`` or contain ``_``: split the stem from the
    right. ``synth_truth.csv``: ``clip_id,class_name,audio_kind,audio_class_name,video_kind``
    (``clip_id`` = file stem; ``audio_kind`` clean|ambiguous|misleading;
    ``audio_class_name`` empty for ambiguous clips; ``video_kind`` clean|ambiguous).

Determinism
    Every random draw comes from ``numpy.random.default_rng([seed, stream, ...])`` keyed by
    the clip, pixel math is float64, and ffmpeg (the pinned imageio-ffmpeg build) runs
    single-threaded with bit-exact flags, so the same seed and config give byte-identical
    files whatever ``workers`` is, on any x86-64 machine with the same numpy and ffmpeg.
    Each file is written as ``<name>.tmp`` and renamed when complete, the whole tree in a temporary folder
    renamed when complete (:func:`generate`).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import multiprocessing
import numbers
import os
import subprocess
import time
import wave
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.fileio import staged_dir
from pipeline.media import ffmpeg_exe
from pipeline.params import Config, ConfigError, setting

LAYOUTS = ("cremad", "kinetics_sounds")
AUDIO_KINDS = ("clean", "ambiguous", "misleading")
VIDEO_KINDS = ("clean", "ambiguous")
TRUTH_FILE = "synth_truth.csv"
TRUTH_FIELDS = ("clip_id", "class_name", "audio_kind", "audio_class_name", "video_kind")

CREMAD_EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CREMAD_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
CREMAD_LEVELS = ("LO", "MD", "HI", "XX")
CREMAD_MAX_ACTORS = 91  # real CREMA-D: actors 1001..1091
# The 31 Kinetics-Sounds classes as named in Kinetics-400.
KINETICS_SOUNDS_CLASSES = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica",
    "playing keyboard", "playing organ", "playing piano", "playing saxophone",
    "playing trombone", "playing trumpet", "playing violin", "playing xylophone",
    "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes",
    "tap dancing", "tapping guitar", "tapping pen", "tickling",
)
_YT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SYLLABLE_RATES = (2.0, 3.0, 4.0, 5.0, 6.0)  # Hz
_STRIPE_PERIODS = (1 / 12, 1 / 7, 1 / 18, 1 / 5, 1 / 9, 1 / 26, 1 / 4, 1 / 15)  # fraction of the frame height
_ANGLES = 4  # unsigned stripe angles per period: 0, 30, 60, 90 deg to the x axis
# rng stream ids (first key after the seed): one per kind of draw, so draws never collide.
# (SeedSequence ignores trailing zeros: [s, k, i] == [s, k, i, 0], so keys of different
# lengths must not share a stream id.)
_S_CLIP, _S_KIND, _S_CREMAD, _S_DUR, _S_SPLIT, _S_YTID, _S_VKIND = range(7)
_M_AUDIO, _M_VIDEO, _M_VCUE = 1, 2, 3  # last key of a clip's streams [seed, _S_CLIP, index, m]

# Named difficulty profiles (synth.difficulty): the signal knobs each one sets; "custom" sets none (the knobs as
# given; their defaults are the demo dataset). Measured and declared in docs/datasets.md (benchmarks/difficulty.py).
DIFFICULTIES: dict[str, dict[str, float]] = {
    "custom": {},
    "cremad_like": {"audio_snr_db": 0.0, "video_contrast": 0.16, "video_noise": 0.06, "ambiguous_fraction": 0.3,
                    "misleading_fraction": 0.1, "video_ambiguous_fraction": 0.3, "clutter": 8},
}


@dataclasses.dataclass(frozen=True)
class SynthConfig(Config):
    """The ``synth`` section of params.yaml: what to generate (the module docstring has the signal design).
    Every key is documented in params.yaml."""

    section = "synth"

    layout: str = setting("cremad", choices=LAYOUTS)
    num_classes: int = setting(6, min=2, max=max(len(CREMAD_EMOTIONS), len(KINETICS_SOUNDS_CLASSES)))
    clips_per_class: int = setting(100, min=1)
    actors: int = setting(24, min=1, max=CREMAD_MAX_ACTORS)
    test_fraction: float = setting(0.2, min=0.0, max=1.0, max_exclusive=True)
    min_duration_s: float = setting(1.5, min=0.0, min_exclusive=True)
    max_duration_s: float = setting(3.5, min=0.0, max=60.0, min_exclusive=True)
    width: int = setting(160, min=32, max=1920)
    height: int = setting(120, min=32, max=1920)
    fps: int = setting(15, min=1, max=60)
    sample_rate: int = setting(16000, min=8000, max=48000)
    difficulty: str = setting("custom", choices=tuple(DIFFICULTIES))
    audio_snr_db: float = setting(0.0, min=-30.0, max=60.0)
    video_contrast: float = setting(0.25, min=0.0, max=1.0, min_exclusive=True)
    video_noise: float = setting(0.06, min=0.0, max=1.0)
    ambiguous_fraction: float = setting(0.2, min=0.0, max=1.0)
    misleading_fraction: float = setting(0.1, min=0.0, max=1.0)
    video_ambiguous_fraction: float = setting(0.0, min=0.0, max=1.0)
    clutter: int = setting(8, min=0, max=64)
    video_quality: int = setting(3, min=2, max=8)
    workers: int = setting(2, min=1)

    def check(self) -> None:
        self._apply_difficulty()
        kmax = len(CREMAD_EMOTIONS) if self.layout == "cremad" else len(KINETICS_SOUNDS_CLASSES)
        if self.num_classes > kmax:
            raise ConfigError("num_classes", f"must be <= {kmax} for layout {self.layout}, got {self.num_classes}")
        if self.layout == "cremad" and self.clips_per_class > len(CREMAD_SENTENCES) * self.actors:
            # NEU has only 12 distinct ids per actor (12 sentences, level XX)
            raise ConfigError("clips_per_class", f"must be <= 12 * actors ({12 * self.actors}) for unique "
                              f"CREMA-D ids, got {self.clips_per_class}")
        if self.min_duration_s < 2 / self.fps:
            raise ConfigError("min_duration_s", f"must be >= 2 frames (2 / fps = {2 / self.fps:g} s), "
                              f"got {self.min_duration_s}")
        if self.max_duration_s < self.min_duration_s:
            raise ConfigError("max_duration_s", f"must be >= min_duration_s ({self.min_duration_s}), "
                              f"got {self.max_duration_s}")
        for key in ("width", "height"):
            if getattr(self, key) % 2:
                raise ConfigError(key, f"must be even (video encoders need it), got {getattr(self, key)}")
        if self.ambiguous_fraction + self.misleading_fraction > 1.0:
            raise ConfigError("misleading_fraction", f"ambiguous_fraction + misleading_fraction must be <= 1, got "
                              f"{self.ambiguous_fraction} + {self.misleading_fraction}")

    def _apply_difficulty(self) -> None:
        """Set the knobs of the ``difficulty`` profile. A knob the profile sets must hold its default or the
        profile's value (what a config already built with the profile holds): any other value is an error, never
        silently replaced."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in DIFFICULTIES[self.difficulty].items():
            if getattr(self, key) not in (defaults[key], value):
                raise ConfigError(key, f"difficulty {self.difficulty} sets it to {value}: leave it at its default "
                                       f"({defaults[key]}) or use difficulty: custom, got {getattr(self, key)}")
            object.__setattr__(self, key, type(defaults[key])(value))

    def class_names(self) -> list[str]:
        """The class names of this config, label index = position."""
        table = CREMAD_EMOTIONS if self.layout == "cremad" else KINETICS_SOUNDS_CLASSES
        return list(table[: self.num_classes])


def audio_cue(class_index: int, num_classes: int) -> dict:
    """The audio class cue: ``f0`` (Hz), harmonic ``pattern`` (0 all 1/k, 1 odd 1/k, 2 all 1/k^2), ``rate`` (syllables/s)."""
    return {
        "f0": 110.0 * 2.0 ** (3.0 * class_index / num_classes),
        "pattern": class_index % 3,
        "rate": _SYLLABLE_RATES[(2 * class_index) % len(_SYLLABLE_RATES)],
    }


def video_cue(class_index: int, num_classes: int) -> dict:
    """The video class cue: the unsigned ``angle`` (rad, 0..pi/2) of the stripe wave vector to the image x axis
    and the stripe ``period`` (fraction of the height). A clip draws the sign of the angle at random, so a
    horizontal flip (angle -> pi - angle, the same stripes as -angle) never turns one class into another."""
    return {
        "angle": (math.pi / 2) * (class_index % _ANGLES) / (_ANGLES - 1),
        "period": _STRIPE_PERIODS[class_index // _ANGLES],
    }


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class _Clip:
    index: int  # global clip index: the rng key of the content
    label: int  # class index (what the video shows)
    kind: str  # audio kind, one of AUDIO_KINDS
    audio_label: int  # class index the audio carries, -1 for ambiguous
    video_kind: str  # one of VIDEO_KINDS
    clip_id: str  # file stem
    video: str  # path relative to out_dir
    audio: str  # path relative to out_dir ("" when muxed into the video)
    n_frames: int  # video frames; duration = n_frames / fps


def _kinds(seed: int, label: int, cfg: SynthConfig) -> list[tuple[str, int]]:
    """Audio (kind, class) of each clip of one class: exact counts, randomly placed."""
    n = cfg.clips_per_class
    n_amb = round(cfg.ambiguous_fraction * n)
    n_mis = min(round(cfg.misleading_fraction * n), n - n_amb)
    rng = np.random.default_rng([seed, _S_KIND, label])
    order = rng.permutation(n)
    others = [k for k in range(cfg.num_classes) if k != label]
    out = [("clean", label)] * n
    for rank, j in enumerate(order[: n_amb + n_mis]):
        out[j] = ("ambiguous", -1) if rank < n_amb else ("misleading", others[rng.integers(len(others))])
    return out


def _video_kinds(seed: int, label: int, cfg: SynthConfig) -> list[str]:
    """Video kind of each clip of one class: exact count of ambiguous ones (rounded), randomly placed, drawn
    independently of the audio kinds."""
    n = cfg.clips_per_class
    ambiguous = set(np.random.default_rng([seed, _S_VKIND, label]).permutation(n)[
        : round(cfg.video_ambiguous_fraction * n)].tolist())
    return ["ambiguous" if j in ambiguous else "clean" for j in range(n)]


def _plan(seed: int, cfg: SynthConfig) -> list[_Clip]:
    """All clips, in a fixed order (class-major), with names, kinds and durations."""
    names = cfg.class_names()
    clips: list[_Clip] = []
    used_ids: set[str] = set()
    yt_rng = np.random.default_rng([seed, _S_YTID])
    for label, name in enumerate(names):
        kinds, video_kinds = _kinds(seed, label, cfg), _video_kinds(seed, label, cfg)
        n_test = round(cfg.test_fraction * cfg.clips_per_class)
        test = set(np.random.default_rng([seed, _S_SPLIT, label]).permutation(cfg.clips_per_class)[:n_test].tolist())
        combos: dict[int, np.ndarray] = {}
        for j in range(cfg.clips_per_class):
            index = label * cfg.clips_per_class + j
            dur = np.random.default_rng([seed, _S_DUR, index]).uniform(cfg.min_duration_s, cfg.max_duration_s)
            n_frames = max(2, round(dur * cfg.fps))
            kind, audio_label = kinds[j]
            if cfg.layout == "cremad":
                actor, m = j % cfg.actors, j // cfg.actors
                levels = ("XX",) if name == "NEU" else CREMAD_LEVELS
                if actor not in combos:  # this actor's (sentence, level) draws for this emotion
                    combos[actor] = np.random.default_rng([seed, _S_CREMAD, label, actor]).permutation(
                        len(CREMAD_SENTENCES) * len(levels))
                s, lv = divmod(int(combos[actor][m]), len(levels))
                cid = f"{1001 + actor}_{CREMAD_SENTENCES[s]}_{name}_{levels[lv]}"
                video, audio = f"VideoFlash/{cid}.flv", f"AudioWAV/{cid}.wav"
            else:
                while True:
                    yt = "".join(_YT_ALPHABET[i] for i in yt_rng.integers(len(_YT_ALPHABET), size=11))
                    if yt not in used_ids:
                        break
                start = int(yt_rng.integers(0, 600))
                cid = f"{yt}_{start:06d}_{start + math.ceil(n_frames / cfg.fps):06d}"
                split = "test" if j in test else "train"
                video, audio = f"{split}/{name}/{cid}.mp4", ""
            assert cid not in used_ids, cid  # cremad combos are drawn without replacement
            used_ids.add(cid if cfg.layout == "cremad" else yt)
            clips.append(_Clip(index, label, kind, audio_label, video_kinds[j], cid, video, audio, n_frames))
    return clips


# ----------------------------------------------------------------------------- signals


def _voice(rng: np.random.Generator, t: np.ndarray, sr: int, f0: float, pattern: int, rate: float) -> np.ndarray:
    """Harmonic voice with syllable envelope, unit power. t: (n,) s at sample rate sr -> (n,)"""
    f = f0 * (1.0 + 0.005 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 2 * np.pi)))  # vibrato, (n,) Hz
    phase = 2 * np.pi * np.cumsum(f) / sr  # (n,)
    ks = np.arange(1, 1 + max(1, min(12, int(min(7000.0, 0.45 * sr) // f0))))  # harmonics below Nyquist
    amps = {0: 1.0 / ks, 1: (ks % 2 == 1) / ks, 2: 1.0 / ks**2}[pattern]
    x = sum(a * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k, a in zip(ks, amps) if a > 0)
    env = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0.0, 1.0)
    x = x * env
    return x / max(np.sqrt(np.mean(x**2)), 1e-9)


def synth_audio(rng: np.random.Generator, cfg: SynthConfig, n: int, kind: str, audio_label: int) -> np.ndarray:
    """One clip's audio as int16 (n,): class voice (or none) + white noise at audio_snr_db."""
    t = np.arange(n) / cfg.sample_rate
    K = cfg.num_classes
    if kind == "ambiguous":
        if rng.random() < 0.5:
            x = None  # noise only
        else:  # a voice pitched half-way between two class pitches, random pattern and rate
            between = rng.integers(K - 1) + 0.5
            f0 = 110.0 * 2.0 ** (3.0 * between / K) * (1 + rng.uniform(-0.015, 0.015))
            x = _voice(rng, t, cfg.sample_rate, f0, int(rng.integers(3)),
                       rng.uniform(_SYLLABLE_RATES[0], _SYLLABLE_RATES[-1]))
    else:
        cue = audio_cue(audio_label, K)
        x = _voice(rng, t, cfg.sample_rate, cue["f0"] * (1 + rng.uniform(-0.015, 0.015)), cue["pattern"], cue["rate"])
    noise = rng.standard_normal(n)  # unit power
    y = noise if x is None else x + noise * 10.0 ** (-cfg.audio_snr_db / 20.0)
    y = 0.5 * y / max(np.max(np.abs(y)), 1e-9)  # peak at half full scale
    return np.round(y * 32767).astype(np.int16)


def _stripes(xx: np.ndarray, yy: np.ndarray, theta: float, period: float, phase: float) -> np.ndarray:
    """Unit-amplitude sinusoid with wave vector at angle theta (rad) and period (px). xx, yy: (h, w) -> (h, w) float32.

    The sine is taken in float64: last-bit differences of libm / SIMD sin between machines
    must never flip a rounded pixel value (in float32 they would flip thousands per
    dataset). Plain float32 arithmetic is IEEE-exact everywhere, so the rest may use it.
    """
    k = 2 * math.pi / float(period)
    arg = xx.astype(np.float64) * (k * math.cos(theta)) + yy.astype(np.float64) * (k * math.sin(theta)) + phase
    return np.sin(arg).astype(np.float32)


def clip_video_cue(rng: np.random.Generator, kind: str, label: int, num_classes: int) -> dict | None:
    """The stripes a clip's disk shows: its class's :func:`video_cue` when ``kind`` is clean; when ambiguous, drawn
    from ``rng``: half the clips none (None: a plain disk), half an angle half-way between two class angles (15, 45
    or 75 deg) at the period of a uniformly drawn class, which tells nothing of the label."""
    if kind == "clean":
        return video_cue(label, num_classes)
    if rng.random() < 0.5:
        return None
    return {"angle": (math.pi / 2) * (rng.integers(_ANGLES - 1) + 0.5) / (_ANGLES - 1),
            "period": video_cue(int(rng.integers(num_classes)), num_classes)["period"]}


def synth_video(rng: np.random.Generator, cfg: SynthConfig, n_frames: int, cue: dict | None) -> np.ndarray:
    """One clip's frames as uint8 (T, H, W, 3) RGB: cluttered background + moving disk + noise. The disk shows the
    stripes of ``cue`` (:func:`clip_video_cue`), or none for None; the draws are the same either way, so a clip's
    background, disk and noise do not depend on its cue."""
    H, W, T, f32 = cfg.height, cfg.width, n_frames, np.float32
    yy, xx = np.mgrid[0:H, 0:W].astype(f32)  # (H, W)
    amp = f32(0.5 * cfg.video_contrast)  # stripe amplitude (half of peak-to-peak)
    bg = np.empty((H, W, 3), f32)
    bg[:] = rng.uniform(0.25, 0.75, 3)
    for _ in range(cfg.clutter):  # shapes of half-size rx, ry at (cx, cy), drawn inside their bounding box
        cx, cy = f32(rng.uniform(0, W)), f32(rng.uniform(0, H))
        rx, ry = (rng.uniform(0.06, 0.25, 2) * H).astype(f32)
        box = (slice(max(int(cy - ry), 0), min(int(cy + ry) + 2, H)), slice(max(int(cx - rx), 0), min(int(cx + rx) + 2, W)))
        bx, by = xx[box], yy[box]  # (h, w)
        if rng.random() < 0.5:
            m = (np.abs(bx - cx) <= rx) & (np.abs(by - cy) <= ry)  # (h, w) rectangle
        else:
            m = ((bx - cx) / rx) ** 2 + ((by - cy) / ry) ** 2 <= 1  # (h, w) ellipse
        sub = bg[box]  # (h, w, 3) view
        sub[m] = rng.uniform(0.1, 0.9, 3)
        if rng.random() < 0.5:  # distractor stripes: random orientation, one of the cue periods
            s = _stripes(bx, by, rng.uniform(0, np.pi), H * _STRIPE_PERIODS[rng.integers(len(_STRIPE_PERIODS))],
                         rng.uniform(0, 2 * np.pi))
            sub[m] += (amp * s[m])[:, None]
    # the face disk: radius r, centre drifting on a smooth Lissajous path inside the frame
    r = 0.28 * H * rng.uniform(0.9, 1.1)
    face = rng.uniform([0.45, 0.3, 0.2], [0.85, 0.65, 0.5]).astype(f32)  # (3,) skin-like RGB
    tt = np.arange(T) / cfg.fps  # (T,) s
    ax, ay = max(W / 2 - r, 0) * rng.uniform(0.3, 0.9), max(H / 2 - r, 0) * rng.uniform(0.3, 0.9)
    cx = W / 2 + ax * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * tt + rng.uniform(0, 2 * np.pi))  # (T,) float64
    cy = H / 2 + ay * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * tt + rng.uniform(0, 2 * np.pi))  # (T,)
    cx, cy = cx.round(3).astype(f32), cy.round(3).astype(f32)  # sub-pixel, immune to last-bit sin differences
    disk_amp = amp if cue is not None else f32(0)
    cue = cue or video_cue(0, cfg.num_classes)
    theta = (cue["angle"] + math.radians(rng.uniform(-3, 3))) * rng.choice([-1.0, 1.0])
    period = H * cue["period"] * rng.uniform(0.95, 1.05)
    phase = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.3, 0.3) * np.arange(T)  # (T,) slow drift
    frames = np.empty((T, H, W, 3), f32)
    frames[:] = bg
    for i in range(T):  # composite the disk inside its bounding box only
        y0, y1 = max(int(cy[i] - r) - 2, 0), min(int(cy[i] + r) + 3, H)
        x0, x1 = max(int(cx[i] - r) - 2, 0), min(int(cx[i] + r) + 3, W)
        dx, dy = xx[y0:y1, x0:x1] - cx[i], yy[y0:y1, x0:x1] - cy[i]  # (h, w) disk coordinates
        mask = np.clip((f32(r) - np.sqrt(dx * dx + dy * dy)) / f32(1.5), 0, 1)[..., None]  # (h, w, 1) soft edge
        tex = face + (disk_amp * _stripes(dx, dy, theta, period, phase[i]))[..., None]  # (h, w, 3)
        box = frames[i, y0:y1, x0:x1]
        box += mask * (tex - box)
    noise = (rng.standard_normal((T, H, W)) * (cfg.video_noise * 255)).astype(f32)  # (T, H, W) grey pixel noise
    frames *= f32(255)
    frames += noise[..., None]
    frames += f32(0.5)
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


# ----------------------------------------------------------------------------- encoding

# Same bytes on every x86-64 machine: single thread, bit-exact codec DSP, no version/metadata tags,
# and a bit-exact RGB -> YUV conversion (swscale's default AVX2 path rounds differently from SSE2).
_BITEXACT = ["-threads", "1", "-bitexact", "-fflags", "+bitexact", "-flags:v", "+bitexact",
             "-flags:a", "+bitexact", "-map_metadata", "-1", "-sws_flags", "bitexact+accurate_rnd"]


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())


def _ffmpeg(frames: np.ndarray, fps: int, args: list[str]) -> None:
    """Run ffmpeg with raw RGB frames (T, H, W, 3) at fps on stdin as input 0, then ``args``."""
    T, H, W, _ = frames.shape
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{W}x{H}", "-framerate", str(fps), "-i", "pipe:0", *args]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")


def _render(job: tuple[_Clip, SynthConfig, int, str]) -> str:
    """Generate and write one clip's files; returns its clip_id."""
    clip, cfg, seed, out_dir = job
    n_samples = round(clip.n_frames * cfg.sample_rate / cfg.fps)
    # one stream each: the video never depends on the audio kind, the rest of the video never on the video kind
    rng_a, rng_v, rng_c = (np.random.default_rng([seed, _S_CLIP, clip.index, m]) for m in (_M_AUDIO, _M_VIDEO, _M_VCUE))
    audio = synth_audio(rng_a, cfg, n_samples, clip.kind, clip.audio_label)  # (n,) int16
    cue = clip_video_cue(rng_c, clip.video_kind, clip.label, cfg.num_classes)
    frames = synth_video(rng_v, cfg, clip.n_frames, cue)  # (T, H, W, 3) uint8
    video = Path(out_dir) / clip.video
    tmps = [video.with_name(video.name + ".tmp")]
    try:
        if cfg.layout == "cremad":
            wav = Path(out_dir) / clip.audio
            tmps.append(wav.with_name(wav.name + ".tmp"))
            _write_wav(tmps[1], audio, cfg.sample_rate)
            _ffmpeg(frames, cfg.fps, ["-an", "-c:v", "flv", "-q:v", str(cfg.video_quality),
                     "-pix_fmt", "yuv420p", *_BITEXACT, "-f", "flv", str(tmps[0])])
            os.replace(tmps[1], wav)
        else:
            tmps.append(video.with_name(video.name + ".in.wav.tmp"))  # ffmpeg's audio input
            _write_wav(tmps[1], audio, cfg.sample_rate)
            _ffmpeg(frames, cfg.fps, ["-i", str(tmps[1]), "-map", "0:v", "-map", "1:a",
                     "-c:v", "libx264", "-preset", "veryfast", "-crf", str(6 * cfg.video_quality),
                     "-pix_fmt", "yuv420p", "-c:a", "aac", "-aac_coder", "fast", "-b:a", "96k", *_BITEXACT,
                     "-f", "mp4", str(tmps[0])])
        os.replace(tmps[0], video)
    finally:
        for p in tmps:
            p.unlink(missing_ok=True)
    return clip.clip_id


# ----------------------------------------------------------------------------- entry point


def generate(*, out_dir: str | os.PathLike, seed: int, config: SynthConfig) -> dict:
    """Write the dataset of ``config`` under ``out_dir`` (created; must be empty or absent).

    The clips are written into ``.tmp-<name>`` beside ``out_dir``, which becomes ``out_dir`` only once every
    file is complete (:func:`pipeline.fileio.staged_dir`): a run killed part-way leaves no ``out_dir`` that
    looks complete, and the next run removes its leftovers.

    Returns a JSON-able summary: layout, classes, ``clips``, ``per_class``, ``per_kind``,
    ``per_split`` (kinetics_sounds), ``truth`` (path of synth_truth.csv) and ``seconds``
    (wall time, the only part that varies between identical runs).
    """
    t0 = time.perf_counter()
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: must be a non-negative int, got {seed!r}")
    seed = int(seed)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: not empty; remove it first (DVC removes stage outputs before running)")
    clips = _plan(seed, config)
    with staged_dir(out) as tmp:
        _render_all(clips, config, seed, tmp)
        names = config.class_names()
        with open(tmp / TRUTH_FILE, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(TRUTH_FIELDS)
            for c in clips:
                w.writerow([c.clip_id, names[c.label], c.kind, names[c.audio_label] if c.audio_label >= 0 else "",
                            c.video_kind])
    summary = {
        "layout": config.layout,
        "classes": names,
        "clips": len(clips),
        "per_class": dict(Counter(names[c.label] for c in clips)),
        "per_kind": {k: sum(c.kind == k for c in clips) for k in AUDIO_KINDS},
        "per_video_kind": {k: sum(c.video_kind == k for c in clips) for k in VIDEO_KINDS},
        "truth": str(out / TRUTH_FILE),
    }
    if config.layout == "kinetics_sounds":
        summary["per_split"] = dict(sorted(Counter(c.video.split("/")[0] for c in clips).items()))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _render_all(clips: list[_Clip], config: SynthConfig, seed: int, out: Path) -> None:
    """Every clip's files under ``out``, in ``config.workers`` processes, with a progress bar."""
    for d in sorted({str(Path(c.video).parent) for c in clips} | {str(Path(c.audio).parent) for c in clips if c.audio}):
        (out / d).mkdir(parents=True, exist_ok=True)
    jobs = [(c, config, seed, str(out)) for c in clips]
    with tqdm(total=len(jobs), desc=f"synth {config.layout}", unit="clip", disable=None) as bar:
        if config.workers == 1:
            for j in jobs:
                _render(j)
                bar.update()
        else:
            # fork: the workers only need numpy and ffmpeg, and the caller needs no __main__ guard
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(config.workers, mp_context=ctx) as ex:
                for _ in ex.map(_render, jobs, chunksize=4):
                    bar.update()
