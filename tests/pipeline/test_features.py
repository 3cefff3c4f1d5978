"""Feature settings and per-clip computations."""
import numpy as np
import pytest
import torch

from pipeline.features import PRESETS, FeatureConfig, fit_duration, log_mel, resize_short_side
from pipeline.media import VideoInfo, frame_indices


def test_frame_indices_are_segment_centres():
    # 3 s at 30 fps, 3 frames: 0.5 s, 1.5 s, 2.5 s (the field's 1 fps)
    assert frame_indices(VideoInfo(90, 30.0, 480, 360), 3) == [15, 45, 75]
    assert frame_indices(VideoInfo(10, 10.0, 64, 48), 4) == [1, 3, 6, 8]
    assert frame_indices(VideoInfo(3, 30.0, 64, 48), 3) == [0, 1, 2]


def test_fit_duration_tiles_short_and_cuts_long():
    short = np.arange(4, dtype=np.float32)
    assert fit_duration(short, 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert fit_duration(np.arange(20, dtype=np.float32), 5).tolist() == [0, 1, 2, 3, 4]


def test_resize_keeps_aspect_and_sets_short_side():
    img = resize_short_side(np.zeros((360, 480, 3), np.uint8), 96)
    assert img.size == (128, 96)
    portrait = resize_short_side(np.zeros((200, 100, 3), np.uint8), 50)
    assert portrait.size == (50, 100)


def test_log_mel_shape_dtype_and_pitch():
    cfg = FeatureConfig()
    t = np.arange(cfg.num_samples) / cfg.sample_rate
    mel = log_mel((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), cfg)
    assert mel.shape == cfg.mel_shape == (64, 188) and mel.dtype == np.float16
    # the loudest bin is the one whose mel band holds 440 Hz
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate)
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    assert mel.astype(np.float32).mean(1).argmax() == fb[(freqs - 440).abs().argmin()].argmax()


def test_presets_follow_the_field():
    assert PRESETS["cremad"].mel_shape == (128, 188)  # 3 s at 22.05 kHz, hop 353: 188 frames as in OGM-GE
    assert PRESETS["kinetics_sounds"].mel_shape == (128, 1001)  # 10 s at 10 ms hop
    assert all(p.num_frames == 3 for p in PRESETS.values())


def test_from_params_is_strict():
    assert FeatureConfig.from_params({"duration": 3}).duration == 3.0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_frame'\]"):
        FeatureConfig.from_params({"num_frame": 3})
    with pytest.raises(ValueError, match="features.num_frames: expected int, got str"):
        FeatureConfig.from_params({"num_frames": "3"})
    with pytest.raises(ValueError, match="f_max"):
        FeatureConfig(f_max=9000.0)
